"""The warm federation's daemon: a SuperLink, a Ray head, and one standby simulation process at a time.

``python -m privfl.simulations.warm_daemon STATE_DIR IDLE_TIMEOUT FINGERPRINT`` (started
by :func:`privfl.simulations.warm.ensure`, detached, in a session of its own).

The daemon imports Flower's simulation runtime, torch, Opacus and privfl once, then
forks a *standby* child for the next run.  The standby connects to the Ray head and
starts its ClientApp actors (their workers import privfl as they start), then waits for
a run on the SuperLink's Runtime API; it runs exactly one, as ``flwr-simulation`` would
(:func:`flwr.simulation.app.run_simulation_process`, in this process instead of a new
interpreter), and exits.  Its actors belong to its Ray job and die with it.  The daemon
forks the next standby when one exits.

The daemon never runs a Flower run itself and holds no run's state: what it forks is
only imported modules.  It keeps no thread (so forking is safe) and polls, every
0.2 s: the standby's exit, its SuperLink and Ray head (if either dies, it stops
everything), and the idle clock.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import time
from pathlib import Path

from privfl.simulations import launcher, warm

POLL_S = 0.2
ACQUIRE_POLL_S = 0.05
REGISTRATION_WAIT_S = 60.0  # how long a standby waits for the submitting privfl to vouch for a run
# What the daemon imports before it forks a standby (the simulation process's own start-up, paid once).
PRELOAD = ("flwr.simulation.app", "flwr.simulation.run_simulation", "flwr.server.superlink.fleet.vce.vce_api",
           "flwr.server.superlink.fleet.vce.backend.raybackend", "flwr.supercore.runtime", "ray", "torch",
           "opacus", "privfl.server.app", "privfl.client.app", "privfl.client.training",
           "privfl.privacy.accountants.pld", "privfl.simulations.federation", "sklearn.datasets",
           "sklearn.model_selection")


class Daemon:
    def __init__(self, folder: Path, idle_timeout: float, fingerprint: str) -> None:
        self.folder, self.idle_timeout, self.fingerprint = folder, idle_timeout, fingerprint
        self.stopping = False
        self.standby: int | None = None
        self.last_active = time.time()

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        folder = self.folder
        import shutil

        for stale in ("active", "submitted", "runs"):  # a new SuperLink: nothing of an earlier daemon's runs applies
            shutil.rmtree(folder / stale, ignore_errors=True)
        for stale in folder.glob("superlink.db*"):
            stale.unlink(missing_ok=True)
        for sub in ("active", "submitted", "runs"):
            (folder / sub).mkdir(exist_ok=True, mode=0o700)
        secret = folder / "superexec.secret"
        secret.touch(mode=0o600)
        secret.write_bytes(secrets.token_bytes(32))
        import tempfile

        self.ray_tmp = Path(tempfile.mkdtemp(prefix="privfl-warm-ray-"))  # short: Ray's socket paths are limited
        self.env = launcher._simulation_environment(folder / "flwr-home", self.ray_tmp)
        (folder / "flwr-home").mkdir(exist_ok=True, mode=0o700)
        self.head, self.ray_address = launcher._start_ray_head(self.env, self.ray_tmp, folder / "ray-head.log",
                                                               death_signal=signal.SIGTERM)
        self.env["RAY_ADDRESS"] = self.ray_address
        self.port = launcher._free_port()
        self.superlink = launcher._start_superlink(
            self.env, folder, self.port, isolation="process",
            extra=("--superexec-auth-secret-file", str(secret)), death_signal=signal.SIGTERM)
        os.environ.update(self.env)  # the standby's Ray driver and Flower read these
        _preload()
        launcher._wait_until_listening(self.superlink, self.port, folder / "superlink.log")
        launcher._wait_for_ray(self.head, folder / "ray-head.log")
        state = warm.FederationState(
            daemon_pid=os.getpid(), superlink_pid=self.superlink.pid, ray_head_pid=self.head.pid, port=self.port,
            ray_address=self.ray_address, ray_tmp=str(self.ray_tmp), fingerprint=self.fingerprint,
            idle_timeout=self.idle_timeout, started_at=time.time())
        scratch = folder / (warm.STATE_FILE + ".tmp")
        scratch.write_text(json.dumps(state.__dict__), encoding="utf-8")
        scratch.replace(folder / warm.STATE_FILE)
        print(f"privfl warm federation: SuperLink 127.0.0.1:{self.port}, Ray {self.ray_address}, "
              f"idle timeout {self.idle_timeout:.0f}s", flush=True)

    # ------------------------------------------------------------------ the loop

    def serve(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        reason = "stopped"
        try:
            self.start()
            while not self.stopping:
                if self.superlink.poll() is not None:
                    reason = f"the SuperLink exited ({self.superlink.returncode})"
                    break
                if self.head.poll() is not None:
                    reason = f"the Ray head exited ({self.head.returncode})"
                    break
                self._reap()
                if self.standby is None:
                    self.standby = self._fork_standby()
                if warm.active_runs(self.folder):
                    self.last_active = time.time()
                elif time.time() - self._last_use() > self.idle_timeout:
                    reason = f"idle for {self.idle_timeout:.0f}s"
                    break
                time.sleep(POLL_S)
        finally:
            print(f"privfl warm federation: stopping ({reason})", flush=True)
            self.shutdown()
        return 0

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _last_use(self) -> float:
        try:
            lease = (self.folder / "lease").stat().st_mtime
        except FileNotFoundError:
            lease = 0.0
        return max(self.last_active, lease)

    def _reap(self) -> None:
        if self.standby is None:
            return
        pid, _ = os.waitpid(self.standby, os.WNOHANG)
        if pid:
            (self.folder / "active" / str(pid)).unlink(missing_ok=True)
            self.standby = None
            self.last_active = time.time()

    def _fork_standby(self) -> int:
        pid = os.fork()
        if pid == 0:  # the standby
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                code = Standby(self.folder, f"127.0.0.1:{self.port}").run()
            except SystemExit as done:
                if not isinstance(done.code, int) and done.code is not None:
                    print(f"privfl warm federation: {done.code}", flush=True)
                code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
            except BaseException:  # noqa: BLE001  reported, then the process ends
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        return pid

    def shutdown(self) -> None:
        """Stop the standby, the SuperLink's tree and the Ray head's; remove the state file."""
        if self.standby is not None:
            for victim in [self.standby, *launcher.descendants(self.standby)]:
                with _quiet():
                    os.kill(victim, signal.SIGKILL)
            with _quiet():
                os.waitpid(self.standby, 0)
        if getattr(self, "superlink", None) is not None:
            launcher._stop_tree(self.superlink)
        if getattr(self, "head", None) is not None:
            launcher._stop_ray_head(self.head, self.ray_tmp)
        if getattr(self, "ray_tmp", None) is not None:
            launcher._kill_mentioning(str(self.ray_tmp))
            import shutil

            shutil.rmtree(self.ray_tmp, ignore_errors=True)
        state = warm.read_state(self.folder)
        if state is not None and state.daemon_pid == os.getpid():
            (self.folder / warm.STATE_FILE).unlink(missing_ok=True)


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], (ProcessLookupError, ChildProcessError, PermissionError))


def _preload() -> None:
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001  warming only: the run imports it itself
            print(f"privfl warm federation: could not preload {name}: {err}", flush=True)


class Standby:
    """One run's simulation process, started before the run: Ray connected, ClientApp actors up."""

    def __init__(self, folder: Path, runtime_address: str) -> None:
        self.folder, self.runtime_address = folder, runtime_address

    def run(self) -> int:
        import threading

        self._prewarm_backend()
        # The run may start while the actors' workers still import privfl: the ServerApp's start overlaps them.
        noted = threading.Thread(target=self._note_actors, name="privfl-standby-actors", daemon=True)
        noted.start()
        token, run_id = self._acquire()
        (self.folder / "active" / str(os.getpid())).write_text(str(run_id), encoding="utf-8")
        self._record(run_id)
        try:
            return self._run(token)
        finally:
            noted.join(timeout=30)
            self._record(run_id)

    def _record(self, run_id: int) -> None:
        """Who served which run: this process and its actors' workers (for tests and diagnosis)."""
        (self.folder / "runs").mkdir(exist_ok=True, mode=0o700)
        scratch = self.folder / "runs" / f".{run_id}"
        scratch.write_text(json.dumps({"standby_pid": os.getpid(), "actor_pids": self.actor_pids}), encoding="utf-8")
        scratch.replace(self.folder / "runs" / str(run_id))

    def _note_actors(self) -> None:
        self.actor_pids = _actor_pids(self.backend)  # waits until every actor's worker has started
        for run_id in warm.active_runs(self.folder).values():
            self._record(run_id)
        (self.folder / "standby").write_text(json.dumps({"pid": os.getpid(), "actor_pids": self.actor_pids,
                                                         "ready_at": time.time()}), encoding="utf-8")

    def _run(self, token: str) -> int:
        from queue import Queue

        from flwr.simulation.app import run_simulation_process
        from flwr.supercore.logger import mirror_output_to_queue, restore_output

        log_queue: Queue[str | None] = Queue()
        mirror_output_to_queue(log_queue)
        try:
            run_simulation_process(runtime_api_address=self.runtime_address, log_queue=log_queue, token=token,
                                   insecure=True, runtime_dependency_install=False)
        finally:
            restore_output()
        return 0

    def _prewarm_backend(self) -> None:
        """Connect to Ray and start the actors Flower's Ray backend would start for privfl's default resources.

        Flower builds its backend when the run starts (``vce_api.start_vce`` imports
        ``RayBackend`` at that moment); the class is replaced, in this process only, by one
        that hands out the backend built here when the run asks for the same client
        resources, and builds a fresh one otherwise.
        """
        from flwr.server.superlink.fleet.vce.backend import raybackend

        original = raybackend.RayBackend
        resources = {"num_cpus": 1.0, "num_gpus": float(launcher._local_gpu_share())}
        built = original({"client_resources": resources, "init_args": {}})
        built.build(None)  # type: ignore[arg-type]  # the actors start now; the ClientApp comes with the run
        spare: list = [built]
        self.backend, self.actor_pids = built, []

        def backend(config: dict) -> object:
            ready = spare.pop() if spare else None
            if ready is not None and ready.client_resources == built._validate_client_resources(config):
                ready.build = lambda app_fn: setattr(ready, "app_fn", app_fn)  # its pool is already built
                return ready
            if ready is not None and ready.pool is not None:
                ready.pool.terminate_all_actors()
            return original(config)

        raybackend.RayBackend = backend  # type: ignore[assignment,misc]

    def _acquire(self) -> tuple[str, int]:
        """Wait for a run on the SuperLink; return its token once the run is vouched for and is privfl's app."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest
        from flwr.supercore.constant import TaskType
        from flwr.supercore.interceptors import SuperExecAuthHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient

        from privfl.app_bundle import build_fab

        expected_fab = _fab_hash(build_fab())
        secret = (self.folder / "superexec.secret").read_bytes()
        client = RuntimeHttpClient.from_server_address(
            server_address=self.runtime_address, insecure=True, root_certificates=None,
            interceptors=[SuperExecAuthHttpInterceptor(master_secret=secret,
                                                       protected_methods=frozenset({"/flwr.proto.Runtime/AcquireTask"}))],
            retry_invoker=make_simple_http_retry_invoker())
        try:
            while True:
                reply = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.SIMULATION.value],
                                                              agentapp_fab_hashes=[]))
                if reply.HasField("task") and reply.token:
                    run_id = int(reply.task.run_id)
                    if reply.task.fab_hash and reply.task.fab_hash != expected_fab:
                        raise SystemExit(f"refused run {run_id}: not privfl's app bundle (FAB {reply.task.fab_hash})")
                    if not self._vouched(run_id):
                        raise SystemExit(f"refused run {run_id}: no privfl of this user submitted it")
                    return reply.token, run_id
                time.sleep(ACQUIRE_POLL_S)
        finally:
            client.close()

    def _vouched(self, run_id: int) -> bool:
        deadline = time.monotonic() + REGISTRATION_WAIT_S
        while time.monotonic() < deadline:
            if run_id in warm.registered(self.folder):
                return True
            time.sleep(0.05)
        return False


def _actor_pids(backend: object, timeout: float = 300) -> list[int]:
    """The worker PIDs of a built backend's actors, once each has started (best effort: [] on a failure)."""
    import ray

    try:
        actors = list(backend.pool.pool)  # type: ignore[attr-defined]
        return sorted(ray.get([a.__ray_call__.remote(lambda _self: os.getpid()) for a in actors], timeout=timeout))
    except Exception as err:  # noqa: BLE001  the run goes on; the actors answer when they are up
        print(f"privfl warm federation: actors not confirmed up: {err}", flush=True)
        return []


def _fab_hash(content: bytes) -> str:
    import hashlib

    return hashlib.sha256(content).hexdigest()


def main(argv: list[str]) -> int:
    folder, idle_timeout, fingerprint = Path(argv[0]), float(argv[1]), argv[2]
    return Daemon(folder, idle_timeout, fingerprint).serve()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
