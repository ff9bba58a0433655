"""Shared helpers of the benchmarks: the machine, results files, tables, memory sampling.

Every benchmark writes one JSON file (default ``bench/results/<name>.json``) holding
``{"benchmark", "quick", "machine", "settings", "results", ...}`` and prints the same
results as a fixed-width table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from privfl.simulations.processes import descendants

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"


# --------------------------------------------------------------------------- command line


def parser(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=description)
    p.add_argument("--quick", action="store_true", help="small version (< ~60 s), used by the smoke test")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / f"{name}.json",
                   help=f"JSON results file (default: bench/results/{name}.json)")
    return p


# --------------------------------------------------------------------------- the machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def accelerator() -> dict[str, Any]:
    """The device privfl's ``device = auto`` picks here, named."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return {"device": "cuda", "name": torch.cuda.get_device_name(0),
                "memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda}
    return {"device": "cpu", "name": _cpu_model()}


def git_state() -> dict[str, Any]:
    """The commit benchmarked and how many files differ from it (the tree may be mid-change)."""
    import subprocess

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = [line for line in git("status", "--porcelain").splitlines() if line.strip()]
    return {"commit": git("rev-parse", "HEAD").strip() or None, "changed_files": len(changed)}


def machine_info() -> dict[str, Any]:
    import torch

    return {
        "nproc": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": _mem_total_gib(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "flwr": _version("flwr"),
        "opacus": _version("opacus"),
        "ray": _version("ray"),
        "numpy": _version("numpy"),
        "dp_accounting": _version("dp-accounting"),
        "accelerator": accelerator(),
        "loadavg_at_write": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


# --------------------------------------------------------------------------- results


def write_results(path: Path, benchmark: str, *, quick: bool, settings: dict[str, Any],
                  results: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    payload = {
        "benchmark": benchmark,
        "quick": quick,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "git": git_state(),
        "settings": settings,
        "results": results,
        **extra,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(payload), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    print(f"\nresults written to {path}")
    return payload


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def fmt(value: Any, spec: str = ".3f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf"
        return format(value, spec)
    return str(value)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]], title: str = "") -> str:
    """``columns``: (key, header, format spec); returns the table as text, and prints it."""
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        cells.append([fmt(row.get(key), spec) for key, _, spec in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = []
    if title:
        lines.append(title)
    for n, r in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if n else c.ljust(w) for c, w in zip(r, widths)))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def mean_std(values: Iterable[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def quantile(values: Iterable[float], q: float) -> float | None:
    """Linear-interpolated quantile (``q`` in [0, 1])."""
    values = sorted(values)
    if not values:
        return None
    position = q * (len(values) - 1)
    low = int(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


def median(values: Iterable[float]) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


# --------------------------------------------------------------------------- processes and memory


def _rss_pss_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB; PSS shares each shared page among its users."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
        return rss, pss
    except OSError:
        pass
    try:  # no smaps_rollup: RSS only
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        rss = pages * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        pass
    return rss, rss


def current_rss_mib(pid: int | None = None) -> float:
    return _rss_pss_kib(pid or os.getpid())[0] / 1024


class PeriodicSampler:
    """Calls :meth:`sample` every ``interval`` seconds in a daemon thread while its ``with`` block runs."""

    def __init__(self, interval: float, name: str) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class TreeMemorySampler(PeriodicSampler):
    """Samples the summed RSS and PSS of a process and all its descendants in a thread.

    RSS summed over processes counts shared pages (torch's libraries, Ray's shared
    memory) once per process, so it overstates; PSS divides shared pages among the
    processes that map them, so its sum is the tree's real footprint.  Both are kept.
    """

    def __init__(self, root_pid: int | None = None, interval: float = 0.25) -> None:
        super().__init__(interval, "tree-memory-sampler")
        self.root = root_pid or os.getpid()
        self.peak_rss_mib = 0.0
        self.peak_pss_mib = 0.0
        self.peak_processes = 0
        self.samples = 0

    def sample(self) -> None:
        pids = [self.root, *descendants(self.root)]
        rss = pss = 0
        for pid in pids:
            r, p = _rss_pss_kib(pid)
            rss, pss = rss + r, pss + p
        self.peak_rss_mib = max(self.peak_rss_mib, rss / 1024)
        self.peak_pss_mib = max(self.peak_pss_mib, pss / 1024)
        self.peak_processes = max(self.peak_processes, len(pids))
        self.samples += 1

    def result(self) -> dict[str, Any]:
        return {"peak_tree_rss_mib": round(self.peak_rss_mib, 1), "peak_tree_pss_mib": round(self.peak_pss_mib, 1),
                "peak_processes": self.peak_processes, "memory_samples": self.samples}


# Process categories of a Flower simulation, by what their command line contains (first match wins).
PROCESS_KINDS = (
    ("flwr-simulation", "flwr-simulation (ServerApp + simulation engine)"),
    ("flower-superexec", "flower-superexec"),
    ("flower-superlink", "flower-superlink"),
    ("flwr run", "flwr run"), ("flwr log", "flwr log"),
    ("ClientAppActor", "Ray workers (ClientApps)"), ("ray::IDLE", "Ray workers (ClientApps)"),
    ("raylet/raylet", "Ray daemons"), ("gcs_server", "Ray daemons"),  # the raylet's arguments name default_worker.py
    ("default_worker", "Ray workers (ClientApps)"),
    ("DashboardAgent", "Ray daemons"), ("RuntimeEnvAgent", "Ray daemons"), ("log_monitor", "Ray daemons"),
    ("monitor.py", "Ray daemons"), ("dashboard", "Ray daemons"), ("ray.util.client.server", "Ray daemons"),
    ("ray start", "Ray daemons"), ("bin/ray ", "Ray daemons"),
)


def process_kind(command: str) -> str:
    for needle, kind in PROCESS_KINDS:
        if needle in command:
            return kind
    return "other"


class ProcessTimeline(PeriodicSampler):
    """Samples the process tree below ``root_pid``: when each kind of process first appeared and its CPU seconds.

    On a machine with few cores the CPU seconds say where the time goes better than
    wall time: every process of a simulation (SuperLink, ServerApp, Ray's daemons and
    workers) competes for the same cores.  ``extra(pid)`` may return True for
    processes to include that are not descendants (none by default).
    """

    def __init__(self, root_pid: int | None = None, interval: float = 0.1, t0: float | None = None) -> None:
        super().__init__(interval, "process-timeline")
        self.root = root_pid or os.getpid()
        self.t0 = time.time() if t0 is None else t0
        self.procs: dict[int, dict[str, Any]] = {}
        self._clock_ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def sample(self) -> None:
        from privfl.simulations.processes import command_line

        now = time.time() - self.t0
        for pid in [self.root, *descendants(self.root)]:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                cpu = (int(fields[11]) + int(fields[12])) / self._clock_ticks
            except (OSError, IndexError, ValueError):
                continue
            proc = self.procs.get(pid)
            if proc is None:
                command = command_line(pid)
                proc = self.procs[pid] = {"first_s": now, "kind": "launcher" if pid == self.root
                                          else process_kind(command), "command": command[:160]}
            elif proc["kind"] == "other":  # a fresh fork may not have its command line yet
                proc["kind"] = process_kind(command_line(pid))
            proc["last_s"], proc["cpu_s"] = now, cpu

    def by_kind(self) -> dict[str, dict[str, Any]]:
        """Per kind: processes, CPU seconds (as last sampled), first seen and last seen (s since t0)."""
        out: dict[str, dict[str, Any]] = {}
        for proc in self.procs.values():
            k = out.setdefault(proc["kind"], {"processes": 0, "cpu_s": 0.0, "first_s": math.inf, "last_s": 0.0})
            k["processes"] += 1
            k["cpu_s"] = round(k["cpu_s"] + proc.get("cpu_s", 0.0), 2)
            k["first_s"] = round(min(k["first_s"], proc["first_s"]), 2)
            k["last_s"] = round(max(k["last_s"], proc.get("last_s", 0.0)), 2)
        return dict(sorted(out.items(), key=lambda kv: kv[1]["first_s"]))

    def top(self, n: int = 25) -> list[dict[str, Any]]:
        """The ``n`` processes that used the most CPU."""
        rows = sorted(self.procs.values(), key=lambda p: p.get("cpu_s", 0.0), reverse=True)[:n]
        return [{"kind": p["kind"], "cpu_s": p.get("cpu_s"), "first_s": round(p["first_s"], 2),
                 "last_s": round(p.get("last_s", 0.0), 2), "command": p["command"][:120]} for p in rows]

    def total_cpu_s(self) -> float:
        return round(sum(p.get("cpu_s", 0.0) for p in self.procs.values()), 2)


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    value = fn()
    return time.perf_counter() - t, value


def bench_env() -> dict[str, str]:
    """Environment for benchmark subprocesses: the repository root importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env
