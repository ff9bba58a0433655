"""Test-only helpers: a whole privfl deployment on loopback, started and stopped by PID.

The deployment is the one ``privfl deploy init`` writes, started with the very scripts
it writes (``coordinator/start-superlink.sh``, ``institutions/<owner>/start-supernode.sh``,
...), so what the README and docs/deployment.md tell an institution to run is what the
tests run.  Every process is started here as a child of the test (the scripts ``exec``
the Flower commands), its output goes to ``logs/<name>.log``, and :meth:`Deployment.stop`
stops each one and everything below it by PID (walking /proc), whatever happened.
Flower's state (``FLWR_HOME``), Ray's (``RAY_TMPDIR``) and every database live under the
test's temporary folder.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from privfl import settings
from privfl.deploy import layout as names
from privfl.deploy.create import CoordinatorOptions, ExperimentDefaults, PolicyDefaults, init_deployment
from privfl.deploy.layout import DeploymentFolder, InstitutionFolder
from privfl.simulations.launcher import _environment, _stop_tree
from privfl.simulations.processes import command_line, descendants


class DeploymentError(RuntimeError):
    """The deployment did not do what the test waited for; the message names the log to read."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_range(count: int, tries: int = 50) -> int:
    """The first of ``count`` consecutive free loopback ports."""
    for _ in range(tries):
        first = random.randint(20000, 60000 - count)
        if all(_port_free(first + i) for i in range(count)):
            return first
    raise DeploymentError(f"found no {count} consecutive free ports")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Started:
    name: str
    process: subprocess.Popen
    log: Path

    def text(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""


@dataclass
class Deployment:
    """A deployment folder and the processes started from it."""

    root: Path
    owners: list[str]
    env: dict[str, str]
    port: int
    registry_port: int
    signed_apps: bool
    ray_tmp: Path | None = None
    started: list[Started] = field(default_factory=list)
    nodes: dict[str, Started] = field(default_factory=dict)  # the institutions' SuperNodes, by owner
    strangers: dict[str, Started] = field(default_factory=dict)  # SuperNodes that must be refused
    seen: dict[int, int | None] = field(default_factory=dict)  # PID -> start time, of every process seen below

    # -- folders -----------------------------------------------------------------------

    @property
    def folder(self) -> DeploymentFolder:
        return DeploymentFolder(self.root / "deployment")

    @property
    def coordinator(self):
        return self.folder.coordinator

    def institution(self, owner: str) -> InstitutionFolder:
        return self.folder.institution(owner)

    @property
    def logs(self) -> Path:
        path = self.root / "logs"
        path.mkdir(exist_ok=True)
        return path

    # -- creating ----------------------------------------------------------------------

    @classmethod
    def create(cls, root: Path, owners: list[str], *, purpose: str, min_noise_multiplier: float = 1.0,
               num_rounds: int = 3, signed_apps: bool = True) -> Deployment:
        port, registry_port = free_port(), free_port()
        first = free_port_range(len(owners))
        options = CoordinatorOptions(host="127.0.0.1", port=port, registry_port=registry_port,
                                     signed_apps=signed_apps, purpose=purpose,
                                     experiment=ExperimentDefaults(num_rounds=num_rounds))
        init_deployment(root / "deployment", owners, options=options, first_supernode_port=first,
                        policy=PolicyDefaults(purpose=purpose, min_noise_multiplier=min_noise_multiplier))
        ray_tmp = Path(tempfile.mkdtemp(prefix="privfl-ray-"))  # short: Ray's socket paths are length-limited
        env = _environment(root / "flwr-home-unused", ray_tmp)
        env.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", PYTHONUNBUFFERED="1",
                   # Flower's SuperExec looks for work to launch every second by default; on a test
                   # machine every hop of every round waits for it.
                   FLWR_SUPEREXEC_TASK_POLL_INTERVAL="0.2")
        for variable in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "FLWR_SUPERGRID_API_URL"):
            env.pop(variable, None)
        return cls(root, list(owners), env, port, registry_port, signed_apps, ray_tmp)

    # -- processes ---------------------------------------------------------------------

    def start(self, name: str, script: Path, *args: str) -> Started:
        log = self.logs / f"{name}.log"
        with open(log, "ab") as handle:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(["bash", str(script), *args], env=self.env, stdout=handle,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        started = Started(name, process, log)
        self.started.append(started)
        return started

    def run(self, name: str, command: list[str], timeout: float = 120, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """A short command (register, submit, report); its output is kept in logs/<name>.log."""
        result = subprocess.run(command, env=env or self.env, capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL, check=False)
        (self.logs / f"{name}.log").write_text(f"$ {' '.join(command)}\n[exit {result.returncode}]\n"
                                                f"{result.stdout}\n{result.stderr}", encoding="utf-8")
        if check and result.returncode != 0:
            raise DeploymentError(f"{name} exited {result.returncode}:\n{result.stdout[-3000:]}\n"
                                  f"{result.stderr[-3000:]}")
        return result

    def _watch(self) -> None:
        """Remember every process below the started ones, with its start time (so a reused PID is never hit)."""
        for started in self.started:
            if started.process.poll() is None:
                for pid in descendants(started.process.pid):
                    self.seen.setdefault(pid, _start_time(pid))

    def wait_listening(self, started: Started, port: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if started.process.poll() is not None:
                raise DeploymentError(f"{started.name} exited with {started.process.returncode}:\n"
                                      f"{started.text()[-3000:]}")
            if listening(port):
                return
            time.sleep(0.2)
        raise DeploymentError(f"{started.name} did not listen on {port} within {timeout:.0f}s; see {started.log}")

    def wait_for_log(self, started: Started, *needles: str, timeout: float = 60) -> str:
        """Wait until ``started``'s log holds one of ``needles``; returns the one found."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._watch()
            text = started.text()
            for needle in needles:
                if needle in text:
                    return needle
            if started.process.poll() is not None:
                text = started.text()
                for needle in needles:
                    if needle in text:
                        return needle
                raise DeploymentError(f"{started.name} exited with {started.process.returncode} before logging any "
                                      f"of {needles}:\n{text[-3000:]}")
            time.sleep(0.3)
        raise DeploymentError(f"{started.name} logged none of {needles} within {timeout:.0f}s; see {started.log}:\n"
                              f"{started.text()[-3000:]}")

    def stop_one(self, started: Started) -> None:
        self._watch()
        _stop_tree(started.process)

    def stop(self) -> None:
        """Stop every started process and everything below it, by PID; whatever happened."""
        self._watch()
        for started in reversed(self.started):
            try:
                _stop_tree(started.process)
            except Exception as err:  # noqa: BLE001 - keep stopping the others
                print(f"deployment harness: stopping {started.name} failed: {err!r}")
        for pid, started_at in sorted(self.seen.items()):
            if started_at is not None and _start_time(pid) == started_at:  # still the process seen, not a reused PID
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.monotonic() + 15  # SIGKILL is not instant on a loaded machine: let the kernel finish
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.ray_tmp is not None:
            shutil.rmtree(self.ray_tmp, ignore_errors=True)

    def alive(self) -> list[int]:
        """PIDs of everything started here that still runs (empty after :meth:`stop`)."""
        pids = [s.process.pid for s in self.started if s.process.poll() is None]
        return pids + [pid for pid, started_at in self.seen.items()
                       if started_at is not None and _start_time(pid) == started_at and _not_zombie(pid)]

    # -- the coordinator ---------------------------------------------------------------

    def start_coordinator(self) -> None:
        if self.signed_apps:
            registry = self.start("app-registry", self.coordinator.script(names.START_APP_REGISTRY))
            self.wait_listening(registry, self.registry_port)
        superlink = self.start("superlink", self.coordinator.script(names.START_SUPERLINK))
        self.wait_listening(superlink, self.port)

    def register(self, *owners: str) -> None:
        self.run(f"register-{'-'.join(owners) or 'all'}",
                 ["bash", str(self.coordinator.script(names.REGISTER_SUPERNODES)), *owners])

    def start_supernode(self, folder: InstitutionFolder, name: str | None = None) -> Started:
        return self.start(name or f"supernode-{folder.path.name}", folder.script(names.START_SUPERNODE))

    def flwr_env(self) -> dict[str, str]:
        return {**self.env, "FLWR_HOME": str(self.coordinator.flwr_home)}

    def write_run_config(self, name: str, **changes) -> Path:
        """experiment.toml with ``changes`` (dashed keys) and its own experiment name and run-dir."""
        values = tomllib.loads(self.coordinator.experiment.read_text(encoding="utf-8"))
        values.update({"experiment": name, "run-dir": str(self.coordinator.runs / name)})
        values.update({key.replace("_", "-"): value for key, value in changes.items()})
        path = self.coordinator.path / f"{name}.toml"
        path.write_text(settings.toml_dumps(values), encoding="utf-8")
        return path

    def submit(self, config: Path, *, app: Path | None = None, name: str | None = None) -> int:
        """Submit a run with submit-run.sh (the signed app), or a locally built ``app`` folder; returns the run id."""
        name = name or f"submit-{config.stem}"
        if app is None:
            command = ["bash", str(self.coordinator.script(names.SUBMIT_RUN)), str(config), "--format", "json"]
        else:
            command = ["flwr", "run", str(app), names.CONNECTION, "--run-config", str(config), "--format", "json"]
        result = self.run(name, command, env=self.flwr_env())
        try:
            return int(json.loads(result.stdout[result.stdout.index("{"):])["run-id"])
        except (ValueError, KeyError, TypeError) as err:
            raise DeploymentError(f"{name}: no run id in the output ({err}):\n{result.stdout[-2000:]}") from None

    def _serverapps(self) -> list[int]:
        """The ServerApp processes the SuperLink runs now (``flwr-serverapp``)."""
        # the live SuperLink, also one restarted under another name ("superlink-restarted"): watching only the
        # first one made a resumed run look as if its ServerApp never started, failing it after start_timeout
        superlink = next((s for s in reversed(self.started)
                          if s.name.startswith("superlink") and s.process.poll() is None), None)
        if superlink is None:
            return []
        return [pid for pid in descendants(superlink.process.pid) if "flwr-serverapp" in command_line(pid)]

    def wait_for_run(self, run_id: int, run_dir: Path, timeout: float = 240, start_timeout: float = 90) -> dict:
        """Block until the ServerApp marks the history finished; fail early if its process ends first.

        Watching the process tree (as privfl's simulation launcher does) costs nothing, where
        polling ``flwr ls`` would start a heavy CLI process every few seconds on a 2-core machine.
        """
        history_file = run_dir / "history.json"
        started, seen_app, gone_since = time.monotonic(), False, None
        while time.monotonic() - started < timeout:
            self._watch()
            history = _read_json(history_file)
            if history.get("status") == "finished":
                return history
            if self._serverapps():
                seen_app, gone_since = True, None
            elif seen_app:
                gone_since = gone_since or time.monotonic()
                if time.monotonic() - gone_since > 5:
                    break
            elif time.monotonic() - started > start_timeout:
                break
            time.sleep(0.5)
        log = self.save_run_log(run_id)
        raise DeploymentError(f"run {run_id} did not finish (ServerApp {'ended' if seen_app else 'never started'}; "
                              f"{time.monotonic() - started:.0f}s); its log:\n{log[-4000:]}")

    def save_run_log(self, run_id: int) -> str:
        result = self.run(f"run-{run_id}", ["flwr", "log", str(run_id), names.CONNECTION, "--show"], check=False,
                          timeout=60, env=self.flwr_env())
        return result.stdout + result.stderr


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22); None once it is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
