"""The warm federation (privfl.simulations.warm): reuse, isolation between runs, idle shutdown, stop, recovery.

Everything runs for real: the daemon, Flower's SuperLink, Ray's head and workers, the
ServerApp and ClientApps, Opacus, the ledgers.  Runs are tiny (2-3 owners, 1 round).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from privfl.cli import main as cli
from privfl.cli.simulate import load_config
from privfl.simulations import warm
from privfl.simulations.launcher import CONNECTION, run_simulation
from privfl.simulations.processes import processes_mentioning

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def warm_dir():
    folder = Path(tempfile.mkdtemp(prefix="privfl-warm-test-"))  # mkdtemp: mode 0700
    yield folder
    warm.stop(folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def _warm_env(warm_dir, monkeypatch):
    monkeypatch.setenv(warm.ENV_DIR, str(warm_dir))


def _config(tmp_path: Path, name: str, owners: int):
    return load_config("quickstart", [f"num-owners={owners}", "num-rounds=1"]).replace(run_dir=str(tmp_path / name))


def _gone(pids, timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if Path(f"/proc/{p}").exists() and _not_zombie(p)]
        time.sleep(0.2)
    return alive


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _leftovers(folder: Path | None, state: warm.FederationState) -> list[int]:
    """Processes that still name the federation's state folder (None: not checked) or its Ray folder."""
    named = processes_mentioning(state.ray_tmp) + (processes_mentioning(str(folder)) if folder else [])
    return [p for p in set(named) if p != os.getpid() and _not_zombie(p)]


def _served(folder: Path, count: int, timeout: float = 60) -> dict[int, dict]:
    """The daemon's record of which standby and actor processes served each run, once all ``count`` are known."""
    deadline = time.monotonic() + timeout
    while True:
        served = {int(p.name): json.loads(p.read_text()) for p in (folder / "runs").glob("[0-9]*")}
        if (len(served) == count and all(s["actor_pids"] for s in served.values())) or time.monotonic() > deadline:
            return served
        time.sleep(0.2)


def test_second_run_reuses_the_federation_and_sees_nothing_of_the_first(warm_dir, tmp_path):
    first = run_simulation(_config(tmp_path, "a", 2), stream=False, warm=300)
    state = warm.read_state(warm_dir)
    assert state is not None and warm.live_state(warm_dir) == state
    processes = warm.pids(warm_dir)
    served_first = _served(warm_dir, 1)
    assert len(served_first) == 1
    (first_run, first_served), = served_first.items()

    second = run_simulation(_config(tmp_path, "b", 3), stream=False, warm=300)

    # Reuse: the same daemon, SuperLink and Ray head served the second run; none was started for it.
    assert warm.read_state(warm_dir) == state
    for pid in (state.daemon_pid, state.superlink_pid, state.ray_head_pid):
        assert pid in processes and pid in warm.pids(warm_dir)
    assert second.timings["superlink_listening"] < 1.0  # nothing to start: the SuperLink was listening
    assert first.history["status"] == second.history["status"] == "finished"

    # Isolation: another standby process and other actor processes served the second run, and those of
    # the first run had exited before it (no process held both runs' owners, keys, ledgers or caches).
    served = _served(warm_dir, 2)
    (second_run, second_served), = ((r, s) for r, s in served.items() if r != first_run)
    assert second_served["standby_pid"] != first_served["standby_pid"]
    assert first_served["actor_pids"] and second_served["actor_pids"]
    assert not set(first_served["actor_pids"]) & set(second_served["actor_pids"])
    assert _gone([first_served["standby_pid"], *first_served["actor_pids"]], timeout=5) == []

    # Each run has its own federation: owners, keys and ledgers; neither names the other's folders.
    first_fed, second_fed = Path(f"{first.run_dir}.federation"), Path(f"{second.run_dir}.federation")
    assert sorted(first.history["owners"]) == ["owner-0", "owner-1"]
    assert sorted(second.history["owners"]) == ["owner-0", "owner-1", "owner-2"]
    assert first.audit.ok and second.audit.ok
    for owner in ("owner-0", "owner-1"):  # the same owner names, different keys
        key_a = (first_fed / "coordinator" / "owner-keys" / f"{owner}.pub").read_bytes()
        key_b = (second_fed / "coordinator" / "owner-keys" / f"{owner}.pub").read_bytes()
        assert key_a != key_b
    for path in [*second.run_dir.rglob("*"), *second_fed.rglob("*")]:
        if path.is_file() and path.suffix in {".json", ".jsonl", ".log", ".toml", ".csv", ".html"}:
            text = path.read_text(errors="replace")
            assert str(first.run_dir) not in text and first.history["experiment_id"] not in text, path
    assert all(str(first.run_dir) not in str(p) for p in second.audit.reports)


def test_a_run_nobody_vouched_for_is_refused_before_its_code_runs(warm_dir, tmp_path):
    state = warm.ensure(300, warm_dir)
    env = warm.client_env(state, warm_dir, CONNECTION)
    app = tmp_path / "foreign-app"
    app.mkdir()
    (app / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "foreign"\nversion = "1.0.0"\n\n[tool.flwr.app]\npublisher = "someone"\n\n'
        '[tool.flwr.app.components]\nserverapp = "foreign_server:app"\nclientapp = "foreign_client:app"\n',
        encoding="utf-8")
    marker = tmp_path / "pwned"
    (app / "foreign_server.py").write_text(  # `flwr run` imports it too: only the daemon's side has RAY_ADDRESS
        "import os\nfrom flwr.serverapp import ServerApp\napp = ServerApp()\n"
        f"if os.environ.get('RAY_ADDRESS'):\n    open({str(marker)!r}, 'w').write(str(os.getpid()))\n")
    (app / "foreign_client.py").write_text("from flwr.clientapp import ClientApp\napp = ClientApp()\n")
    env.pop("RAY_ADDRESS", None)
    reply = subprocess.run(["flwr", "run", str(app), CONNECTION, "--format", "json"], env=env,
                           capture_output=True, text=True, timeout=120)
    answer = json.loads(reply.stdout[reply.stdout.index("{"):])
    assert answer.get("success") is not False, answer
    run_id = int(answer["run-id"])
    log = warm_dir / "daemon.log"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and f"refused run {run_id}" not in log.read_text(errors="replace"):
        time.sleep(0.2)
    assert f"refused run {run_id}" in log.read_text(errors="replace")
    assert not marker.exists() and not (warm_dir / "runs" / str(run_id)).exists()
    assert warm.live_state(warm_dir) == state  # the federation goes on, with a new standby


def test_only_the_daemon_can_take_a_run_from_the_superlink(warm_dir):
    """The Runtime API hands out runs (with their inputs and token) only to a caller holding the secret
    that the daemon keeps in the 0700 folder; another local user's process gets 401."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.interceptors import SuperExecAuthHttpInterceptor
    from flwr.supercore.runtime import RuntimeHttpClient

    state = warm.ensure(300, warm_dir)
    secret = warm_dir / "superexec.secret"
    assert secret.stat().st_mode & 0o777 == 0o600

    def acquire(key: bytes | None) -> str:
        interceptors = [SuperExecAuthHttpInterceptor(master_secret=key, protected_methods=frozenset(
            {"/flwr.proto.Runtime/AcquireTask"}))] if key else []
        client = RuntimeHttpClient.from_server_address(server_address=state.address, insecure=True,
                                                       root_certificates=None, interceptors=interceptors,
                                                       retry_invoker=None)
        try:
            client.AcquireTask(AcquireTaskRequest(supported_task_types=["flwr-simulation"], agentapp_fab_hashes=[]))
            return "answered"
        except Exception as err:  # noqa: BLE001  the HTTP error is the answer
            return str(err)
        finally:
            client.close()

    assert "401" in acquire(None)
    assert "401" in acquire(b"x" * 32)
    assert acquire(secret.read_bytes()) == "answered"  # no run is pending: an empty answer, not a refusal


def test_explicit_stop_leaves_no_process(warm_dir, capsys):
    state = warm.ensure(300, warm_dir)
    before = warm.pids(warm_dir)
    assert state.daemon_pid in before and len(before) >= 4  # daemon, SuperLink, Ray head and its daemons
    assert cli(["federation", "stop"]) == 0
    assert "stopped" in capsys.readouterr().out
    assert _gone(before) == []
    assert _leftovers(warm_dir, state) == []
    assert warm.read_state(warm_dir) is None and not Path(state.ray_tmp).exists()
    assert cli(["federation", "status"]) == 1


def test_a_dead_daemons_state_is_recovered_and_its_processes_killed(warm_dir):
    dead = warm.ensure(300, warm_dir)
    orphans = warm.pids(warm_dir)
    os.kill(dead.daemon_pid, signal.SIGKILL)  # no clean-up of its own
    assert _gone([dead.daemon_pid], timeout=10) == []
    assert warm.live_state(warm_dir) is None  # the state file is there, but stale
    fresh = warm.ensure(300, warm_dir)
    assert fresh.daemon_pid != dead.daemon_pid and fresh.port != 0
    assert _gone([p for p in orphans if p != dead.daemon_pid]) == []
    assert _leftovers(None, dead) == []  # the folder is the new federation's now; the Ray folder is per federation
    assert warm.stop(warm_dir)


def test_idle_timeout_stops_every_process(warm_dir):
    state = warm.ensure(4, warm_dir)
    processes = warm.pids(warm_dir)
    assert state.idle_timeout == 4 and state.daemon_pid in processes
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and warm.read_state(warm_dir) is not None:
        time.sleep(0.2)
    assert warm.read_state(warm_dir) is None
    assert _gone(processes) == []
    assert _leftovers(warm_dir, state) == []
    assert not Path(state.ray_tmp).exists()
