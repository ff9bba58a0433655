"""Run Flower simulations for the benchmarks and time their phases.

* :func:`run_privfl` runs privfl's own :func:`privfl.simulations.launcher.run_simulation`
  unchanged; the launcher's steps (start the SuperLink, submit, wait, save the log,
  stop the process tree) are timed by wrapping the launcher's module functions in this
  process only, nothing in privfl is edited.
* :func:`run_plain_app` runs any other Flower app folder (``bench/plain_flower``) the
  way privfl's launcher does -- its own SuperLink in simulation mode on a free port,
  ``flwr run``, wait for the ServerApp's "finished" mark, stop the tree by PID --
  reusing the launcher's helpers, but with none of privfl's extras (no log stream, no
  ``flwr log --show`` at the end).

Both watch the file their ServerApp rewrites after every round's evaluation
(privfl: ``history.json``; plain: its progress file) and take each round's end time
from the file's modification time, so rounds are timed the same way for both.  The
summed RSS/PSS of this process and everything below it is sampled throughout.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import BENCH_DIR, TreeMemorySampler

PLAIN_APP = BENCH_DIR / "plain_flower"


class RoundWatcher:
    """Records when each round's evaluation first appears in a JSON file the ServerApp rewrites."""

    def __init__(self, path: Path, interval: float = 0.05) -> None:
        self.path, self.interval = path, interval
        self.round_end: dict[int, float] = {}  # round -> wall-clock time the file holding it was written
        self._last_mtime = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="round-watcher", daemon=True)

    def poll(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return
        if stat.st_mtime_ns == self._last_mtime:
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return
        self._last_mtime = stat.st_mtime_ns
        for record in data.get("rounds", []):
            if record.get("test_accuracy") is not None and record["round"] not in self.round_end:
                self.round_end[int(record["round"])] = stat.st_mtime_ns / 1e9

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval)

    def __enter__(self) -> RoundWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()


def round_timing(start: float, round_end: dict[int, float], num_rounds: int) -> dict[str, Any]:
    """Phases from the round-end times (wall clock, seconds since ``start``)."""
    out: dict[str, Any] = {"round_end_s": {r: round(t - start, 3) for r, t in sorted(round_end.items())}}
    if 0 in round_end:
        out["to_initial_eval_s"] = round_end[0] - start  # SuperLink, flwr run, Ray, ServerApp, round-0 eval
    if 0 in round_end and 1 in round_end:
        out["round1_s"] = round_end[1] - round_end[0]  # includes Ray actors starting and importing the ClientApp
    if 0 in round_end and num_rounds in round_end:
        out["rounds_s"] = round_end[num_rounds] - round_end[0]
    if 1 in round_end and num_rounds in round_end and num_rounds > 1:
        out["steady_round_s"] = (round_end[num_rounds] - round_end[1]) / (num_rounds - 1)
        out["rounds_per_min_steady"] = 60.0 / out["steady_round_s"] if out["steady_round_s"] > 0 else None
    return out


@contextmanager
def _patched(module: Any, name: str, wrapper: Any):
    original = getattr(module, name)
    setattr(module, name, wrapper(original))
    try:
        yield
    finally:
        setattr(module, name, original)


def run_privfl(config: Any, run_dir: Path, *, memory: bool = True) -> dict[str, Any]:
    """privfl's real simulation of ``config``, with its launcher's phases timed."""
    from privfl.simulations import launcher

    marks: dict[str, float] = {}

    def timed(label: str):
        def wrap(fn):
            def inner(*args, **kwargs):
                marks[f"{label}_begin"] = time.time()
                try:
                    return fn(*args, **kwargs)
                finally:
                    marks[f"{label}_end"] = time.time()
            return inner
        return wrap

    def timed_superlink(original):
        @contextmanager
        def inner(*args, **kwargs):
            marks["superlink_begin"] = time.time()
            with original(*args, **kwargs) as process:
                marks["superlink_listening"] = time.time()
                try:
                    yield process
                finally:
                    marks["stop_begin"] = time.time()
            marks["stop_end"] = time.time()
        return inner

    run_dir = Path(run_dir)
    config = config.replace(run_dir=str(run_dir))
    sampler = TreeMemorySampler() if memory else None
    start = time.time()
    with (_patched(launcher, "_superlink", timed_superlink), _patched(launcher, "_submit", timed("submit")),
          _patched(launcher, "_wait_for_run", timed("wait")), _patched(launcher, "_save_log", timed("save_log")),
          RoundWatcher(run_dir / "history.json") as watcher):
        if sampler:
            sampler.__enter__()
        try:
            result = launcher.run_simulation(config, stream=False)
        finally:
            if sampler:
                sampler.__exit__(None, None, None)
    wall = time.time() - start
    phases = {
        "superlink_start_s": marks["superlink_listening"] - marks["superlink_begin"],
        "submit_s": marks["submit_end"] - marks["submit_begin"],
        "save_log_s": marks.get("save_log_end", 0) - marks.get("save_log_begin", 0),
        "stop_tree_s": marks["stop_end"] - marks["stop_begin"],
        "setup_before_superlink_s": marks["superlink_begin"] - start,  # privfl: owners' keys enrolled here
        "after_stop_s": time.time() - marks["stop_end"],  # privfl: every ledger verified here
    }
    rounds = result.history.get("rounds", [])
    out = {"wall_s": wall, "phases": phases, **round_timing(start, watcher.round_end, config.num_rounds),
           "final_test_accuracy": result.history["final_test_accuracy"], "status": result.history["status"],
           # A run whose clients crashed (e.g. Ray killing workers for memory) still ends
           # "finished"; count what actually trained so a benchmark cannot mistake it.
           "client_failures": sum(len(r.get("failures", [])) for r in rounds),
           "client_updates": sum(len(r.get("participants", [])) for r in rounds)}
    if out["client_failures"]:
        print(f"WARNING: {out['client_failures']} client failures in {run_dir}; first: "
              f"{next(f for r in rounds for f in r.get('failures', []))[:300]}", flush=True)
    if "wait_end" in marks and config.num_rounds in watcher.round_end:
        phases["finish_after_last_round_s"] = marks["wait_end"] - watcher.round_end[config.num_rounds]
    if sampler:
        out.update(sampler.result())
    return out


def run_plain_app(run_config: dict[str, Any], num_supernodes: int, work_dir: Path, *,
                  app_dir: Path = PLAIN_APP, memory: bool = True, timeout: float = 900) -> dict[str, Any]:
    """A Flower app without privfl, run the way privfl's launcher runs privfl."""
    from privfl import settings
    from privfl.simulations import launcher as L

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
    env = L._environment(home, ray_tmp)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{L.CONNECTION}"\n\n'
        f'[superlink.{L.CONNECTION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n',
        encoding="utf-8",
    )
    run_config_file = state_dir / "run-config.toml"
    run_config_file.write_text(settings.toml_dumps({**run_config, "progress-file": str(progress_file)}), encoding="utf-8")
    if sampler:
        sampler.__enter__()
    try:
        with RoundWatcher(progress_file) as watcher:
            marks["superlink_begin"] = time.time()
            with L._superlink(env, state_dir, port) as superlink:
                marks["superlink_listening"] = time.time()
                process = L._flwr(env, "run", str(app_dir), L.CONNECTION, "--run-config", str(run_config_file),
                                  "--federation-config",
                                  f"num-supernodes={num_supernodes} client-resources-num-cpus=1",
                                  "--format", "json", capture=True)
                output, _ = process.communicate(timeout=120)
                marks["submit_end"] = time.time()
                if "run-id" not in output:
                    raise RuntimeError(f"flwr run did not start the plain app:\n{output[-2000:]}")
                _wait_finished(superlink, progress_file, timeout, L)
                marks["wait_end"] = time.time()
                marks["stop_begin"] = time.time()
            marks["stop_end"] = time.time()
    finally:
        if sampler:
            sampler.__exit__(None, None, None)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    wall = time.time() - start
    progress = json.loads(progress_file.read_text(encoding="utf-8"))
    num_rounds = int(run_config["num-rounds"])
    phases = {
        "superlink_start_s": marks["superlink_listening"] - marks["superlink_begin"],
        "submit_s": marks["submit_end"] - marks["superlink_listening"],
        "save_log_s": 0.0,
        "stop_tree_s": marks["stop_end"] - marks["stop_begin"],
        "setup_before_superlink_s": marks["superlink_begin"] - start,
        "after_stop_s": time.time() - marks["stop_end"],
    }
    if num_rounds in watcher.round_end:
        phases["finish_after_last_round_s"] = marks["wait_end"] - watcher.round_end[num_rounds]
    out = {"wall_s": wall, "phases": phases, **round_timing(start, watcher.round_end, num_rounds),
           "final_test_accuracy": progress.get("final_test_accuracy"), "status": progress.get("status")}
    if sampler:
        out.update(sampler.result())
    return out


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
        time.sleep(0.5)


def temp_root(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def cleanup(path: Path) -> None:
    if os.environ.get("PRIVFL_BENCH_KEEP_RUNS"):
        return
    shutil.rmtree(path, ignore_errors=True)
