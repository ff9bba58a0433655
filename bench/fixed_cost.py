"""Fixed cost: where ``privfl simulate quickstart`` spends its wall time, phase by phase, beside plain Flower.

Each privfl case runs the real command line (``privfl simulate ...``) in a child
interpreter, so the time includes starting Python and importing privfl.  The child
records when the launcher started and the launcher's own step times
(``SimulationResult.timings``); this process watches the run's ``history.jsonl`` for
the rounds and samples the process tree (CPU seconds per kind of process: on two
cores every process competes for the same CPUs).  Cases:

* ``privfl``: ``privfl simulate quickstart`` (10 owners, 20 rounds, DP-SGD);
* ``privfl+baseline``: the same with ``--baseline quickstart-nonprivate`` (two runs);
* ``privfl-ownhead``, ``privfl-ownhead+baseline``: the same with the launcher's
  ``OWN_RAY_HEAD = True`` (a Ray head of the launcher's own, started with the SuperLink,
  instead of the Ray that Flower's simulation process starts);
* ``privfl-before``, ``privfl-before+baseline``: the same through the launcher of commit
  :data:`BEFORE` (``git show BEFORE:simulations/launcher.py``, the CLI's old flow:
  pre-flight, then each run on its own SuperLink with Flower starting Ray itself);
* ``privfl-warm``: two ``privfl simulate quickstart --keep-warm`` one after the other on a fresh
  state folder: the first starts the warm federation (:mod:`privfl.simulations.warm`, rows
  ``privfl-warm-1st``), the second runs on it (``privfl-warm-2nd``) once its standby process is
  ready (the wait is printed: a user reading the first run's results gives it that time);
* ``plain``: the plain Flower app of ``bench/plain_flower`` with the same owners, model,
  rounds and DP-SGD, with its own SuperLink and Flower starting Ray itself (what any
  Flower app pays); ``plain-tuned``: the same with the launcher's Ray settings (workers
  preload the app, one torch thread each, no spare workers); ``plain-head``: and the
  launcher's own Ray head.

    python -m bench.fixed_cost                 # all cases, 2 repeats each (~10 min on 2 cores)
    python -m bench.fixed_cost --quick         # privfl and plain, 3 rounds, once
    python -m bench.fixed_cost --cases privfl plain --repeats 3
"""

from __future__ import annotations

import time

T0 = time.time()  # the child's first instant (before any import)

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/fixed_cost.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    REPO_ROOT,
    ProcessTimeline,
    bench_env,
    parser,
    print_table,
    write_results,
)
from bench.flower_runner import (
    RoundWatcher,
    cleanup,
    round_timing,
    run_plain_app,
    temp_root,
)

NAME = "fixed_cost"
CASES = ("privfl", "privfl-warm", "privfl+baseline", "privfl-ownhead", "privfl-ownhead+baseline", "privfl-before",
         "privfl-before+baseline", "plain", "plain-tuned", "plain-head")
BEFORE = "bc708b3"  # the last commit before the launcher's fixed-cost work (issue 16)
BASELINE = "quickstart-nonprivate"


# --------------------------------------------------------------------------- the child (privfl's CLI)


def _before_launcher() -> Any:
    """The launcher of commit :data:`BEFORE`, loaded as a module of its own."""
    import importlib.util

    source = subprocess.run(["git", "show", f"{BEFORE}:simulations/launcher.py"], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=True).stdout
    spec = importlib.util.spec_from_loader("privfl_launcher_before", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    exec(compile(source, f"{BEFORE}:simulations/launcher.py", "exec"), module.__dict__)  # noqa: S102
    return module


def child(out: Path, argv: list[str], variant: str) -> int:
    """Run ``privfl <argv>`` in this process; write when things happened (epoch seconds) to ``out``."""
    record: dict[str, Any] = {"t0": T0, "variant": variant, "runs": []}
    if variant == "before":
        rc = _child_before(argv, record)
    else:
        from privfl.simulations import launcher

        if variant == "ownhead":
            launcher.OWN_RAY_HEAD = True
        original = launcher.run_simulations

        def capture(*args: Any, **kwargs: Any) -> Any:
            record["launcher_start"] = time.time()
            results = original(*args, **kwargs)
            record["runs"] = [{"run_dir": str(r.run_dir), "timings": r.timings} for r in results]
            return results

        launcher.run_simulations = capture
        from privfl.cli import main

        record["imported"] = time.time()
        rc = main(argv)
    record["end"] = time.time()
    out.write_text(json.dumps(record))
    return rc


def _child_before(argv: list[str], record: dict[str, Any]) -> int:
    """The command line's flow of commit :data:`BEFORE`: pre-flight every experiment, then one launcher call per run."""
    import argparse

    from privfl.simulations.preflight import preflight
    from privfl.simulations.summary import print_summary

    from privfl.cli.simulate import load_config

    before = _before_launcher()
    record["imported"] = time.time()
    cli = argparse.ArgumentParser()
    cli.add_argument("command")
    cli.add_argument("experiment")
    cli.add_argument("--run-dir", type=Path)
    cli.add_argument("--set", action="append", default=[])
    cli.add_argument("--baseline")
    args = cli.parse_args(argv)
    config = load_config(args.experiment, args.set).replace(run_dir=str(args.run_dir))
    second = load_config(args.baseline, []) if args.baseline else None
    record["launcher_start"] = time.time()
    for checked in (config, second):
        if checked is not None:
            preflight(checked)
    record["checked"] = time.time()
    runs = [before.run_simulation(config, stream=False)]
    record["runs"].append({"run_dir": str(runs[0].run_dir), "returned": time.time()})
    if second is not None:
        second = second.replace(run_dir=str(runs[0].run_dir.with_name(f"{runs[0].run_dir.name}-{second.experiment}")))
        runs.append(before.run_simulation(second, stream=False))
        record["runs"].append({"run_dir": str(runs[1].run_dir), "returned": time.time()})
    return 1 if print_summary(runs) else 0


# --------------------------------------------------------------------------- the parent


def run_cli_case(case: str, rounds: int | None, work: Path, extra: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> dict[str, Any]:
    """One privfl case: the command line in a child interpreter, timed from outside and inside."""
    run_dir = work / "run"
    argv = ["simulate", "quickstart", "--run-dir", str(run_dir), *extra]
    if rounds:
        argv += ["--set", f"num-rounds={rounds}"]
    if case.endswith("+baseline"):
        argv += ["--baseline", BASELINE]
    variant = "before" if case.startswith("privfl-before") else "ownhead" if case.startswith("privfl-ownhead") \
        else "current"
    out = work / "child.json"
    work.mkdir(parents=True, exist_ok=True)
    second_dir = run_dir.with_name(f"{run_dir.name}-{BASELINE}")
    start = time.time()
    process = subprocess.Popen([sys.executable, "-m", "bench.fixed_cost", "--child", str(out), "--variant", variant,
                                "--", *argv], cwd=work, env=env or bench_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    with RoundWatcher(run_dir / "history.jsonl") as first, RoundWatcher(second_dir / "history.jsonl") as second, \
            ProcessTimeline(process.pid, t0=start) as timeline:
        output, _ = process.communicate(timeout=900)
    end = time.time()
    if process.returncode != 0:
        raise RuntimeError(f"privfl simulate failed ({case}):\n{output[-3000:]}")
    child_record = json.loads(out.read_text())
    num_rounds = rounds or 20
    row: dict[str, Any] = {"case": case, "wall_s": end - start, "rounds": num_rounds,
                           "cpu_by_kind": timeline.by_kind(), "cpu_total_s": timeline.total_cpu_s(),
                           "top_processes": timeline.top()}
    row["phases"] = phases = _phases(start, end, child_record, first, num_rounds)
    if case.endswith("+baseline"):
        baseline_rounds = 20
        row["baseline"] = round_timing(start, second.round_end, baseline_rounds)
        if second.round_end.get(baseline_rounds):
            phases["baseline_last_round_at_s"] = second.round_end[baseline_rounds] - start
    row.update(round_timing(start, first.round_end, num_rounds))
    history = json.loads((run_dir / "history.json").read_text())
    row["final_test_accuracy"] = history.get("final_test_accuracy")
    row["status"] = history.get("status")
    return row


def run_warm_pair(rounds: int | None, work: Path) -> list[dict[str, Any]]:
    """``privfl-warm``: the first run starts the warm federation, the second runs on it; then it is stopped."""
    import tempfile

    from privfl.simulations import warm

    folder = Path(tempfile.mkdtemp(prefix="privfl-bench-warm-"))  # mode 0700, as the state folder must be
    env = {**bench_env(), warm.ENV_DIR: str(folder)}
    rows = []
    try:
        first = run_cli_case("privfl-warm-1st", rounds, work / "first", ("--keep-warm", "300"), env)
        rows.append(first)
        started = warm.read_state(folder)
        waited = time.time()
        first_standby = json.loads((folder / "runs").glob("*").__next__().read_text())["standby_pid"]
        deadline = time.time() + 180
        while time.time() < deadline:  # the next standby: forked, Ray connected, its actors up
            try:
                standby = json.loads((folder / "standby").read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                standby = {}
            if standby.get("pid") not in (None, first_standby) and standby.get("actor_pids"):
                break
            time.sleep(0.1)
        second = run_cli_case("privfl-warm-2nd", rounds, work / "second", ("--keep-warm", "300"), env)
        second["standby_wait_s"] = round(time.time() - waited - second["wall_s"], 2)
        state = warm.read_state(folder)
        second["reused_daemon"] = state is not None and started is not None and state.daemon_pid == started.daemon_pid
        rows.append(second)
    finally:
        warm.stop(folder)
        cleanup(folder)
    return rows


def _phases(start: float, end: float, child_record: dict[str, Any], watcher: RoundWatcher,
            num_rounds: int) -> dict[str, Any]:
    """When each step ended, in seconds since the command was started (None where not measured)."""
    t: dict[str, Any] = {"python_started_s": child_record["t0"] - start,
                         "privfl_imported_s": child_record.get("imported", end) - start,
                         "launcher_started_s": child_record.get("launcher_start", end) - start}
    runs = child_record.get("runs", [])
    if runs and "timings" in runs[0]:  # the current launcher: its own step times, since it started
        base = child_record["launcher_start"] - start
        for label, seconds in runs[0]["timings"].items():
            t[f"{label}_s"] = base + seconds
        if len(runs) > 1:
            for label, seconds in runs[1]["timings"].items():
                t[f"baseline_{label}_s"] = base + seconds
    else:  # the launcher of commit BEFORE: only when each call returned
        t["checked_s"] = child_record.get("checked", end) - start
        for n, run in enumerate(runs):
            t[("baseline_" if n else "") + "returned_s"] = run["returned"] - start
    for number in (0, 1, num_rounds):
        if number in watcher.round_end:
            t[f"round_{number}_evaluated_s"] = watcher.round_end[number] - start
    t["exit_s"] = end - start
    return t


def run_plain_case(case: str, rounds: int | None, work: Path) -> dict[str, Any]:
    from privfl.cli.simulate import load_config

    config = load_config("quickstart", [])
    num_rounds = rounds or config.num_rounds
    run_config = {"num-rounds": num_rounds, "local-epochs": config.local_epochs, "batch-size": config.batch_size,
                  "learning-rate": config.learning_rate, "model": config.model, "seed": config.seed, "dp": config.dp,
                  "noise-multiplier": config.noise_multiplier, "max-grad-norm": config.max_grad_norm}
    r = run_plain_app(run_config, config.num_owners, work, ray_head=case == "plain-head", tuned=case != "plain")
    p = r["phases"]
    phases = {"superlink_listening_s": p["superlink_start_s"], "ray_ready_s": p.get("ray_ready_s"),
              "submitted_s": p["submitted_at_s"], "exit_s": r["wall_s"]}
    for number in (0, 1, num_rounds):
        if number in r["round_end_s"]:
            phases[f"round_{number}_evaluated_s"] = r["round_end_s"][number]
    return {"case": case, "rounds": num_rounds, **r, "phases": phases}


def summarise(row: dict[str, Any]) -> dict[str, Any]:
    """The table's columns: durations of consecutive phases."""
    p = row["phases"]
    n = row["rounds"]

    def span(a: str | None, b: str) -> float | None:
        start = p.get(a) if a else 0.0
        return p[b] - start if p.get(b) is not None and start is not None else None

    out = {"case": row["case"], "wall_s": row["wall_s"], "cpu_total_s": row.get("cpu_total_s")}
    out["to_launcher_s"] = p.get("launcher_started_s")  # Python start + privfl's imports + config
    ready = max(p.get("superlink_listening_s") or 0, p.get("ray_ready_s") or 0)
    out["launcher_to_ready_s"] = ready - (p.get("launcher_started_s") or 0) if ready else None
    out["submit_s"] = p["submitted_s"] - ready if p.get("submitted_s") and ready else None
    out["to_round0_s"] = span("submitted_s", "round_0_evaluated_s")
    out["round1_s"] = span("round_0_evaluated_s", "round_1_evaluated_s")
    out["to_round1_s"] = p.get("round_1_evaluated_s")
    out["steady_round_s"] = row.get("steady_round_s")
    out["after_last_round_s"] = span(f"round_{n}_evaluated_s", "exit_s")
    out["audit_s"] = span("ledgers_checkpointed_s", "audited_s")
    out["report_s"] = span("audited_s", "reported_s")
    out["baseline_last_round_at_s"] = p.get("baseline_last_round_at_s")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--child" in argv:
        split = argv.index("--")
        own, rest = argv[:split], argv[split + 1:]
        out = Path(own[own.index("--child") + 1])
        variant = own[own.index("--variant") + 1] if "--variant" in own else "current"
        return child(out, rest, variant)
    p = parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", choices=CASES, help=f"default: all ({', '.join(CASES)}); quick: privfl plain")
    p.add_argument("--repeats", type=int, help="runs per case, alternating cases; the fastest is kept (default 2)")
    p.add_argument("--rounds", type=int, help="rounds of quickstart (default its own 20; quick 3)")
    args = p.parse_args(argv)
    cases = args.cases or (["privfl", "plain"] if args.quick else list(CASES))
    repeats = args.repeats or (1 if args.quick else 2)
    rounds = args.rounds or (3 if args.quick else None)
    root = temp_root("privfl-bench-fixed-")
    all_runs: list[dict[str, Any]] = []
    try:
        for repeat in range(repeats):
            for case in cases:  # alternate, so drift on a shared machine hits every case alike
                print(f"== {case}, repeat {repeat + 1}", flush=True)
                work = root / f"{case}-{repeat}"
                rows = run_warm_pair(rounds, work) if case == "privfl-warm" else \
                    [run_plain_case(case, rounds, work) if case.startswith("plain") else run_cli_case(case, rounds, work)]
                for row in rows:
                    row["repeat"] = repeat
                    row["loadavg_1min"] = os.getloadavg()[0]
                    all_runs.append(row)
                    s = summarise(row)
                    print(f"   {row['case']}: wall {s['wall_s']:.1f}s, to round 1 {s['to_round1_s'] or float('nan'):.1f}s, "
                          f"cpu {s['cpu_total_s']:.1f}s, load {row['loadavg_1min']:.1f}", flush=True)
                cleanup(work)
    finally:
        cleanup(root)
    shown = [c for case in cases for c in ((f"{case}-1st", f"{case}-2nd") if case == "privfl-warm" else (case,))]
    best = [min((r for r in all_runs if r["case"] == case), key=lambda r: r["wall_s"]) for case in shown]
    results = [{**summarise(r), "run": r} for r in best]
    print()
    print_table(results, [
        ("case", "case", ""), ("wall_s", "wall s", ".1f"), ("to_launcher_s", "imports s", ".2f"),
        ("launcher_to_ready_s", "to SuperLink+Ray s", ".2f"), ("submit_s", "flwr run s", ".2f"),
        ("to_round0_s", "to round 0 s", ".1f"), ("round1_s", "round 1 s", ".1f"),
        ("steady_round_s", "s/round", ".2f"), ("after_last_round_s", "after last round s", ".2f"),
        ("audit_s", "audit s", ".2f"), ("report_s", "report s", ".2f"), ("cpu_total_s", "CPU s", ".1f"),
    ], title="fixed cost (fastest repeat of each case; seconds)")
    write_results(args.out, NAME, quick=args.quick,
                  settings={"cases": cases, "repeats": repeats, "rounds": rounds or 20, "experiment": "quickstart",
                            "baseline": BASELINE},
                  results=results, runs=all_runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
