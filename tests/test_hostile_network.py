"""Nobody but privfl's own processes takes a task: the network, another local user (issue 24, items 1 and 6).

Item 1, against the deployment ``privfl deploy init`` writes (real SuperLink, SuperNodes and
SuperExecs on loopback, TLS, SuperNode authentication, signed apps): while a run is
submitted, a client with no credential calls the Runtime API's ``AcquireTask`` with
Flower's own HTTP client, as an attacker would, both at the SuperLink's port (over TLS,
trusting the federation's CA) and at each SuperNode's local port.  It must get no task and
no token, and the run must still finish with every owner's update.  Under the old scripts
(``--isolation subprocess``, where Flower 1.42 switches SuperExec authentication off) the
attacker takes the ServerApp's task and the run never finishes.

Item 6, against ``privfl simulate``'s launcher: see the tests further down.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from privfl.deploy.demo_data import write_digits_data
from tests.deployment_harness import Deployment

pytestmark = pytest.mark.e2e

OWNERS = ["st-mary", "st-john"]
PURPOSE = "digit recognition study"


@dataclass
class Attacker:
    """A credential-less Runtime API client that calls AcquireTask in a loop, keeping what it got."""

    address: str
    root_certificates: bytes | None  # None: plaintext (a SuperNode's local port)
    stolen: list[str] = field(default_factory=list)  # the tasks it was handed
    refusals: list[str] = field(default_factory=list)  # what the server answered instead
    calls: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
        from flwr.supercore.constant import TaskType
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
        from flwr.supercore.runtime import RuntimeHttpClient

        client = RuntimeHttpClient.from_server_address(
            server_address=self.address, insecure=self.root_certificates is None,
            root_certificates=self.root_certificates,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")])
        try:
            while not self.stop.is_set():
                self.calls += 1
                try:
                    reply = client.AcquireTask(AcquireTaskRequest(supported_task_types=[str(t) for t in TaskType]))
                except Exception as err:  # noqa: BLE001 - the refusal is what the test reads
                    self.refusals.append(f"{type(err).__name__}: {err}")
                else:
                    if reply.HasField("task") and reply.token:
                        self.stolen.append(f"{reply.task.type} of run {reply.task.run_id}")
                time.sleep(0.1)
        finally:
            client.close()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-network")
    deployment = Deployment.create(root, OWNERS, purpose=PURPOSE, num_rounds=1)
    try:
        write_digits_data({owner: deployment.institution(owner) for owner in OWNERS})
        deployment.start_coordinator()
        deployment.register()
        deployment.nodes = {owner: deployment.start_supernode(deployment.institution(owner)) for owner in OWNERS}
        for node in deployment.nodes.values():
            deployment.wait_for_log(node, "SuperNode ID")
        yield deployment
    finally:
        deployment.stop()
        assert not deployment.alive(), f"processes left running: {deployment.alive()}"


def _supernode_port(deployment: Deployment, owner: str) -> int:
    text = deployment.institution(owner).script("start-supernode.sh").read_text()
    return int(text.rsplit("--port ", 1)[1].split()[0])


def test_a_credential_less_client_takes_no_task_at_the_superlink_or_a_supernode(deployment):
    attackers = {"superlink": Attacker(f"127.0.0.1:{deployment.port}", deployment.coordinator.ca_cert.read_bytes())}
    for owner in OWNERS:
        attackers[owner] = Attacker(f"127.0.0.1:{_supernode_port(deployment, owner)}", None)
    threads = [threading.Thread(target=a.run, daemon=True) for a in attackers.values()]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1)  # the attackers poll before the run exists, as a patient one would
        experiment = deployment.coordinator.experiment
        config = deployment.write_run_config("attacked", num_rounds=1, federated_evaluation="off")
        run_id = deployment.submit(config)
        history = deployment.wait_for_run(run_id, deployment.coordinator.runs / "attacked", timeout=240)
    finally:
        for attacker in attackers.values():
            attacker.stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert experiment.exists()
    for name, attacker in attackers.items():
        assert not attacker.stolen, f"{name}: a client with no credential was handed {attacker.stolen}"
        # Not vacuous: each attacker reached its server and was refused for want of the secret.
        assert attacker.calls > 5 and attacker.refusals, name
        assert any("401 Unauthorized" in r or "authentication" in r.lower() for r in attacker.refusals), (name, attacker.refusals[:3])
    assert history["status"] == "finished" and history["aggregated_rounds"] == 1
    assert sorted(history["rounds"][0]["participants"]) == sorted(OWNERS)


def test_the_superexec_secrets_are_private_files(deployment):
    secrets = [deployment.coordinator.path / "superlink" / "superexec.secret",
               *(deployment.institution(owner).path / "superexec.secret" for owner in OWNERS)]
    for path in secrets:
        assert path.stat().st_mode & 0o777 == 0o600, path
        assert len(path.read_bytes()) == 32
    assert (deployment.coordinator.path / "superlink").stat().st_mode & 0o077 == 0


# -- item 6: another local user and `privfl simulate` ----------------------------------------

EVIL_PYPROJECT = """[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "not-privfl"
version = "1.0.0"
dependencies = []

[tool.flwr.app]
publisher = "mallory"

[tool.flwr.app.components]
serverapp = "evil_app:server"
clientapp = "evil_app:client"
"""

EVIL_MODULE = """from pathlib import Path

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

Path({marker!r}).write_text("ran")  # importing the app is already running code

server = ServerApp()
client = ClientApp()


@server.main()
def main(grid, context):
    Path({marker!r}).write_text("ran main")
"""


def _write_evil_app(folder: Path, marker: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "pyproject.toml").write_text(EVIL_PYPROJECT)
    (folder / "evil_app.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    return folder


def test_a_run_submitted_by_someone_else_during_a_simulation_is_caught_and_fails_it(tmp_path):
    """The other user finds the simulation's loopback SuperLink (here: from its connection file, as `ss -ltn`
    would show the port) and submits an app with code.  The simulation must stop and fail, naming that run."""
    from privfl.cli.simulate import load_config
    from privfl.simulations.launcher import ForeignRunError, run_simulation

    config = load_config("quickstart", ["num-owners=2", "num-rounds=60", "federated-evaluation=off"]).replace(
        run_dir=str(tmp_path / "run"))
    outcome: dict = {}

    def simulate() -> None:
        try:
            outcome["result"] = run_simulation(config, stream=False, save_flower_log=False)
        except BaseException as err:  # noqa: BLE001 - read by the test
            outcome["error"] = err

    thread = threading.Thread(target=simulate, daemon=True)
    thread.start()
    run_dir = tmp_path / "run"
    try:
        foreign, marker = _submit_as_someone_else(tmp_path, run_dir, thread, outcome)
        thread.join(timeout=400)
        assert not thread.is_alive(), "the simulation did not end"
    finally:
        _stop_simulation_left_running(run_dir)
    error = outcome.get("error")
    assert isinstance(error, ForeignRunError), f"the simulation did not fail on the foreign run: {outcome}"
    assert str(foreign) in str(error)
    print(f"foreign run {foreign}: its code {'ran' if marker.exists() else 'did not run'} before it was caught")


def _submit_as_someone_else(tmp_path: Path, run_dir: Path, thread: threading.Thread, outcome: dict) -> tuple[int, Path]:
    """Once the simulation's run is under way, `flwr run` an app with code at its SuperLink from another Flower home."""
    import json
    import os
    import subprocess
    import sys

    connection = run_dir / "flower" / "home" / "config.toml"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (run_dir / "history.jsonl").exists():  # our run is under way
        assert thread.is_alive(), outcome
        time.sleep(0.2)
    assert (run_dir / "history.jsonl").exists(), "the simulation's run never started"
    marker = tmp_path / "mallory-was-here"
    home = tmp_path / "mallory-home"
    home.mkdir()
    (home / "config.toml").write_text(connection.read_text())  # the same loopback address
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_UPDATE_CHECK": "1",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    flwr = str(Path(sys.executable).parent / "flwr")
    submitted = subprocess.run([flwr, "run", str(_write_evil_app(tmp_path / "evil", marker)), "privfl-simulation",
                                "--format", "json"], env=env, capture_output=True, text=True, timeout=120)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr  # Flower 1.42 accepts it: no auth
    return int(json.loads(submitted.stdout[submitted.stdout.index("{"):])["run-id"]), marker


def _stop_simulation_left_running(run_dir: Path) -> None:
    """If the test failed with the simulation still going: its SuperLink (it names run_dir) and its tree, by PID."""
    import os
    import signal

    from privfl.simulations.processes import descendants, processes_mentioning

    for pid in processes_mentioning(str(run_dir)):
        if pid == os.getpid():
            continue
        for target in [pid, *descendants(pid)]:
            try:
                os.kill(target, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
