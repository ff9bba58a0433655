"""Run experiments through Flower's simulation engine, start to finish, and clean up.

``flwr run`` on its own starts a *detached* local SuperLink on a fixed port and
leaves it running.  privfl instead starts its own SuperLink in simulation mode as a
child process on a free loopback port, submits each run to it with ``flwr run``, waits
until the ServerApp marks its history finished (or its process dies), and then stops
the SuperLink and everything below it (simulation process, Ray) by PID, whatever
happened.  Flower state, logs and the run's artefacts all land in the run directory.

Where Flower runs its ClientApps (``ray_address``):

- ``None`` (the default): on this machine.  Flower's simulation process starts a
  one-machine Ray, as under ``flwr run``, and it is stopped with the rest.  With
  ``ray_head=True`` (or :data:`OWN_RAY_HEAD`) the launcher instead starts a Ray head of
  its own (``ray start --head --block`` in a short temporary folder) at the same time as
  the SuperLink, and Flower's simulation process connects to it through ``RAY_ADDRESS``.
- ``"HOST:PORT"``: an existing Ray cluster (``ray start --head`` on one machine,
  ``ray start --address HOST:PORT`` on the others).  Flower's simulation process
  connects to it through ``RAY_ADDRESS`` and places one actor per
  ``client_cpus`` CPUs of the whole cluster; the cluster is left running.  Every
  node needs the same privfl installed and the run and federation folders at the
  same paths (a shared filesystem): see docs/scaling.md.

What the launcher does about the fixed cost of a run (measured in docs/benchmarks.md,
"Fixed cost"):

- the SuperLink (and a Ray head of the launcher's own, if asked for) start first, as child processes, while this process
  imports privfl, checks the experiments (``check``) and writes the app;
- Ray's workers import privfl's ClientApp, Opacus and the data loaders as they start
  (``RAY_preload_python_modules``), i.e. while the ServerApp starts, instead of when
  the first message reaches them;
- several experiments (``privfl simulate --baseline``) run one after another on the
  same SuperLink and Ray head; each run's ledgers are audited and its report written
  while the next run goes on;
- while a run goes on, the report's heavy modules are imported in a thread;
- after the last run, Flower's log is fetched and the processes are stopped in the
  background while the ledgers are audited and the report is written.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from privfl.server import run_dir as artefacts
from privfl.simulations import warm as warm_federation
from privfl.simulations.processes import command_line, descendants, processes_mentioning

from privfl import settings
from privfl.app_bundle import export_app
from privfl.config import ExperimentConfig

if TYPE_CHECKING:  # the audit, the report and the history pull in torch, Opacus and matplotlib: imported late
    from privfl.privacy.audit import RunAudit
    from privfl.privacy.ledger import VerificationReport

CONNECTION = "privfl-simulation"
# Imported by every Ray worker as it starts, before Flower hands it a message: the
# ClientApp (torch, Flower, privfl), Opacus, the PLD accountant and the data loaders.
# A module that fails to import is logged by Ray and skipped; the ClientApp then
# imports it on first use as before.
WORKER_PRELOAD = ("privfl.client.app", "privfl.client.training", "opacus", "privfl.privacy.accountants.pld",
                  "privfl.simulations.federation", "sklearn.datasets", "sklearn.model_selection")
# What the report and the audit import late (best effort: a name that is gone is skipped).
# Start a one-machine Ray head with the SuperLink (True), or let Flower's simulation process start Ray
# itself as it does under `flwr run` (False).  Measured in docs/benchmarks.md ("Fixed cost").
OWN_RAY_HEAD = False
REPORT_PRELOAD = ("privfl.privacy.audit", "privfl.privacy.report", "privfl.privacy.report.run",
                  "privfl.privacy.report.build", "privfl.privacy.report.plots", "privfl.privacy.report.pdf_report",
                  "privfl.privacy.report.html_report", "privfl.privacy.accountants.opacus_backed",
                  "privfl.privacy.accountants.pld", "matplotlib.backends.backend_agg",
                  "matplotlib.backends.backend_pdf", "fontTools.subset", "jinja2")


class SimulationError(RuntimeError):
    """The simulation could not start or did not finish."""


@dataclass(frozen=True)
class SimulationResult:
    run_dir: Path
    history: dict
    audit: RunAudit | None = None  # every ledger verified and cross-checked after the run (DP runs)
    reports: list[Path] = field(default_factory=list)  # the privacy budget report, in every format
    # When each step of the launcher ended, in seconds since it started (the same clock for every
    # run of one call): superlink_listening, ray_ready, checked, submitted, finished, audited, ...
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ledgers(self) -> list[VerificationReport]:
        return self.audit.reports if self.audit is not None else []


@dataclass(frozen=True)
class ClientResources:
    """What each simulated client (one Ray actor) reserves: Flower's ``client-resources-num-*``."""

    num_cpus: float = 1.0
    num_gpus: float | None = None  # None: a quarter of a GPU where this machine has CUDA, else none

    def federation_config(self) -> str:
        gpus = self.num_gpus if self.num_gpus is not None else _local_gpu_share()
        return f"client-resources-num-cpus={_number(self.num_cpus)} client-resources-num-gpus={_number(gpus)}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _local_gpu_share() -> float:
    """Ray hides GPUs from workers that ask for none: on a CUDA machine every client asks
    for a quarter of one, so up to four share it and train on ``cuda``."""
    import torch

    return 0.25 if torch.cuda.is_available() else 0.0


class _Clock:
    def __init__(self) -> None:
        self.start = time.monotonic()
        self.marks: dict[str, float] = {}

    def mark(self, label: str) -> None:
        self.marks[label] = round(time.monotonic() - self.start, 3)


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


def _simulation_environment(flwr_home: Path, ray_tmp: Path, client_cpus: float = 1.0) -> dict[str, str]:
    """:func:`_environment`, plus what Ray needs here (for a Ray head of the launcher's own, and for the Ray
    that Flower's simulation process starts or joins): workers that preload the ClientApp, with as many
    torch threads as CPUs they reserve; no spare workers; no usage report."""
    env = _environment(flwr_home, ray_tmp)
    env.setdefault("RAY_preload_python_modules", ",".join(WORKER_PRELOAD))
    # Ray tells a worker its CPUs (OMP_NUM_THREADS) only after the preloaded torch has sized its thread
    # pool to every core; with two workers on two cores that oversubscribes them (rounds 2-4x slower
    # here).  The job's runtime environment reaches the workers' environment before they start.
    threads = str(max(1, int(client_cpus)))
    job = json.loads(env.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    job.setdefault("runtime_env", {}).setdefault("env_vars", {}).setdefault("OMP_NUM_THREADS", threads)
    env["RAY_JOB_CONFIG_JSON_ENV_VAR"] = json.dumps(job)
    # Ray starts spare workers when a driver connects; they cannot serve Flower's actors (which get
    # workers of their own) and, preloading privfl, would each burn seconds of CPU for nothing.
    env.setdefault("RAY_prestart_worker_first_driver", "0")
    env.setdefault("RAY_enable_worker_prestart", "0")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # and no FutureWarning in every log
    return env


def _start_superlink(env: dict[str, str], state_dir: Path, port: int, *, isolation: str = "subprocess",
                     extra: Sequence[str] = (), death_signal: int | None = None) -> subprocess.Popen:
    """``isolation="process"``: the SuperLink starts no simulation process; a warm federation's daemon
    takes its runs (:mod:`privfl.simulations.warm_daemon`)."""
    command = [
        "flower-superlink", "--insecure", "--simulation", "--isolation", isolation,
        "--host", "127.0.0.1", "--port", str(port),
        "--disable-runtime-dependency-installation",
        "--database", str(state_dir / "superlink.db"),
        "--log-file", str(state_dir / "superlink.log"), *extra,
    ]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            preexec_fn=_dies_with_parent(death_signal))


def _dies_with_parent(death_signal: int | None) -> Callable[[], None] | None:
    """A child that gets ``death_signal`` when the process that started it dies (Linux ``PR_SET_PDEATHSIG``):
    a warm federation's daemon killed with -9 does not leave its SuperLink and Ray head running."""
    if death_signal is None or not sys.platform.startswith("linux"):
        return None

    def arm() -> None:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, death_signal)  # PR_SET_PDEATHSIG = 1

    return arm


@contextmanager
def _superlink(env: dict[str, str], state_dir: Path, port: int) -> Iterator[subprocess.Popen]:
    """A SuperLink in simulation mode, listening on ``port``; stopped with its tree on exit."""
    process = _start_superlink(env, state_dir, port)
    try:
        _wait_until_listening(process, port, state_dir / "superlink.log")
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
        time.sleep(0.05)
    raise SimulationError(f"flower-superlink did not listen on port {port} within {timeout:.0f}s; see {log_file}")


def _ray_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _start_ray_head(env: dict[str, str], ray_tmp: Path, log_file: Path,
                    death_signal: int | None = None) -> tuple[subprocess.Popen, str]:
    """A one-machine Ray cluster for this launcher (``ray start --head --block``); returns it and its address.

    ``--block`` keeps ``ray start`` as the parent of Ray's daemons, and the daemons as the
    parents of the workers, so the whole cluster is one process tree to stop.  Every port is
    a free one, so concurrent launchers (and other Ray clusters) do not collide.
    """
    port = _free_port()
    command = [
        "ray", "start", "--head", "--block", f"--port={port}", f"--num-cpus={_ray_cpus()}",
        f"--temp-dir={ray_tmp}", "--include-dashboard=false", "--disable-usage-stats",
        f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
    ]
    with open(log_file, "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   preexec_fn=_dies_with_parent(death_signal))
    return process, f"127.0.0.1:{port}"


def _wait_for_ray(process: subprocess.Popen, log_file: Path, timeout: float = 120) -> None:
    """Until ``ray start`` reports the runtime started (GCS, raylet and agents up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if b"Ray runtime started" in log_file.read_bytes():
                return
        except FileNotFoundError:
            pass
        if process.poll() is not None:
            raise SimulationError(f"the Ray head exited with code {process.returncode}; see {log_file}")
        time.sleep(0.05)
    raise SimulationError(f"the Ray head did not start within {timeout:.0f}s; see {log_file}")


def _note_ray_ready(head: subprocess.Popen, log_file: Path, clock: _Clock) -> None:
    with suppress(SimulationError):
        _wait_for_ray(head, log_file)
        clock.mark("ray_ready")


def _stop_tree(process: subprocess.Popen) -> None:
    """Stop a process and everything it started (SuperLink: ServerApp, simulation, Ray; a Ray head: its daemons)."""
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


def _stop_ray_head(process: subprocess.Popen, ray_tmp: Path) -> None:
    """Kill a Ray head of ours outright: it keeps no state worth a graceful stop (its folder is deleted)."""
    for pid in [process.pid, *descendants(process.pid)]:
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    _kill_mentioning(str(ray_tmp))  # anything that left the tree (a daemon mid-start)


def _kill_mentioning(text: str) -> None:
    """SIGKILL what is left of a Ray head of ours: its processes name its own temporary folder."""
    for pid in processes_mentioning(text):
        if pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


class RoundProgress:
    """Prints one line per finished round, read from the round log the ServerApp appends (history.jsonl)."""

    def __init__(self, history_file: Path, num_rounds: int, *, quiet: bool) -> None:
        self.history_file, self.num_rounds, self.quiet = history_file, num_rounds, quiet
        self.shown = 0
        self.logged: set[int] = set()  # rounds that have a line in the log
        self._offset = 0
        self._rounds: dict[int, dict] = {}
        self._central: bool | None = None

    def poll(self) -> None:
        from privfl.server.history import read_round_log

        logged, self._offset = read_round_log(self.history_file, self._offset)
        self._rounds.update(logged)
        self.logged.update(logged)
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
        eps_text = ""
        for unit, label in (("record", "max owner epsilon"), ("owner", "owner-level epsilon")):
            epsilons = [r["epsilon"] for r in record.get("receipts", []) if r["status"] == "trained"
                        and r.get("privacy_unit", "record") == unit and isinstance(r["epsilon"], (int, float))]
            eps_text += f", {label} {max(epsilons):.2f}" if epsilons else ""
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


def run_simulation(config: ExperimentConfig, *, log_to: Path | None = None, stream: bool = True,
                   ray_address: str | None = None, client_resources: ClientResources | None = None,
                   save_flower_log: bool = True, warm: float | bool | None = False) -> SimulationResult:
    """Run ``config`` as a whole federation; returns the run's history (see :func:`run_simulations`)."""
    return run_simulations([config], log_to=log_to, stream=stream, ray_address=ray_address,
                           client_resources=client_resources, save_flower_log=save_flower_log, warm=warm)[0]


def run_simulations(configs: Sequence[ExperimentConfig], *, log_to: Path | None = None, stream: bool = True,
                    ray_address: str | None = None, client_resources: ClientResources | None = None,
                    save_flower_log: bool = True, check: Callable[[ExperimentConfig], None] | None = None,
                    ray_head: bool | None = None, warm: float | bool | None = False) -> list[SimulationResult]:
    """Run ``configs`` one after another on one SuperLink (and one Ray cluster); one result each.

    ``check(config)`` (e.g. the pre-flight checks) runs for every experiment while the
    SuperLink and Ray start; if it raises, nothing is submitted.  ``log_to``: where the
    first run's Flower log goes (default ``<run-dir>/simulation.log``; later runs write
    theirs in their own run directory).  ``ray_address``: an existing Ray cluster to run
    the ClientApps on (default: a Ray head of this launcher's own, on this machine).
    ``save_flower_log``: fetch each run's Flower log from the SuperLink (``flwr log``,
    about 1 s, overlapped with the audit).  ``ray_head``: without ``ray_address``, start
    a Ray head of the launcher's own with the SuperLink (True) or let Flower's simulation
    process start Ray when it gets there (False); default :data:`OWN_RAY_HEAD`.
    ``warm``: run on the warm federation (:mod:`privfl.simulations.warm`) instead of a SuperLink and Ray of
    this call's own: a number starts one if none runs, with that idle timeout in seconds; ``None`` uses
    one only if it already runs; ``False`` (the default) never.  Experiments that need this process's
    environment (a model module of the user's, a key passphrase variable) or another Ray cluster always
    run cold.
    """
    if not configs:
        return []
    clock = _Clock()
    configs = [resumable(c) if c.resume else artefacts.settle(c) for c in configs]
    for config in configs:
        if artefacts.layout(config).history.exists() and not config.resume:
            raise SimulationError(f"{config.run_dir} already holds a run; choose another run directory")
    if len({c.run_dir for c in configs}) != len(configs):
        raise SimulationError("each experiment needs a run directory of its own")
    first_dir = Path(configs[0].run_dir)
    state_dir = first_dir / "flower"  # the SuperLink's state and log, the app, Ray's log: with the first run
    if configs[0].resume:  # a fresh SuperLink (state and log) for the new Flower run; the experiment's files stay
        state_dir = first_dir / f"flower-resumed-{_resumes(first_dir)}"
    (state_dir / "home").mkdir(parents=True, exist_ok=True)
    ray_tmp = Path(tempfile.mkdtemp(prefix="privfl-ray-"))  # short: Ray's socket paths are length-limited
    port = _free_port()
    resources = client_resources or ClientResources()
    env = _simulation_environment(state_dir / "home", ray_tmp, resources.num_cpus)
    (state_dir / "home" / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n',
        encoding="utf-8",
    )
    head: subprocess.Popen | None = None
    superlink: subprocess.Popen | None = None
    federation: warm_federation.FederationState | None = None
    warming = _warm_federation(configs, warm, ray_address, ray_head)  # started while the experiments are checked
    owned: subprocess.Popen | None = None  # the SuperLink this call started (and stops); none on a warm federation
    stopper: threading.Thread | None = None
    settling: list[threading.Thread] = []
    results: dict[int, SimulationResult] = {}
    run_marks: dict[int, _Clock] = {}
    errors: list[BaseException] = []
    ours: set[int] = set()  # the Flower runs this launcher submitted; any other run on its SuperLink is foreign
    try:
        # Start the SuperLink and the Ray head at once, then do this process's own work while they start.
        if warming is None:
            if ray_address:
                env["RAY_ADDRESS"] = ray_address
            elif OWN_RAY_HEAD if ray_head is None else ray_head:
                head, env["RAY_ADDRESS"] = _start_ray_head(env, ray_tmp, state_dir / "ray-head.log")
            superlink = owned = _start_superlink(env, state_dir, port)
            database = state_dir / "superlink.db"
        if check is not None:
            for config in configs:
                check(config)
            clock.mark("checked")
        from privfl.simulations.owners import enrolment_refusal

        for config in configs:  # an owner whose ledger is gone: refused here, not by a traceback in a Flower process
            refusal = None if config.deployment else enrolment_refusal(artefacts.layout(config))
            if refusal:
                raise SimulationError(refusal)
        if warming is not None:
            federation = warming.result()
            if federation is None:  # it stopped in the meantime: a SuperLink of this call's own after all
                superlink = owned = _start_superlink(env, state_dir, port)
                database = state_dir / "superlink.db"
            else:
                warm_dir = warm_federation.state_dir()
                port, env = federation.port, warm_federation.client_env(federation, warm_dir, CONNECTION)
                superlink = warm_federation.RunHandle(federation, warm_dir)
                database = warm_federation.database(warm_dir)
        app = export_app(state_dir / "app")
        federation_config = resources.federation_config()
        owners = [_num_owners(c) for c in configs]
        if federation is None:
            _wait_until_listening(superlink, port, state_dir / "superlink.log")
            clock.mark("superlink_listening")
            print(UNAUTHENTICATED_NOTE.format(port=port), flush=True)
        else:
            clock.mark("superlink_listening")
            print(WARM_NOTE.format(port=port, folder=warm_federation.state_dir()), flush=True)
        # No waiting for Ray: Flower's simulation process connects to it seconds after the submission
        # (ray.init waits for a head that is still starting); the wait below only notices a head that died.
        if head is not None:
            threading.Thread(target=_note_ray_ready, args=(head, state_dir / "ray-head.log", clock),
                             name="privfl-ray-ready", daemon=True).start()
        for index, config in enumerate(configs):
            last = index == len(configs) - 1
            log_path = (log_to if index == 0 and log_to else None) or Path(config.run_dir) / "simulation.log"
            where = artefacts.layout(config)
            where.run_dir.mkdir(parents=True, exist_ok=True)
            run_config = state_dir / ("run-config.toml" if index == 0 else f"run-config-{index + 1}.toml")
            run_config.write_text(settings.toml_dumps(config.to_mapping()), encoding="utf-8")
            _announce(config)
            marks = run_marks[index] = _Clock()
            marks.start = clock.start
            before = set(_app_pids(superlink))
            run_id = _submit(env, app, run_config, owners[index], federation_config)
            if federation is not None:  # the warm federation's daemon runs only the runs a privfl vouched for
                warm_federation.register(warm_federation.state_dir(), run_id)
            ours.add(run_id)
            marks.mark("submitted")
            warm = _warm_report_imports() if index == 0 else None
            streamer = _flwr(env, "log", str(run_id), CONNECTION, "--stream") if stream else None
            try:
                _wait_for_run(superlink, where.history, RoundProgress(where.history, config.num_rounds, quiet=stream),
                              log_path, before=before, marks=marks, head=head,
                              foreign=lambda: _foreign_runs(database, ours, federation))
            except BaseException:
                if streamer is not None:
                    streamer.terminate()
                if save_flower_log:
                    _save_log(_flwr(env, "log", str(run_id), CONNECTION, "--show", capture=True), log_path)
                raise
            marks.mark("finished")
            if streamer is not None:
                streamer.terminate()
            # The SuperLink serves the run's log while the ledgers are audited and the report written.
            log_fetch = _flwr(env, "log", str(run_id), CONNECTION, "--show", capture=True) \
                if save_flower_log else None
            if last:  # nothing more to run: fetch the log, then stop every process, while this one settles
                stopper = threading.Thread(target=_finish_processes, name="privfl-stop",
                                           args=(log_fetch, log_path, owned, head, ray_tmp, marks), daemon=True)
                stopper.start()
                if warm is not None:
                    warm.join()
                results[index] = _settle_run(config, where, marks)
            else:  # the next run starts now; this one is audited and reported meanwhile
                thread = threading.Thread(target=_settle_in_background, name=f"privfl-settle-{index}",
                                          args=(config, where, marks, log_fetch, log_path, results, index, errors),
                                          daemon=True)
                thread.start()
                settling.append(thread)
        for thread in settling:
            thread.join()
        if errors:
            raise errors[0]
    finally:
        if stopper is not None:
            stopper.join()
        else:
            _stop_processes(owned, head, ray_tmp)
        for thread in settling:
            thread.join()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    clock.mark("done")
    return [_with_timings(results[i], {**clock.marks, **run_marks[i].marks}) for i in range(len(configs))]


UNAUTHENTICATED_NOTE = (
    "privfl: the simulation's SuperLink listens on 127.0.0.1:{port} and Flower 1.42 does not authenticate its "
    "Control API: any local user can submit a run to it, whose code would run as you. privfl stops the simulation "
    "and exits non-zero when a run it did not submit appears (checked every 0.2 s; on a multi-user host, run "
    "simulations in a container or a network namespace of their own).")


WARM_NOTE = (
    "privfl: on the warm federation (SuperLink 127.0.0.1:{port}, state in {folder}; `privfl federation stop` "
    "stops it). Its daemon runs only runs that a privfl of yours submitted and vouched for in that folder.")


def _warm_federation(configs: Sequence[ExperimentConfig], warm: float | bool | None, ray_address: str | None,
                     ray_head: bool | None) -> concurrent.futures.Future | None:
    """The warm federation to run ``configs`` on, being reached (or started) in a thread; None for a cold run
    (see :func:`run_simulations`).  Its result is None if the federation stopped in the meantime."""
    if warm is False or ray_address or ray_head:
        return None
    if any(":" in c.model or c.coordinator_key_passphrase_env for c in configs):
        return None  # the daemon does not have this process's PYTHONPATH and environment
    if warm is None and warm_federation.running() is None:  # without --keep-warm: only one that already runs
        return None
    idle = None if warm is None or warm is True else float(warm)
    future: concurrent.futures.Future = concurrent.futures.Future()

    def reach() -> None:
        try:
            future.set_result(warm_federation.ensure(idle, start=warm is not None))
        except BaseException as err:  # noqa: BLE001  raised where the result is read
            future.set_exception(err)

    threading.Thread(target=reach, name="privfl-warm-federation", daemon=True).start()
    return future


class ForeignRunError(SimulationError):
    """A run that this launcher did not submit appeared on its SuperLink."""


def _foreign_runs(database: Path, ours: set[int], federation: object | None = None) -> list[int]:
    """Runs in the SuperLink's state that this launcher did not submit (none while the state cannot be read).

    Why: Flower 1.42's open-source SuperLink accepts runs (``flwr run``) from anyone who reaches
    its port, and a simulation's SuperLink listens on loopback, where every local user reaches it.
    """
    if not database.exists():  # connecting would create it under the starting SuperLink
        return []
    try:
        with closing(sqlite3.connect(database, timeout=0.5)) as db:
            rows = db.execute("SELECT run_id FROM run").fetchall()
    except sqlite3.Error:
        return []
    # Flower stores its unsigned 64-bit run ids as signed SQLite integers.
    runs = {int(row[0]) % (1 << 64) for row in rows if row[0] is not None}
    if federation is not None:  # a warm federation also holds the runs of other privfl calls of this user
        ours = ours | warm_federation.registered(warm_federation.state_dir())
    return sorted(runs - ours)


def _refuse_foreign(runs: list[int]) -> None:
    if runs:
        raise ForeignRunError(
            f"run(s) {', '.join(map(str, runs))} were submitted to this simulation's SuperLink by someone else "
            "(another local user can reach its loopback port; Flower 1.42 does not authenticate `flwr run`): the "
            "simulation was stopped, its SuperLink and every process it started (theirs too) killed. Their code "
            "may have started as your user before it was caught: check this host.")


def _with_timings(result: SimulationResult, timings: dict[str, float]) -> SimulationResult:
    return dataclasses.replace(result, timings=timings)


def _announce(config: ExperimentConfig) -> None:
    verb = "resuming" if config.resume else "running"
    print(f"privfl: {verb} '{config.experiment}' ({config.num_owners or 'all'} owners, {config.num_rounds} rounds, "
          f"{_guarantee(config)}) in {config.run_dir}", flush=True)


def _finish_processes(log_fetch: subprocess.Popen | None, log_path: Path, superlink: subprocess.Popen,
                      head: subprocess.Popen | None, ray_tmp: Path, marks: _Clock) -> None:
    """After the last run: keep Flower's log, then stop the SuperLink and the Ray head (in a thread)."""
    try:
        if log_fetch is not None:
            _save_log(log_fetch, log_path)
            marks.mark("flower_log_saved")
    finally:
        _stop_processes(superlink, head, ray_tmp)
        marks.mark("processes_stopped")


def _stop_processes(superlink: subprocess.Popen | None, head: subprocess.Popen | None, ray_tmp: Path) -> None:
    """Stop the SuperLink's tree, a Ray head of ours, and what is left of a Ray that Flower started (its
    processes name our temporary folder)."""
    if superlink is not None:
        _stop_tree(superlink)
    if head is not None:
        _stop_ray_head(head, ray_tmp)
    _kill_mentioning(str(ray_tmp))


def _settle_in_background(config: ExperimentConfig, where: artefacts.Layout, marks: _Clock,
                          log_fetch: subprocess.Popen | None, log_path: Path, results: dict[int, SimulationResult],
                          index: int, errors: list[BaseException]) -> None:
    try:
        try:
            results[index] = _settle_run(config, where, marks)
        finally:
            if log_fetch is not None:
                _save_log(log_fetch, log_path)
    except BaseException as err:  # noqa: BLE001  re-raised by the caller
        errors.append(err)


def _settle_run(config: ExperimentConfig, where: artefacts.Layout, marks: _Clock | None = None) -> SimulationResult:
    """After the run: each ledger one file again, every ledger audited once, the report from that audit."""
    from privfl.privacy.audit import audit_run
    from privfl.privacy.report import write_run_report
    from privfl.server.history import load_history

    marks = marks or _Clock()
    history = load_history(where.history)
    checkpoint_ledgers(where, history)
    marks.mark("ledgers_checkpointed")
    audit = audit_run(where.run_dir, federation_dir=where.federation_dir, coordinator_dir=where.coordinator_dir) \
        if config.dp or config.owner_dp else None  # the one audit; the trust root is the launcher's own layout
    marks.mark("audited")
    reports = write_run_report(where.run_dir, audit=audit, passphrase_env=config.coordinator_key_passphrase_env) \
        if audit is not None else []  # signed with the coordinator's key
    marks.mark("reported")
    return SimulationResult(run_dir=where.run_dir, history=history, audit=audit, reports=reports,
                            timings=dict(marks.marks))


def _warm_report_imports() -> threading.Thread:
    """Import what the audit and the report import late, in a thread, while the run goes on.

    The launcher waits on the run most of the time; the report's first call would
    otherwise pay matplotlib, fontTools, jinja2 and the accountants (about 2-3 s here).
    Best effort: a module that is not there is skipped.
    """
    def warm() -> None:
        import importlib

        for name in REPORT_PRELOAD:
            with suppress(Exception):  # warming only
                importlib.import_module(name)
        with suppress(Exception):  # fonts and the PDF backend's first use
            import io

            from matplotlib.figure import Figure

            figure = Figure(figsize=(1, 1))
            figure.add_subplot().plot([0, 1], [0, 1])
            figure.savefig(io.BytesIO(), format="pdf")

    thread = threading.Thread(target=warm, name="privfl-warm-report", daemon=True)
    thread.start()
    return thread


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
    """Simulated nodes to ask Flower for: the owners of the split (loading the data only where the split says)."""
    if config.num_owners and config.scheme != "natural":
        return config.num_owners
    from privfl.simulations.federation import simulated_federation

    return len(simulated_federation(config).owner_ids)


def checkpoint_ledgers(where: artefacts.Layout, history: dict) -> None:
    """Fold every ledger's WAL back into its file: simulated owners' worker processes are killed, not closed.

    A ledger at rest is then one file (a copy of the .db alone is the whole ledger).
    """
    from privfl.privacy.ledger.store import checkpoint
    from privfl.privacy.policy import LEDGER_FILE

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
    """One CPU per simulated client (so both cores of a small machine train at once), and a GPU share where CUDA is."""
    return ClientResources().federation_config()


def _submit(env: dict[str, str], app: Path, run_config: Path, num_owners: int,
            resources: str | None = None) -> int:
    """Submit the run to the SuperLink; returns Flower's run id."""
    process = _flwr(env, "run", str(app), CONNECTION, "--run-config", str(run_config),
                    "--federation-config", f"num-supernodes={num_owners} {resources or _client_resources()}",
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
    log_path.write_text(output or "", encoding="utf-8")


def _status(history_file: Path) -> str | None:
    from privfl.server.history import run_status  # the one history reader's

    return run_status(history_file)


def _app_pids(superlink: subprocess.Popen) -> list[int]:
    """The SuperLink's simulation processes (ServerApp + ClientApps), one per run in flight."""
    if isinstance(superlink, warm_federation.RunHandle):  # the warm daemon's standby that took a run
        return superlink.app_pids()
    return [pid for pid in descendants(superlink.pid) if "flwr-simulation" in command_line(pid)]


def _app_running(superlink: subprocess.Popen) -> bool:
    """Whether a simulation process of the SuperLink is alive."""
    return bool(_app_pids(superlink))


def _wait_for_run(superlink: subprocess.Popen, history_file: Path, progress: RoundProgress, log_path: Path,
                  start_timeout: float = 180, *, before: set[int] | None = None, marks: _Clock | None = None,
                  head: subprocess.Popen | None = None, foreign: Callable[[], list[int]] | None = None) -> None:
    """Block until the ServerApp marks the history finished; fail if its simulation process dies first.

    ``flwr run --stream`` is no completion signal: its log stream can end while the
    run goes on.  The ServerApp's own ``status = finished`` and the simulation
    process's life are.  ``before``: simulation processes that belong to earlier runs
    on the same SuperLink (still exiting), which say nothing about this one.
    ``foreign()``: runs on the SuperLink that this launcher did not submit; one makes it
    raise (the caller then stops the SuperLink and everything below it, the foreign run's
    processes included).
    """
    started, seen_app = time.monotonic(), False
    before = before or set()
    polls = 0
    while True:
        progress.poll()
        if marks is not None:
            for number in (0, 1):
                if number in progress.logged and f"round_{number}" not in marks.marks:
                    marks.mark(f"round_{number}")
        if _status(history_file) == "finished":
            progress.poll()
            return
        if superlink.poll() is not None:
            raise SimulationError(f"flower-superlink exited with code {superlink.returncode}; see {log_path}")
        if head is not None and head.poll() is not None:
            raise SimulationError(f"the Ray head exited with code {head.returncode}; see ray-head.log in the "
                                  "run's flower folder")
        polls += 1
        if foreign is not None and polls % 2 == 0:
            _refuse_foreign(foreign())
        if polls % 4 == 0 or not seen_app:  # walking /proc costs a few ms: not on every poll
            running = bool(set(_app_pids(superlink)) - before)
            if running:
                seen_app = True
            elif seen_app:
                time.sleep(0.5)  # the final write may land just after the process ends
                if _status(history_file) == "finished":
                    progress.poll()
                    return
                raise SimulationError(f"the run ended before it finished; its Flower log is {log_path}")
            elif time.monotonic() - started > start_timeout:
                raise SimulationError(f"the simulation did not start within {start_timeout:.0f}s; see {log_path}")
        time.sleep(0.1)
