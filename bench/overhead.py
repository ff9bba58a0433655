"""Framework overhead: the same training centrally, through privfl, and through plain Flower.

Same owners (digits, IID), rounds, local epochs, batch size, model and (for DP) noise:

* (a) ``central``: one process, plain torch loops -- for each round, each owner trains
  from the global weights (plain SGD, or Opacus DP-SGD made private per owner and
  round), then a weighted average; the compute limit;
* (a') ``privfl-inproc``: privfl's ClientApp logic (:func:`privfl.client.round.run_train_round`
  with Flower's real Message/Context objects: config parsing, owner data, budget guard,
  accountant, training, receipt) for every owner and round, in this process, with no
  Flower runtime -- what privfl's client layer costs on its own;
* (b) ``privfl``: privfl's Flower simulation (:func:`privfl.simulations.launcher.run_simulation`);
* (c) ``plain-flower``: a minimal Flower app without privfl (``bench/plain_flower``:
  Flower's FedAvg, plain SGD or Opacus), run with its own SuperLink like privfl's
  launcher does.

Reported: wall time end to end and the time spent in rounds (initial evaluation to
last round), and the ratios b/a and b/c.  The target (issue 7) is privfl within 1.25x
of plain Flower.  A profile of privfl's client round (where its extra time goes) and
the import cost of each ClientApp module are written alongside.

    python -m bench.overhead            # 10 and 100 owners, non-private and DP, 10 rounds
    python -m bench.overhead --quick    # 10 owners, non-private, 3 rounds
"""

from __future__ import annotations

import cProfile
import pstats
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/overhead.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO_ROOT, bench_env, parser, print_table, write_results
from bench.flower_runner import PLAIN_APP, cleanup, run_plain_app, run_privfl, temp_root

NAME = "overhead"


def _plainfl():
    if str(PLAIN_APP) not in sys.path:
        sys.path.insert(0, str(PLAIN_APP))
    import plainfl.task

    return plainfl.task


def privfl_config(owners: int, rounds: int, dp: bool, model: str, batch_size: int):
    from privfl.config import ExperimentConfig

    return ExperimentConfig(
        experiment=f"overhead-{owners}-{'dp' if dp else 'nodp'}", dataset="digits", model=model,
        num_owners=owners, partitioning="iid", seed=0, num_rounds=rounds, local_epochs=1, batch_size=batch_size,
        learning_rate=0.5, dp=dp, noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5, epsilon_budget=1e6,
    )


def plain_run_config(config) -> dict[str, Any]:
    return {"num-rounds": config.num_rounds, "local-epochs": config.local_epochs, "batch-size": config.batch_size,
            "learning-rate": config.learning_rate, "model": config.model, "seed": config.seed, "dp": config.dp,
            "noise-multiplier": config.noise_multiplier, "max-grad-norm": config.max_grad_norm}


def run_central(config) -> dict[str, Any]:
    """(a): plain torch FedAvg loop in this process (the compute limit)."""
    import torch

    task = _plainfl()
    # Warm-up, not timed: the first backward and the first make_private in a process pay
    # one-off initialisation (~1 s) that a long-running worker pays once too.
    x, y = task.owner(0, config.num_owners, config.seed)
    task.train_local(task.build_model(config.model), x, y, epochs=1, batch_size=config.batch_size,
                     lr=config.learning_rate, dp=config.dp)
    start = time.perf_counter()
    owners = [task.owner(i, config.num_owners, config.seed) for i in range(config.num_owners)]
    global_state = task.build_model(config.model, seed=config.seed).state_dict()
    data_s = time.perf_counter() - start
    for _ in range(config.num_rounds):
        states, weights = [], []
        for x, y in owners:
            model = task.build_model(config.model)
            model.load_state_dict(global_state)
            task.train_local(model, x, y, epochs=config.local_epochs, batch_size=config.batch_size,
                             lr=config.learning_rate, dp=config.dp, noise_multiplier=config.noise_multiplier,
                             max_grad_norm=config.max_grad_norm)
            states.append(model.state_dict())
            weights.append(len(y))
        total = sum(weights)
        global_state = {k: sum(s[k] * (w / total) for s, w in zip(states, weights)) for k in global_state}
    rounds_s = time.perf_counter() - start - data_s
    _, _, x_test, y_test = task.digits(config.seed)
    model = task.build_model(config.model)
    model.load_state_dict(global_state)
    with torch.no_grad():
        accuracy = (model(torch.from_numpy(x_test)).argmax(1) == torch.from_numpy(y_test)).float().mean().item()
    return {"wall_s": time.perf_counter() - start, "rounds_s": rounds_s, "data_s": data_s,
            "steady_round_s": rounds_s / config.num_rounds, "final_test_accuracy": accuracy}


# Named functions whose cumulative time the profile of privfl's client round reports,
# besides the breakdown of run_train_round into its direct callees.
NAMED = {
    "load_dataset (owner data loaded)": ("datasets.py", "load_dataset"),
    "Opacus make_private": ("privacy_engine.py", "make_private"),
    "train_locally": ("training.py", "train_locally"),
    "accountant epsilon (privfl accountants)": ("accountants/opacus_backed.py", "epsilon"),
    "accountant epsilon (pld)": ("accountants/pld.py", "epsilon"),
    "decide_next_release": ("budget.py", "decide_next_release"),
    "sqlite3 commit": ("~", "<method 'commit' of 'sqlite3.Connection' objects>"),
    "os.fsync": ("~", "<built-in method posix.fsync>"),
}


def _label(func: tuple[str, int, str]) -> str:
    file, _, name = func
    if file == "~":
        return name
    path = Path(file)
    return f"{path.parent.name}/{path.name}:{name}"


def callee_breakdown(stats: pstats.Stats, file_end: str, name: str) -> dict[str, float]:
    """Cumulative seconds of each direct callee of ``name`` (when called from it), largest first."""
    parents = [k for k in stats.stats if k[0].endswith(file_end) and k[2] == name]
    out: dict[str, float] = {}
    for func, (_, _, _, _, callers) in stats.stats.items():
        for parent in parents:
            if parent in callers:
                out[_label(func)] = out.get(_label(func), 0.0) + callers[parent][3]
    return dict(sorted(out.items(), key=lambda kv: kv[1], reverse=True))


def named_times(stats: pstats.Stats) -> dict[str, float]:
    return {label: sum(v[3] for (f, _, fn), v in stats.stats.items() if f.endswith(end) and fn == name)
            for label, (end, name) in NAMED.items()}


def _apps(kind: str) -> tuple[Any, Any]:
    if kind == "privfl":
        import privfl.client.app
        import privfl.server.app

        return privfl.server.app.app, privfl.client.app.app
    _plainfl()
    import plainfl.client_app
    import plainfl.server_app

    return plainfl.server_app.app, plainfl.client_app.app


def _inproc_run_config(kind: str, config, work: Path) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    if kind == "privfl":
        return config.replace(run_dir=str(work / "run")).to_mapping()
    return {**plain_run_config(config), "progress-file": str(work / "progress.json")}


def run_inprocess(kind: str, config, work: Path, *, profile: bool) -> dict[str, Any]:
    """(a') / (a''): the real ServerApp and ClientApp of ``kind`` in this process, no Flower runtime.

    One warm-up round first (one-off initialisation: first backward, first
    make_private, RDP curves), then the timed run, then (``profile``) a profiled run of
    up to 3 rounds whose cProfile says where privfl's time goes.
    """
    from bench.inprocess_grid import run_apps

    server_app, client_app = _apps(kind)
    run_apps(server_app, client_app, config.num_owners,
             _inproc_run_config(kind, config.replace(num_rounds=1), work / "warmup"))
    out = run_apps(server_app, client_app, config.num_owners, _inproc_run_config(kind, config, work / "timed"))
    out["steady_round_s"] = out["wall_s"] / config.num_rounds
    if profile:
        rounds = min(3, config.num_rounds)
        profiler = cProfile.Profile()
        profiler.enable()
        run_apps(server_app, client_app, config.num_owners,
                 _inproc_run_config(kind, config.replace(num_rounds=rounds), work / "profiled"))
        profiler.disable()
        stats = pstats.Stats(profiler)
        out["profile_rounds"] = rounds
        out["profile_s"] = named_times(stats)
        out["profile_run_train_round_callees_s"] = callee_breakdown(stats, "client/round.py", "run_train_round")
        out["profile_top_privfl_s"] = top_privfl(stats, 25)
    return out


def top_privfl(stats: pstats.Stats, n: int) -> dict[str, float]:
    """privfl's own functions (not bench/) by cumulative seconds."""
    root = str(REPO_ROOT)
    rows = [(func, v[3]) for func, v in stats.stats.items()
            if func[0].startswith(root) and "/bench/" not in func[0] and "/tests/" not in func[0]]
    rows.sort(key=lambda kv: kv[1], reverse=True)
    return {_label(func): seconds for func, seconds in rows[:n]}


def import_costs() -> dict[str, float]:
    """Seconds to import each ClientApp module (and Opacus) in a fresh interpreter, as a Ray worker does."""
    env = bench_env()
    env["PYTHONPATH"] = f"{PLAIN_APP}:{env['PYTHONPATH']}"
    out = {}
    for label, module in (("privfl.client.app", "privfl.client.app"), ("plainfl.client_app", "plainfl.client_app"),
                          ("privfl.server.app", "privfl.server.app"), ("plainfl.server_app", "plainfl.server_app"),
                          ("opacus", "opacus"), ("torch", "torch"), ("flwr.app", "flwr.app")):
        code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
        runs = []
        for _ in range(2):
            p = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True)
            if p.returncode == 0:
                runs.append(float(p.stdout.strip().splitlines()[-1]))
        out[label] = min(runs) if runs else None
    return out


def history_log_cost(owners: int, rounds: int) -> dict[str, float]:
    """Seconds privfl's ServerApp spends appending the last round to history.jsonl (constant in the rounds before it)."""
    from privfl.protocol import PrivacyReceipt
    from privfl.server.history import RunHistory

    history = RunHistory(experiment="x", config={})
    root = temp_root("privfl-bench-hist-")
    path = root / "history.json"
    seconds = 0.0
    for r in range(1, rounds + 1):
        for o in range(owners):
            history.record_receipt(r, PrivacyReceipt(f"owner-{o:03d}", "trained", 1.0 * r, 1e-5, "rdp", 1.0, 0.1, 10))
        history.round(r).test_accuracy = 0.5
        t = time.perf_counter()
        history.log_round(path, r)
        seconds = time.perf_counter() - t
    size = path.with_suffix(".jsonl").stat().st_size
    cleanup(root)
    return {"owners": owners, "rounds": rounds, "last_log_s": seconds, "log_bytes": size}


def main(argv: list[str] | None = None) -> int:
    p = parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--owners", type=int, nargs="+", help="federation sizes (default 10 100; quick 10)")
    p.add_argument("--rounds", type=int, help="rounds (default 10; quick 3)")
    p.add_argument("--dp", choices=["both", "on", "off"], help="non-private, DP or both (default both; quick off)")
    p.add_argument("--model", default="mlp", choices=["mlp", "logreg"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--no-profile", action="store_true", help="skip the in-process profile and import timings")
    p.add_argument("--repeats", type=int, default=1,
                   help="Flower runs per framework and case; the fastest is reported, all are kept (default 1)")
    p.add_argument("--run-root", type=Path, help="folder for the runs' Flower state (default: a temp folder, removed)")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # like a Ray worker with one CPU; the simulations run two workers on two cores
    owners_list = args.owners or ([10] if args.quick else [10, 100])
    rounds = args.rounds or (3 if args.quick else 10)
    dp_modes = {"both": [False, True], "on": [True], "off": [False]}[args.dp or ("off" if args.quick else "both")]
    root = args.run_root or temp_root("privfl-bench-overhead-")
    results: list[dict[str, Any]] = []
    try:
        for owners in owners_list:
            for dp in dp_modes:
                config = privfl_config(owners, rounds, dp, args.model, args.batch_size)
                label = f"{owners} owners, {'DP' if dp else 'non-private'}"
                row: dict[str, Any] = {"owners": owners, "dp": dp, "rounds": rounds, "model": args.model,
                                       "batch_size": args.batch_size}
                print(f"== {label}: central", flush=True)
                row["central"] = run_central(config)
                print(f"== {label}: privfl and plain apps in-process (no Flower runtime)", flush=True)
                row["privfl_inproc"] = run_inprocess("privfl", config, root / f"inproc-privfl-{owners}-{dp}",
                                                     profile=not args.no_profile)
                row["plain_inproc"] = run_inprocess("plain", config, root / f"inproc-plain-{owners}-{dp}",
                                                    profile=False)
                privfl_runs, plain_runs = [], []
                for repeat in range(args.repeats):  # alternate, so drift on a shared machine hits both alike
                    print(f"== {label}: privfl (Flower simulation), repeat {repeat + 1}", flush=True)
                    privfl_runs.append(run_privfl(config, root / f"privfl-{owners}-{dp}-{repeat}"))
                    print(f"== {label}: plain Flower, repeat {repeat + 1}", flush=True)
                    plain_runs.append(run_plain_app(plain_run_config(config), owners,
                                                    root / f"plain-{owners}-{dp}-{repeat}"))
                # The fastest repeat of each: interference from other work only ever adds time.
                row["privfl"] = min(privfl_runs, key=lambda r: r["wall_s"])
                row["plain"] = min(plain_runs, key=lambda r: r["wall_s"])
                row["privfl_repeats"], row["plain_repeats"] = privfl_runs, plain_runs
                a, b, c = row["central"], row["privfl"], row["plain"]
                row.update(
                    central_wall_s=a["wall_s"], privfl_wall_s=b["wall_s"], plain_wall_s=c["wall_s"],
                    central_rounds_s=a["rounds_s"], privfl_rounds_s=b.get("rounds_s"), plain_rounds_s=c.get("rounds_s"),
                    privfl_steady_s=b.get("steady_round_s"), plain_steady_s=c.get("steady_round_s"),
                    central_round_s=a["steady_round_s"],
                    inproc_round_s=row["privfl_inproc"]["steady_round_s"],
                    plain_inproc_round_s=row["plain_inproc"]["steady_round_s"],
                    inproc_privfl_over_plain=row["privfl_inproc"]["wall_s"] / row["plain_inproc"]["wall_s"],
                    b_over_a_wall=b["wall_s"] / a["wall_s"], b_over_c_wall=b["wall_s"] / c["wall_s"],
                    b_over_a_rounds=b["rounds_s"] / a["rounds_s"] if b.get("rounds_s") else None,
                    b_over_c_rounds=b["rounds_s"] / c["rounds_s"] if b.get("rounds_s") and c.get("rounds_s") else None,
                    b_over_c_steady=(b["steady_round_s"] / c["steady_round_s"]
                                     if b.get("steady_round_s") and c.get("steady_round_s") else None),
                    accuracy_central=a["final_test_accuracy"], accuracy_privfl=b["final_test_accuracy"],
                    accuracy_plain=c["final_test_accuracy"],
                )
                row["meets_1_25x_wall"] = row["b_over_c_wall"] <= 1.25
                results.append(row)
                print(f"   wall: central {a['wall_s']:.2f}s, privfl {b['wall_s']:.1f}s, plain {c['wall_s']:.1f}s; "
                      f"b/a {row['b_over_a_wall']:.1f}x, b/c {row['b_over_c_wall']:.2f}x", flush=True)
        extra: dict[str, Any] = {}
        if not args.no_profile and not args.quick:
            extra["import_s"] = import_costs()
            extra["history_log"] = [history_log_cost(o, rounds) for o in owners_list]
    finally:
        cleanup(root)

    print()
    print_table(results, [
        ("owners", "owners", "d"), ("dp", "DP", ""), ("rounds", "rounds", "d"),
        ("central_wall_s", "a central s", ".2f"), ("privfl_wall_s", "b privfl s", ".1f"),
        ("plain_wall_s", "c plain s", ".1f"), ("b_over_a_wall", "b/a", ".1f"), ("b_over_c_wall", "b/c", ".2f"),
        ("meets_1_25x_wall", "<=1.25x", ""),
    ], title="end-to-end wall time (one command, start to finish)")
    print()
    print_table(results, [
        ("owners", "owners", "d"), ("dp", "DP", ""),
        ("central_round_s", "a s/round", ".3f"), ("inproc_round_s", "a' privfl-inproc", ".3f"),
        ("plain_inproc_round_s", "a'' plain-inproc", ".3f"), ("inproc_privfl_over_plain", "a'/a''", ".2f"),
        ("privfl_steady_s", "b s/round", ".3f"), ("plain_steady_s", "c s/round", ".3f"),
        ("b_over_c_steady", "b/c round", ".2f"), ("privfl_rounds_s", "b rounds s", ".1f"),
        ("plain_rounds_s", "c rounds s", ".1f"), ("b_over_c_rounds", "b/c rounds", ".2f"),
        ("b_over_a_rounds", "b/a rounds", ".1f"),
    ], title="time in rounds (steady = rounds 2..N; 'rounds' = initial evaluation to last round, incl. round 1)")
    print()
    print_table(results, [
        ("owners", "owners", "d"), ("dp", "DP", ""), ("accuracy_central", "acc a", ".3f"),
        ("accuracy_privfl", "acc b", ".3f"), ("accuracy_plain", "acc c", ".3f"),
    ], title="final test accuracy (sanity: the three train the same thing)")
    for row in results:
        inproc = row.get("privfl_inproc", {})
        if inproc.get("profile_s"):
            print(f"\nprivfl in-process, cProfile of {inproc['profile_rounds']} rounds ({row['owners']} owners, "
                  f"DP={row['dp']}; cumulative seconds, inflated by the profiler):")
            for title, key in (("run_train_round's direct callees", "profile_run_train_round_callees_s"),
                               ("named", "profile_s"), ("privfl functions", "profile_top_privfl_s")):
                print(f"  {title}:")
                for label, seconds in list(inproc[key].items())[:12]:
                    print(f"    {label:<60} {seconds:8.3f}")
    if "import_s" in extra:
        print("\nimport seconds in a fresh interpreter:", {k: round(v, 2) if v else v for k, v in extra["import_s"].items()})
        print("history.jsonl append of the last round:", extra["history_log"])
    write_results(args.out, NAME, quick=args.quick,
                  settings={"owners": owners_list, "rounds": rounds, "dp": dp_modes, "model": args.model,
                            "batch_size": args.batch_size, "local_epochs": 1, "learning_rate": 0.5,
                            "noise_multiplier": 1.0, "dataset": "digits iid", "torch_threads_central": 1,
                            "client_resources_num_cpus": 1, "repeats": args.repeats},
                  results=results, **extra)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
