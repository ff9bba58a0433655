"""Run Flower simulations for the benchmarks and time their phases.

* :func:`run_privfl` runs privfl's own :func:`privfl.simulations.launcher.run_simulations`
  unchanged and reads the launcher's own step times (``SimulationResult.timings``).
* :func:`run_plain_app` runs any other Flower app folder (``bench/plain_flower``) the
  way privfl's launcher runs privfl -- its own SuperLink in simulation mode on a free
  port, ``flwr run``, wait for the ServerApp's "finished" mark, stop the tree by PID --
  reusing the launcher's helpers, with none of privfl's extras (no ledgers, no audit,
  no report, no ``flwr log``).  ``ray_head=True`` also gives it the launcher's Ray head
  (started with the SuperLink, workers preloading the app) so the two differ only in
  the app; ``tuned=False, ray_head=False`` runs it as ``flwr run`` does (Flower starts Ray).

Rounds are timed the same way for both: a thread watches the file each ServerApp
writes as rounds end (privfl: ``history.jsonl``, one line per settled round; plain:
its progress file) and records when each round's central evaluation first appears.
The summed RSS/PSS of this process and everything below it is sampled throughout, and
the CPU seconds of each kind of process (:class:`bench.common.ProcessTimeline`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import BENCH_DIR, PeriodicSampler, ProcessTimeline, TreeMemorySampler

PLAIN_APP = BENCH_DIR / "plain_flower"


class RoundWatcher(PeriodicSampler):
    """Records when each round's central evaluation first appears in the file a ServerApp writes.

    ``history.jsonl`` (privfl) is read line by line as it grows; any other file is a JSON
    document with a ``rounds`` list (the plain app's progress file), re-read when it changes.
    """

    def __init__(self, path: Path, interval: float = 0.05) -> None:
        super().__init__(interval, "round-watcher")
        self.path = Path(path)
        self.round_end: dict[int, float] = {}  # round -> wall-clock time its evaluation was first seen
        self.round_logged: dict[int, float] = {}  # round -> first line of the round (jsonl only)
        self._offset = 0
        self._last_mtime = 0

    def poll(self) -> None:
        now = time.time()
        if self.path.suffix == ".jsonl":
            try:
                with open(self.path, encoding="utf-8") as handle:
                    handle.seek(self._offset)
                    text = handle.read()
            except FileNotFoundError:
                return
            complete = text[: text.rfind("\n") + 1]
            self._offset += len(complete.encode("utf-8"))
            records = [json.loads(line) for line in complete.splitlines() if line.strip()]
        else:
            try:
                stat = self.path.stat()
                if stat.st_mtime_ns == self._last_mtime:
                    return
                records = json.loads(self.path.read_text(encoding="utf-8")).get("rounds", [])
                self._last_mtime = stat.st_mtime_ns
            except (OSError, json.JSONDecodeError):
                return
        for record in records:
            number = int(record["round"])
            self.round_logged.setdefault(number, now)
            if record.get("test_accuracy") is not None:
                self.round_end.setdefault(number, now)

    def sample(self) -> None:
        self.poll()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.poll()  # what the last interval wrote


def round_timing(start: float, round_end: dict[int, float], num_rounds: int) -> dict[str, Any]:
    """Phases from the round-end times (wall clock, seconds since ``start``)."""
    out: dict[str, Any] = {"round_end_s": {r: round(t - start, 3) for r, t in sorted(round_end.items())}}
    if 0 in round_end:
        out["to_initial_eval_s"] = round_end[0] - start  # SuperLink, flwr run, Ray, ServerApp, round-0 eval
    if 0 in round_end and 1 in round_end:
        out["round1_s"] = round_end[1] - round_end[0]  # query round, Ray actors importing the ClientApp, round 1
    if 0 in round_end and num_rounds in round_end:
        out["rounds_s"] = round_end[num_rounds] - round_end[0]
    if 1 in round_end and num_rounds in round_end and num_rounds > 1:
        out["steady_round_s"] = (round_end[num_rounds] - round_end[1]) / (num_rounds - 1)
        out["rounds_per_min_steady"] = 60.0 / out["steady_round_s"] if out["steady_round_s"] > 0 else None
    return out


def run_privfl(config: Any, run_dir: Path, *, memory: bool = True, **launcher: Any) -> dict[str, Any]:
    """privfl's real simulation of ``config``, timed; ``launcher``: keyword arguments of ``run_simulations``."""
    from privfl.simulations.launcher import run_simulations

    run_dir = Path(run_dir)
    config = config.replace(run_dir=str(run_dir))
    sampler = TreeMemorySampler() if memory else None
    start = time.time()
    with RoundWatcher(run_dir / "history.jsonl") as watcher, ProcessTimeline(t0=start) as timeline:
        if sampler:
            sampler.__enter__()
        try:
            result = run_simulations([config], stream=False, **launcher)[0]
        finally:
            if sampler:
                sampler.__exit__(None, None, None)
    wall = time.time() - start
    t = result.timings
    phases = {
        "superlink_start_s": t.get("superlink_listening"),
        "ray_ready_s": t.get("ray_ready"),
        "submit_s": t["submitted"] - max(t.get("superlink_listening", 0), t.get("ray_ready", 0)),
        "submitted_at_s": t["submitted"],
        "finish_after_last_round_s": None,
        "checkpoint_s": t["ledgers_checkpointed"] - t["finished"],
        "audit_s": t["audited"] - t["ledgers_checkpointed"],
        "report_s": t["reported"] - t["audited"],
        "save_log_s": (t["flower_log_saved"] - t["finished"]) if "flower_log_saved" in t else 0.0,
        "stop_tree_s": t.get("processes_stopped", t["done"]) - t.get("flower_log_saved", t["finished"]),
        "after_last_round_s": t["done"] - t["finished"],
    }
    rounds = result.history.get("rounds", [])
    out = {"wall_s": wall, "phases": phases, "launcher_timings": t,
           **round_timing(start, watcher.round_end, config.num_rounds),
           "final_test_accuracy": result.history["final_test_accuracy"], "status": result.history["status"],
           "cpu_by_kind": timeline.by_kind(), "cpu_total_s": timeline.total_cpu_s(), "top_processes": timeline.top(),
           # A run whose clients crashed (e.g. Ray killing workers for memory) still ends
           # "finished"; count what actually trained so a benchmark cannot mistake it.
           "client_failures": sum(len(r.get("failures", [])) for r in rounds),
           "client_updates": sum(len(r.get("participants", [])) for r in rounds)}
    if config.num_rounds in watcher.round_end:
        phases["finish_after_last_round_s"] = start + t["finished"] - watcher.round_end[config.num_rounds]
    if out["client_failures"]:
        print(f"WARNING: {out['client_failures']} client failures in {run_dir}; first: "
              f"{next(f for r in rounds for f in r.get('failures', []))[:300]}", flush=True)
    if sampler:
        out.update(sampler.result())
    return out


def run_plain_app(run_config: dict[str, Any], num_supernodes: int, work_dir: Path, *,
                  app_dir: Path = PLAIN_APP, memory: bool = True, timeout: float = 900,
                  ray_head: bool | None = None, tuned: bool = True, client_cpus: float = 1.0) -> dict[str, Any]:
    """A Flower app without privfl, run the way privfl's launcher runs privfl (see the module docstring).

    ``tuned``: Ray's workers preload the app (one torch thread each, no spare workers), as the
    launcher's are; ``ray_head``: a Ray head started with the SuperLink (default: as the launcher does).
    """
    from privfl.simulations import launcher as L

    from privfl import settings

    work_dir = Path(work_dir)
    state_dir = work_dir / "flower"
    home = state_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    progress_file = work_dir / "progress.json"
    ray_tmp = Path(tempfile.mkdtemp(prefix="plainfl-ray-"))
    sampler = TreeMemorySampler() if memory else None
    marks: dict[str, float] = {}
    start = time.time()
    port = L._free_port()
    if tuned:  # the launcher's treatment: workers import the ClientApp and Opacus as they start, one thread each
        env = L._simulation_environment(home, ray_tmp, client_cpus)
        env["RAY_preload_python_modules"] = "plainfl.client_app,plainfl.task,opacus,sklearn.model_selection"
    else:  # as `flwr run` runs an app
        env = L._environment(home, ray_tmp)
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        env["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] = "0"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(app_dir), env.get("PYTHONPATH", "")) if p)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{L.CONNECTION}"\n\n'
        f'[superlink.{L.CONNECTION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n',
        encoding="utf-8",
    )
    run_config_file = state_dir / "run-config.toml"
    run_config_file.write_text(settings.toml_dumps({**run_config, "progress-file": str(progress_file)}),
                               encoding="utf-8")
    if ray_head is None:
        ray_head = L.OWN_RAY_HEAD
    head = superlink = None
    if sampler:
        sampler.__enter__()
    try:
        with RoundWatcher(progress_file) as watcher, ProcessTimeline(t0=start) as timeline:
            if ray_head:
                head, env["RAY_ADDRESS"] = L._start_ray_head(env, ray_tmp, state_dir / "ray-head.log")
            superlink = L._start_superlink(env, state_dir, port)
            L._wait_until_listening(superlink, port, state_dir / "superlink.log")
            marks["superlink_listening"] = time.time()
            if head is not None:
                L._wait_for_ray(head, state_dir / "ray-head.log")
                marks["ray_ready"] = time.time()
            process = L._flwr(env, "run", str(app_dir), L.CONNECTION, "--run-config", str(run_config_file),
                              "--federation-config",
                              f"num-supernodes={num_supernodes} client-resources-num-cpus={L._number(client_cpus)}",
                              "--format", "json", capture=True)
            output, _ = process.communicate(timeout=120)
            marks["submit_end"] = time.time()
            if "run-id" not in output:
                raise RuntimeError(f"flwr run did not start the plain app:\n{output[-2000:]}")
            _wait_finished(superlink, progress_file, timeout, L)
            marks["wait_end"] = marks["stop_begin"] = time.time()
            _stop(L, superlink, head, ray_tmp)
            head = superlink = None
            marks["stop_end"] = time.time()
    finally:
        _stop(L, superlink, head, ray_tmp)
        if sampler:
            sampler.__exit__(None, None, None)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    wall = time.time() - start
    progress = json.loads(progress_file.read_text(encoding="utf-8"))
    num_rounds = int(run_config["num-rounds"])
    ready = max(marks["superlink_listening"], marks.get("ray_ready", 0))
    phases = {
        "superlink_start_s": marks["superlink_listening"] - start,
        "ray_ready_s": marks["ray_ready"] - start if "ray_ready" in marks else None,
        "submit_s": marks["submit_end"] - ready,
        "submitted_at_s": marks["submit_end"] - start,
        "save_log_s": 0.0, "checkpoint_s": 0.0, "audit_s": 0.0, "report_s": 0.0,
        "stop_tree_s": marks["stop_end"] - marks["stop_begin"],
        "after_last_round_s": None,
    }
    if num_rounds in watcher.round_end:
        phases["finish_after_last_round_s"] = marks["wait_end"] - watcher.round_end[num_rounds]
        phases["after_last_round_s"] = marks["stop_end"] - watcher.round_end[num_rounds]
    out = {"wall_s": wall, "phases": phases, **round_timing(start, watcher.round_end, num_rounds),
           "final_test_accuracy": progress.get("final_test_accuracy"), "status": progress.get("status"),
           "federated_accuracy": progress.get("federated_accuracy"), "ray_head": ray_head, "tuned": tuned,
           "cpu_by_kind": timeline.by_kind(), "cpu_total_s": timeline.total_cpu_s(),
           "top_processes": timeline.top()}
    if sampler:
        out.update(sampler.result())
    return out


def _stop(L: Any, superlink: Any, head: Any, ray_tmp: Path) -> None:
    if superlink is not None:
        L._stop_tree(superlink)
    if head is not None:
        L._stop_ray_head(head, ray_tmp)
    L._kill_mentioning(str(ray_tmp))


def _wait_finished(superlink: Any, progress_file: Path, timeout: float, L: Any) -> None:
    """Like privfl's launcher: until the ServerApp marks the run finished; fail if the app dies first."""
    started, seen_app = time.monotonic(), False
    while True:
        try:
            if json.loads(progress_file.read_text(encoding="utf-8")).get("status") == "finished":
                return
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        if superlink.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with code {superlink.returncode}")
        if L._app_running(superlink):
            seen_app = True
        elif seen_app:
            time.sleep(0.5)  # the final write may land just after the process ends
            try:
                if json.loads(progress_file.read_text(encoding="utf-8")).get("status") == "finished":
                    return
            except (FileNotFoundError, json.JSONDecodeError):
                pass
            raise RuntimeError("the plain Flower app ended before it finished; see its SuperLink log")
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"the plain Flower app did not finish within {timeout:.0f}s")
        time.sleep(0.1)


def temp_root(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def cleanup(path: Path) -> None:
    if os.environ.get("PRIVFL_BENCH_KEEP_RUNS"):
        return
    shutil.rmtree(path, ignore_errors=True)
