"""Run one experiment through Flower's simulation engine, start to finish, and clean up.

``flwr run`` on its own starts a *detached* local SuperLink on a fixed port and
leaves it running.  privfl instead starts its own SuperLink in simulation mode as a
child process on a free loopback port, submits the run to it with ``flwr run
--stream`` (so the command returns when the run ends), and stops the SuperLink (and
with it the Ray workers) by PID afterwards, whatever happened.  Flower state, logs
and the run's artefacts all land in the run directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from privfl.config import ExperimentConfig
from privfl.server import run_dir as artefacts

CONNECTION = "privfl-simulation"


class SimulationError(RuntimeError):
    """The simulation could not start or did not finish."""


@dataclass(frozen=True)
class SimulationResult:
    run_dir: Path
    history: dict


def project_root() -> Path:
    """The folder holding privfl's pyproject.toml: the Flower app that ``flwr run`` ships."""
    import privfl

    root = Path(privfl.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise SimulationError(
            f"no pyproject.toml next to {root}: privfl simulations run from a source checkout "
            "installed with `pip install -e .`"
        )
    return root


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def _write_toml(path: Path, values: dict) -> None:
    path.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items()), encoding="utf-8")


def _environment(flwr_home: Path, ray_tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(flwr_home),
        # Use the installed environment: otherwise the SuperLink runs `uv sync`, which
        # would download a CUDA torch of several GB (or fail offline).
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_DISABLE_UPDATE_CHECK="1",
        RAY_TMPDIR=str(ray_tmp),
        PYTHONUNBUFFERED="1",
    )
    bin_dir = str(Path(sys.executable).parent)  # flwr / flower-superlink of this environment
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


@contextmanager
def _superlink(env: dict[str, str], state_dir: Path, port: int) -> Iterator[subprocess.Popen]:
    log_file = state_dir / "superlink.log"
    command = [
        "flower-superlink", "--insecure", "--simulation", "--isolation", "subprocess",
        "--host", "127.0.0.1", "--port", str(port),
        "--disable-runtime-dependency-installation",
        "--database", str(state_dir / "superlink.db"),
        "--log-file", str(log_file),
    ]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        _wait_until_listening(process, port, log_file)
        yield process
    finally:
        _stop_group(process)


def _wait_until_listening(process: subprocess.Popen, port: int, log_file: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SimulationError(f"flower-superlink exited with code {process.returncode}; see {log_file}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise SimulationError(f"flower-superlink did not listen on port {port} within {timeout:.0f}s; see {log_file}")


def _stop_group(process: subprocess.Popen) -> None:
    """Stop the SuperLink and everything it started (ServerApp, simulation, Ray)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        except ProcessLookupError:
            pass
    # Ray workers may outlive the SuperLink in their own sessions; they are its group's
    # descendants only until they detach, so sweep the group once more.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_simulation(config: ExperimentConfig, *, log_to: Path | None = None, stream: bool = True) -> SimulationResult:
    """Run ``config`` as a whole federation on this machine; returns the run's history."""
    if not config.run_dir:
        config = config.replace(run_dir=str(artefacts.default_run_dir(config)))
    run_dir = Path(config.run_dir).resolve()
    if (run_dir / artefacts.HISTORY).exists():
        raise SimulationError(f"{run_dir} already holds a run; choose another run directory")
    config = config.replace(run_dir=str(run_dir))
    state_dir = run_dir / "flower"
    state_dir.mkdir(parents=True, exist_ok=True)
    ray_tmp = Path(tempfile.mkdtemp(prefix="privfl-ray-"))  # short: Ray's socket paths are length-limited
    port = _free_port()
    env = _environment(state_dir / "home", ray_tmp)
    (state_dir / "home").mkdir(exist_ok=True)
    (state_dir / "home" / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
        f"options.num-supernodes = {config.num_owners}\n"
        # One CPU per simulated client, so both cores of a small machine train at once.
        "options.backend.client-resources.num-cpus = 1\n"
        "options.backend.client-resources.num-gpus = 0.0\n",
        encoding="utf-8",
    )
    run_config = state_dir / "run-config.toml"
    _write_toml(run_config, config.to_mapping())

    log_path = log_to or run_dir / "simulation.log"
    try:
        with _superlink(env, state_dir, port), open(log_path, "w", encoding="utf-8") as log:
            command = ["flwr", "run", str(project_root()), CONNECTION, "--run-config", str(run_config), "--stream"]
            process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert process.stdout is not None
            for line in process.stdout:
                log.write(line)
                if stream:
                    sys.stdout.write(line)
                    sys.stdout.flush()
            code = process.wait()
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)

    history_file = run_dir / artefacts.HISTORY
    if code != 0 or not history_file.exists():
        raise SimulationError(f"the Flower run failed (exit code {code}); its log is {log_path}")
    history = json.loads(history_file.read_text(encoding="utf-8"))
    if len(history["rounds"]) < config.num_rounds + 1:  # round 0 is the initial evaluation
        raise SimulationError(f"the run stopped after round {len(history['rounds']) - 1}; see {log_path}")
    return SimulationResult(run_dir=run_dir, history=history)
