"""privfl's simulation on an existing multi-node Ray cluster (``privfl simulate --ray-address``).

A Ray head and one worker node are started separately on this machine, the way an
administrator starts them on several machines (``ray start --head`` / ``ray start
--address``), each with one CPU, so Flower's simulation engine places one ClientApp
actor on each node.  A 2-round DP simulation of four owners runs on that cluster
through the launcher; the test checks that it finished, that every ledger verifies,
and -- watching the process tree of each node -- that a ClientApp ran on both nodes
(an actor process that loaded torch has handled a message: the ClientApp is imported
on an actor's first message).  Both nodes are stopped by PID.  Where Ray cannot start
a second node here, the test is skipped, saying why.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from privfl.cli.simulate import load_config
from privfl.simulations.launcher import run_simulation
from privfl.simulations.processes import command_line, descendants
from tests.conftest import processes_mentioning

pytestmark = pytest.mark.e2e

OWNERS = 4


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ray_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.pop("RAY_ADDRESS", None)
    # No RAY_preload_python_modules here: an actor then imports the ClientApp (torch) only when it
    # gets its first message, which is what tells the test that it worked.
    env.pop("RAY_preload_python_modules", None)
    return env


def _start(command: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(command, env=_ray_env(), stdout=out, stderr=subprocess.STDOUT)


def _wait_started(process: subprocess.Popen, log: Path, timeout: float = 90) -> str | None:
    """None once ``ray start`` reports the node up, else why not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if "Ray runtime started" in text:
            return None
        if process.poll() is not None:
            return f"exited with code {process.returncode}: {text[-1500:]}"
        time.sleep(0.1)
    return f"not up within {timeout:.0f}s: {log.read_text(errors='replace')[-1500:]}"


def _kill_tree(process: subprocess.Popen) -> None:
    for pid in [*descendants(process.pid), process.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    process.wait(timeout=10)


class _ActorWatcher:
    """Per node (the tree of its ``ray start --block``): the ClientApp actor processes that loaded torch."""

    def __init__(self, nodes: dict[str, subprocess.Popen]) -> None:
        self.nodes = nodes
        self.actors: dict[str, set[int]] = {name: set() for name in nodes}
        self.worked: dict[str, set[int]] = {name: set() for name in nodes}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, node in self.nodes.items():
                for pid in descendants(node.pid):
                    if "ClientAppActor" not in command_line(pid):
                        continue
                    self.actors[name].add(pid)
                    try:
                        if "libtorch" in Path(f"/proc/{pid}/maps").read_text():
                            self.worked[name].add(pid)
                    except OSError:
                        pass
            self._stop.wait(0.25)

    def __enter__(self) -> _ActorWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def ray_cluster():
    """A head (1 CPU) and a worker node (1 CPU) on this machine; yields (address, {name: process})."""
    if not shutil.which("ray", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"):
        pytest.skip("the `ray` command is not installed in this environment")
    temp = Path(tempfile.mkdtemp(prefix="privfl-rc-"))  # short: Ray's socket paths are length-limited
    port = _free_port()
    address = f"127.0.0.1:{port}"
    nodes: dict[str, subprocess.Popen] = {}
    try:
        nodes["head"] = _start(["ray", "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
                                f"--temp-dir={temp}", "--include-dashboard=false", "--disable-usage-stats",
                                f"--ray-client-server-port={_free_port()}",
                                f"--dashboard-agent-listen-port={_free_port()}"], temp / "head.log")
        problem = _wait_started(nodes["head"], temp / "head.log")
        if problem:
            pytest.skip(f"Ray cannot start a head node here: {problem}")
        nodes["worker"] = _start(["ray", "start", "--block", f"--address={address}", "--num-cpus=1",
                                  "--disable-usage-stats", f"--dashboard-agent-listen-port={_free_port()}"],
                                 temp / "worker.log")
        problem = _wait_started(nodes["worker"], temp / "worker.log")
        if problem:
            pytest.skip(f"Ray cannot start a second node on this machine: {problem}")
        yield address, nodes
    finally:
        for process in nodes.values():  # by PID: each node's `ray start --block` and everything below it
            _kill_tree(process)
        for pid in processes_mentioning(str(temp)):  # anything of this cluster that left its tree
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)


def test_simulation_runs_on_an_existing_two_node_ray_cluster(tmp_path, ray_cluster):
    address, nodes = ray_cluster
    config = load_config("quickstart", [f"num-owners={OWNERS}", "num-rounds=2"]).replace(run_dir=str(tmp_path / "run"))
    started = time.monotonic()
    with _ActorWatcher(nodes) as watcher:
        result = run_simulation(config, stream=False, ray_address=address, save_flower_log=False)
    elapsed = time.monotonic() - started

    history = result.history
    assert history["status"] == "finished"
    assert [r["round"] for r in history["rounds"]] == [0, 1, 2]
    assert all(len(r["participants"]) == OWNERS for r in history["rounds"][1:])
    assert history["failed_updates"] == 0
    assert result.audit is not None and result.audit.ok, result.audit.summary()
    # One actor per node (each node has one CPU, each client reserves one), and both did work.
    assert all(watcher.actors[name] for name in nodes), watcher.actors
    assert all(watcher.worked[name] for name in nodes), f"ClientApps ran only on {watcher.worked}"
    # The launcher stopped what it started (SuperLink, simulation) and left the cluster running.
    assert processes_mentioning(str(result.run_dir)) == []
    assert all(process.poll() is None for process in nodes.values())
    assert "ray_ready" not in result.timings  # no Ray head of the launcher's own
    print(f"2 rounds of {OWNERS} owners on a 2-node cluster in {elapsed:.1f}s")
