"""Run one experiment through Flower's simulation engine, start to finish, and clean up.

``flwr run`` on its own starts a *detached* local SuperLink on a fixed port and
leaves it running.  privfl instead starts its own SuperLink in simulation mode as a
child process on a free loopback port, submits the run to it with ``flwr run``, waits
until the ServerApp marks its history finished (or its process dies), and then stops
the SuperLink and everything below it (simulation process, Ray) by PID, whatever
happened.  Flower state, logs and the run's artefacts all land in the run directory.
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
from dataclasses import dataclass, field
from pathlib import Path

from privfl import settings
from privfl.app_bundle import export_app
from privfl.config import ExperimentConfig
from privfl.privacy.audit import RunAudit, audit_run
from privfl.privacy.ledger import VerificationReport
from privfl.privacy.ledger.store import checkpoint
from privfl.privacy.policy import LEDGER_FILE
from privfl.privacy.report import write_run_report
from privfl.server import run_dir as artefacts
from privfl.server.history import load_history, read_round_log
from privfl.simulations.processes import command_line, descendants

CONNECTION = "privfl-simulation"


class SimulationError(RuntimeError):
    """The simulation could not start or did not finish."""


@dataclass(frozen=True)
class SimulationResult:
    run_dir: Path
    history: dict
    audit: RunAudit | None = None  # every ledger verified and cross-checked after the run (DP runs)
    reports: list[Path] = field(default_factory=list)  # the privacy budget report, in every format

    @property
    def ledgers(self) -> list[VerificationReport]:
        return self.audit.reports if self.audit is not None else []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        _wait_until_listening(process, port, log_file)
        yield process
    finally:
        _stop_tree(process)


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


def _stop_tree(process: subprocess.Popen) -> None:
    """Stop the SuperLink and everything it started (ServerApp, simulation, Ray)."""
    tree = descendants(process.pid)
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    for pid in [*tree, *descendants(process.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class RoundProgress:
    """Prints one line per finished round, read from the round log the ServerApp appends (history.jsonl)."""

    def __init__(self, history_file: Path, num_rounds: int, *, quiet: bool) -> None:
        self.history_file, self.num_rounds, self.quiet = history_file, num_rounds, quiet
        self.shown = 0
        self._offset = 0
        self._rounds: dict[int, dict] = {}
        self._central: bool | None = None

    def poll(self) -> None:
        logged, self._offset = read_round_log(self.history_file, self._offset)
        self._rounds.update(logged)
        if not self._rounds:
            return
        if self._central is None and 0 in self._rounds:  # the initial evaluation says whether there is a test set
            self._central = self._rounds[0].get("test_accuracy") is not None
        finished = _status(self.history_file) == "finished"
        for number in sorted(self._rounds):
            record = self._rounds[number]
            if number <= self.shown:
                continue
            settled = record.get("test_accuracy") is not None if self._central else (
                finished or any(r > number for r in self._rounds))
            if not settled:
                break
            self.shown = number
            if not self.quiet:
                print(self._line(record), flush=True)

    def _line(self, record: dict) -> str:
        epsilons = [r["epsilon"] for r in record.get("receipts", []) if r["status"] == "trained"]
        eps_text = f", max owner epsilon {max(epsilons):.2f}" if epsilons and "inf" not in epsilons else ""
        refused = f", {len(record['refused'])} refused" if record.get("refused") else ""
        failed = f", {len(record['failures'])} failed" if record.get("failures") else ""
        accuracy = record.get("test_accuracy")
        evaluation = record.get("federated_evaluation") or {}
        if accuracy is not None:
            score = f"test accuracy {accuracy:.3f}"
        elif evaluation.get("accuracy") is not None:
            score = f"accuracy at the owners {evaluation['accuracy']:.3f}"
        else:
            score = "trained"
        return (f"  round {record['round']:>3}/{self.num_rounds}: {score}, "
                f"{len(record.get('participants', []))} owners trained{refused}{failed}{eps_text}")


def run_simulation(config: ExperimentConfig, *, log_to: Path | None = None, stream: bool = True) -> SimulationResult:
    """Run ``config`` as a whole federation on this machine; returns the run's history."""
    if config.resume:
        config = resumable(config)
    else:
        config = artefacts.settle(config)
    where = artefacts.layout(config)
    run_dir = where.run_dir
    if where.history.exists() and not config.resume:
        raise SimulationError(f"{run_dir} already holds a run; choose another run directory")
    state_dir = run_dir / "flower"
    if config.resume:  # a fresh SuperLink (state and log) for the new Flower run; the experiment's files stay
        state_dir = run_dir / f"flower-resumed-{_resumes(run_dir)}"
    state_dir.mkdir(parents=True, exist_ok=True)
    ray_tmp = Path(tempfile.mkdtemp(prefix="privfl-ray-"))  # short: Ray's socket paths are length-limited
    port = _free_port()
    env = _environment(state_dir / "home", ray_tmp)
    (state_dir / "home").mkdir(exist_ok=True)
    (state_dir / "home" / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n',
        encoding="utf-8",
    )
    run_config = state_dir / "run-config.toml"
    run_config.write_text(settings.toml_dumps(config.to_mapping()), encoding="utf-8")
    app = export_app(state_dir / "app")

    log_path = log_to or run_dir / "simulation.log"
    verb = "resuming" if config.resume else "running"
    print(f"privfl: {verb} '{config.experiment}' ({config.num_owners or 'all'} owners, {config.num_rounds} rounds, "
          f"{_guarantee(config)}) in {run_dir}", flush=True)
    try:
        with _superlink(env, state_dir, port) as superlink:
            run_id = _submit(env, app, run_config, _num_owners(config))
            streamer = _flwr(env, "log", str(run_id), CONNECTION, "--stream") if stream else None
            log_fetch = None
            try:
                _wait_for_run(superlink, where.history,
                              RoundProgress(where.history, config.num_rounds, quiet=stream), log_path)
            finally:
                if streamer is not None:
                    streamer.terminate()
                # The SuperLink serves the run's log while the ledgers are audited and the report written.
                log_fetch = _flwr(env, "log", str(run_id), CONNECTION, "--show", capture=True)
            try:
                result = _settle_run(config, where)
            finally:
                _save_log(log_fetch, log_path)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return result


def _settle_run(config: ExperimentConfig, where: artefacts.Layout) -> SimulationResult:
    """After the run: each ledger one file again, every ledger audited once, the report from that audit."""
    history = load_history(where.history)
    checkpoint_ledgers(where, history)
    audit = audit_run(where.run_dir) if config.dp or config.owner_dp else None
    reports = write_run_report(where.run_dir, cross_checks=audit.problems) if audit is not None else []
    return SimulationResult(run_dir=where.run_dir, history=history, audit=audit, reports=reports)


def _guarantee(config: ExperimentConfig) -> str:
    units = [*(["DP-SGD (record-level)"] if config.dp else []),
             *([f"DP-FedAvg (owner-level{', SecAgg+' if config.secure_aggregation else ''})"] if config.owner_dp else [])]
    return " + ".join(units) or "non-private"


def resumable(config: ExperimentConfig) -> ExperimentConfig:
    """The experiment recorded in run-dir, to resume (its settings, with num-rounds as asked)."""
    run_dir = Path(config.run_dir).resolve()
    try:
        recorded = json.loads((run_dir / artefacts.CONFIG).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SimulationError(f"{run_dir} holds no experiment to resume ({artefacts.CONFIG} is missing)") from None
    if not (run_dir / "checkpoints" / "state.json").exists():
        raise SimulationError(f"{run_dir} has no checkpoint: no round was completed, so there is nothing to resume")
    return ExperimentConfig.from_mapping({**recorded, "resume": True, "num-rounds": config.num_rounds},
                                         source=str(run_dir / artefacts.CONFIG))


def _resumes(run_dir: Path) -> int:
    return 1 + sum(1 for p in run_dir.glob("flower-resumed-*"))


def _num_owners(config: ExperimentConfig) -> int:
    from privfl.simulations.federation import simulated_federation

    return len(simulated_federation(config).owner_ids)


def checkpoint_ledgers(where: artefacts.Layout, history: dict) -> None:
    """Fold every ledger's WAL back into its file: simulated owners' worker processes are killed, not closed.

    A ledger at rest is then one file (a copy of the .db alone is the whole ledger).
    """
    paths = [where.federation_ledger, where.registry,
             *(where.owner_dir(o) / LEDGER_FILE for o in history.get("owners", {}))]
    for path in paths:
        if path.exists():
            checkpoint(path)


def _flwr(env: dict[str, str], *args: str, capture: bool = False) -> subprocess.Popen:
    return subprocess.Popen(["flwr", *args], env=env, text=True,
                            stdout=subprocess.PIPE if capture else None,
                            stderr=subprocess.STDOUT if capture else None)


def _client_resources() -> str:
    """One CPU per simulated client, so both cores of a small machine train at once.

    Ray hides GPUs from workers that ask for none: on a CUDA machine every client asks
    for a quarter of one, so up to four share it and train on ``cuda``.
    """
    import torch

    gpus = 0.25 if torch.cuda.is_available() else 0.0
    return f"client-resources-num-cpus=1 client-resources-num-gpus={gpus}"


def _submit(env: dict[str, str], app: Path, run_config: Path, num_owners: int) -> int:
    """Submit the run to the SuperLink; returns Flower's run id."""
    process = _flwr(env, "run", str(app), CONNECTION, "--run-config", str(run_config),
                    "--federation-config", f"num-supernodes={num_owners} {_client_resources()}",
                    "--format", "json", capture=True)
    output, _ = process.communicate(timeout=120)
    try:
        reply = json.loads(output[output.index("{"):])
        return int(reply["run-id"])
    except (ValueError, KeyError) as err:
        raise SimulationError(f"flwr run did not start the run ({err}):\n{output[-2000:]}") from None


def _save_log(process: subprocess.Popen, log_path: Path) -> None:
    """The run's whole Flower log (ServerApp and ClientApps), as the SuperLink kept it (``flwr log --show``)."""
    try:
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        output = "(flwr log timed out)\n"
    log_path.write_text(output, encoding="utf-8")


def _status(history_file: Path) -> str | None:
    try:
        return json.loads(history_file.read_text(encoding="utf-8")).get("status")
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _app_running(superlink: subprocess.Popen) -> bool:
    """Whether the SuperLink's simulation process (ServerApp + ClientApps) is alive."""
    return any("flwr-simulation" in command_line(pid) for pid in descendants(superlink.pid))


def _wait_for_run(superlink: subprocess.Popen, history_file: Path, progress: RoundProgress, log_path: Path,
                  start_timeout: float = 180) -> None:
    """Block until the ServerApp marks the history finished; fail if it dies first.

    ``flwr run --stream`` is no completion signal: its log stream can end while the
    run goes on.  The ServerApp's own ``status = finished`` and the simulation
    process's life are.
    """
    started, seen_app = time.monotonic(), False
    while True:
        progress.poll()
        if _status(history_file) == "finished":
            progress.poll()
            return
        if superlink.poll() is not None:
            raise SimulationError(f"flower-superlink exited with code {superlink.returncode}; see {log_path}")
        if _app_running(superlink):
            seen_app = True
        elif seen_app and _status(history_file) != "finished":
            raise SimulationError(f"the run ended before it finished; its Flower log is {log_path}")
        elif not seen_app and time.monotonic() - started > start_timeout:
            raise SimulationError(f"the simulation did not start within {start_timeout:.0f}s; see {log_path}")
        time.sleep(0.5)
