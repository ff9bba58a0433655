"""A warm local federation: one SuperLink and one Ray head kept running between ``privfl simulate`` runs.

Why: a Flower simulation pays 10-15 s of start-up on every run here (the SuperLink,
Ray's daemons, the simulation process importing Flower, torch and privfl, Ray's
workers importing the ClientApp).  Researchers run the same federation dozens of times;
with a warm federation a run pays none of that.

What runs, all below one detached daemon (:mod:`privfl.simulations.warm_daemon`), in a
per-user state folder (mode 0700, :func:`state_dir`):

- a SuperLink in simulation mode with ``--isolation process`` on a free loopback port:
  it starts no process of its own; only the daemon takes its runs (the Runtime API's
  task hand-out is guarded by a secret in the state folder);
- a Ray head of its own (``ray start --head --block``), whose workers preload privfl;
- a *standby* simulation process forked from the daemon (which has imported Flower,
  torch, Opacus and privfl once), already connected to Ray with its ClientApp actors
  started.  It serves exactly one run and exits, and its actors die with it; the next
  run gets a fresh standby.  So no process that held one run's owners, keys, ledgers or
  caches ever serves another run: isolation between runs is by construction.

The standby runs a Flower run only if it was registered by a ``privfl`` of this user
(``submitted/<run-id>`` in the 0700 folder, written right after ``flwr run``) and carries
privfl's own code-free app bundle (its FAB hash): a run that someone else submitted to
the loopback port is refused before any of its code is loaded.

Lifecycle: started explicitly (``privfl federation start``) or on first use
(``privfl simulate --keep-warm SECONDS``); stopped explicitly (``privfl federation stop``)
or by the daemon itself after ``idle_timeout`` seconds without a run, when its SuperLink
or Ray head dies, or when privfl's code changed (the next client then starts a new one).
Stopping kills the daemon's whole tree by PID (SuperLink, Ray head and workers,
standby).  A state file whose daemon is gone is recovered: whatever it recorded that is
still alive and still ours is killed, and a new federation is started.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

from privfl.simulations.processes import command_line, descendants, processes_mentioning

STATE_FILE = "federation.json"
DEFAULT_IDLE_TIMEOUT = 600.0  # seconds without a run before the daemon stops everything
START_TIMEOUT = 180.0
ENV_DIR = "PRIVFL_WARM_DIR"


class WarmFederationError(RuntimeError):
    """The warm federation could not be started, reached or stopped."""


@dataclass(frozen=True)
class FederationState:
    """What the daemon writes once its SuperLink listens and its Ray head runs (``federation.json``)."""

    daemon_pid: int
    superlink_pid: int
    ray_head_pid: int
    port: int
    ray_address: str
    ray_tmp: str
    fingerprint: str
    idle_timeout: float
    started_at: float

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def state_path() -> Path:
    """Where the per-user state folder is: ``$PRIVFL_WARM_DIR``, else ``$XDG_RUNTIME_DIR/privfl-warm``, else
    ``~/.cache/privfl/warm`` (nothing is created)."""
    configured = os.environ.get(ENV_DIR)
    if configured:
        return Path(configured)
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "privfl-warm"
    return Path.home() / ".cache" / "privfl" / "warm"


def state_dir() -> Path:
    """The per-user state folder (:func:`state_path`), created with mode 0700; refused when another user owns
    it or can enter it."""
    folder = state_path()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = folder.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise WarmFederationError(f"{folder} must belong to you and have mode 0700 (it holds the warm federation's "
                                  f"secret): run `chmod 700 {folder}` or set {ENV_DIR} to a folder of your own")
    return folder


def fingerprint() -> str:
    """Which privfl this is: the interpreter, PYTHONPATH and every privfl source file's size and mtime.

    A daemon that imported other code than the client's would run stale code: a client
    whose fingerprint differs stops it and starts a new one.
    """
    import importlib.util

    digest = hashlib.sha256(f"{sys.executable}\0{os.environ.get('PYTHONPATH', '')}".encode())
    folders = set()
    for name in ("privfl", "privfl.server", "privfl.client", "privfl.privacy", "privfl.simulations"):
        spec = importlib.util.find_spec(name)
        folders.update(spec.submodule_search_locations or []) if spec else None
    for folder in sorted(folders):
        for path in sorted(Path(folder).rglob("*.py")):
            with suppress(OSError):
                info = path.stat()
                digest.update(f"{path}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- reading the state


def read_state(folder: Path) -> FederationState | None:
    try:
        return FederationState(**json.loads((folder / STATE_FILE).read_text(encoding="utf-8")))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None


def _alive(pid: int, marker: str) -> bool:
    """Whether ``pid`` runs and is still ours (its command line names ``marker``): PIDs are reused."""
    return pid > 0 and Path(f"/proc/{pid}").exists() and marker in command_line(pid)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def live_state(folder: Path) -> FederationState | None:
    """The federation in ``folder`` if its daemon, SuperLink and Ray head run and the SuperLink answers."""
    state = read_state(folder)
    if state is None:
        return None
    if not (_alive(state.daemon_pid, str(folder)) and _alive(state.superlink_pid, str(folder))
            and _alive(state.ray_head_pid, state.ray_tmp) and _listening(state.port)):
        return None
    return state


def pids(folder: Path) -> list[int]:
    """Every process of the federation in ``folder``: the daemon's tree and whatever names its Ray folder."""
    state = read_state(folder)
    if state is None:
        return []
    found = set()
    for pid, marker in ((state.daemon_pid, str(folder)), (state.superlink_pid, str(folder)),
                        (state.ray_head_pid, state.ray_tmp)):
        if _alive(pid, marker):  # a recorded PID that now belongs to another program is left alone
            found.add(pid)
            found.update(descendants(pid))
    found.update(processes_mentioning(state.ray_tmp))
    found.discard(os.getpid())
    return sorted(found)


# --------------------------------------------------------------------------- start, stop


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One client at a time starts or stops the federation of a folder."""
    with open(folder / "lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure(idle_timeout: float | None = None, folder: Path | None = None, *, start: bool = True) -> FederationState | None:
    """The warm federation, started if none runs (and ``start``); a stale or outdated one is stopped first.

    ``idle_timeout`` applies to a federation started now (a running one keeps its own).
    Marks the federation as in use (its idle clock restarts).
    """
    folder = folder or state_dir()
    with _locked(folder):
        state = live_state(folder)
        if state is not None and state.fingerprint != fingerprint():
            _stop(folder)
            state = None
        if state is None:
            if read_state(folder) is not None:
                _stop(folder)  # a dead or half-dead federation: kill what it left
            if not start:
                return None
            state = _start(folder, DEFAULT_IDLE_TIMEOUT if idle_timeout is None else idle_timeout)
        touch(folder)
        return state


def running(folder: Path | None = None) -> FederationState | None:
    """The warm federation if one runs with this privfl (nothing is started or created)."""
    folder = folder or state_path()
    if not (folder / STATE_FILE).exists():
        return None
    state = live_state(folder)
    return state if state is not None and state.fingerprint == fingerprint() else None


def touch(folder: Path) -> None:
    """Restart the idle clock: a client is about to use the federation."""
    (folder / "lease").touch()


def _start(folder: Path, idle_timeout: float) -> FederationState:
    (folder / STATE_FILE).unlink(missing_ok=True)
    log = open(folder / "daemon.log", "wb")  # noqa: SIM115  handed to the daemon; one log per daemon
    with log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "privfl.simulations.warm_daemon", str(folder), str(idle_timeout), fingerprint()],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        state = read_state(folder)
        if state is not None and state.daemon_pid == daemon.pid:
            return state
        if daemon.poll() is not None:
            raise WarmFederationError(f"the warm federation's daemon exited with code {daemon.returncode}; "
                                      f"see {folder / 'daemon.log'}")
        time.sleep(0.05)
    _kill([daemon.pid, *descendants(daemon.pid)])
    raise WarmFederationError(f"the warm federation did not start within {START_TIMEOUT:.0f}s; "
                              f"see {folder / 'daemon.log'}")


def stop(folder: Path | None = None) -> bool:
    """Stop the warm federation of ``folder`` and every process it started; False when none was there."""
    folder = folder or state_dir()
    with _locked(folder):
        return _stop(folder)


def _stop(folder: Path, grace: float = 15.0) -> bool:
    state = read_state(folder)
    if state is None:
        return False
    everything = pids(folder)
    if _alive(state.daemon_pid, str(folder)):  # the daemon stops its tree itself
        with suppress(ProcessLookupError):
            os.kill(state.daemon_pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _alive(state.daemon_pid, str(folder)):
            time.sleep(0.05)
    # Whatever is left (a daemon killed with -9 leaves its SuperLink and Ray behind): ours by PID, checked.
    _kill([*everything, *pids(folder)])
    with suppress(OSError):
        import shutil

        shutil.rmtree(state.ray_tmp, ignore_errors=True)
    (folder / STATE_FILE).unlink(missing_ok=True)
    return True


def _kill(victims: list[int]) -> None:
    for pid in victims:
        if pid != os.getpid():
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- what a client does per run


def client_env(state: FederationState, folder: Path, connection: str) -> dict[str, str]:
    """The environment for ``flwr run`` / ``flwr log`` against the warm SuperLink (its own FLWR_HOME)."""
    home = folder / "flwr-home"
    home.mkdir(exist_ok=True, mode=0o700)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{connection}"\n\n'
        f'[superlink.{connection}]\naddress = "{state.address}"\ninsecure = true\n', encoding="utf-8")
    env = dict(os.environ)
    env.update(FLWR_HOME=str(home), FLWR_DISABLE_UPDATE_CHECK="1", FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
               PYTHONUNBUFFERED="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def register(folder: Path, run_id: int) -> None:
    """Vouch for a run this user's privfl submitted: the daemon runs no other."""
    submitted = folder / "submitted"
    submitted.mkdir(exist_ok=True, mode=0o700)
    (submitted / str(run_id)).write_text(str(os.getpid()), encoding="utf-8")
    touch(folder)


def registered(folder: Path) -> set[int]:
    return {int(p.name) for p in (folder / "submitted").glob("[0-9]*")}


def active_runs(folder: Path) -> dict[int, int]:
    """Runs a standby is serving now: {process id: Flower run id} (alive ones only)."""
    found = {}
    for marker in (folder / "active").glob("[0-9]*"):
        pid = int(marker.name)
        if Path(f"/proc/{pid}").exists():
            with suppress(ValueError, OSError):
                found[pid] = int(marker.read_text(encoding="utf-8"))
    return found


class RunHandle:
    """Stands for the SuperLink process in the launcher's wait loop: alive while the federation is."""

    def __init__(self, state: FederationState, folder: Path, run_id: int | None = None) -> None:
        self.state, self.folder, self.run_id = state, folder, run_id
        self.pid = state.daemon_pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not _alive(self.state.daemon_pid, str(self.folder)):
            self.returncode = -1
        return self.returncode

    def app_pids(self) -> list[int]:
        return list(active_runs(self.folder))


def database(folder: Path) -> Path:
    return folder / "superlink.db"
