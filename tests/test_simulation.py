"""End to end through Flower's simulation engine: SuperLink, Ray, ServerApp, ClientApps, Opacus."""

from __future__ import annotations

import json
import os
import signal
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from privfl.app_bundle import export_app
from privfl.cli.simulate import load_config
from privfl.models import build_model
from privfl.privacy.accountants import get_accountant
from privfl.privacy.ledger import CHARGE, REFUSAL, OwnerLedger
from privfl.protocol import TrainingPlan
from privfl.simulations.launcher import run_simulation
from tests.conftest import processes_mentioning

pytestmark = pytest.mark.e2e

OWNERS = 4
RECORDS_PER_OWNER = 1437 // OWNERS + 1  # digits train split (1,437), IID over 4 owners: 360 or 359


def _round_epsilon(config, rounds: int, n: int = RECORDS_PER_OWNER) -> float:
    event = TrainingPlan.from_config(config).privacy_event(n)
    return get_accountant(config.accountant).epsilon([event] * rounds, config.delta)


def test_quickstart_trains_beyond_chance_and_reports_every_owners_epsilon(tmp_path):
    config = load_config("quickstart", [f"num-owners={OWNERS}", "num-rounds=3"]).replace(run_dir=str(tmp_path / "run"))
    result = run_simulation(config, stream=False)

    history = result.history
    assert [r["round"] for r in history["rounds"]] == [0, 1, 2, 3]
    assert history["final_test_accuracy"] > 0.5  # chance is 0.1 on ten digits
    assert history["rounds"][3]["test_accuracy"] > history["rounds"][0]["test_accuracy"] + 0.3
    assert sorted(history["owners"]) == [f"owner-{i}" for i in range(OWNERS)]
    expected = _round_epsilon(config, 3)
    for owner in history["owners"].values():
        assert owner["rounds_trained"] == 3 and owner["delta"] == config.delta
        assert owner["epsilon"] == pytest.approx(expected, rel=0.01)  # 359 or 360 records: same rate
    for record in history["rounds"][1:]:
        assert len(record["participants"]) == OWNERS
        epsilons = [r["epsilon"] for r in record["receipts"]]
        assert epsilons == pytest.approx([_round_epsilon(config, record["round"])] * OWNERS, rel=0.01)

    model = build_model(config.model, 64, 10)
    model.load_state_dict(torch.load(result.run_dir / "model.pt"))
    assert json.loads((result.run_dir / "config.json").read_text())["num-rounds"] == 3
    assert sorted(result.audit.owner_ledgers) == [f"owner-{i}" for i in range(OWNERS)]
    assert result.audit.ok, result.audit.summary()
    assert {Path(r.path).name for r in result.ledgers} == {"federation.db", "registry.db", "ledger.db"}
    assert not any(result.run_dir.rglob("*.key"))  # no private key in the folder a report is built from
    assert processes_mentioning(str(result.run_dir)) == []  # SuperLink, simulation and Ray are gone


def test_owners_refuse_once_their_budget_is_spent_and_the_run_ends(tmp_path):
    base = load_config("quickstart", [f"num-owners={OWNERS}", "num-rounds=4"])
    budget = (_round_epsilon(base, 2) + _round_epsilon(base, 3)) / 2  # room for two rounds, not three
    config = base.replace(epsilon_budget=budget, run_dir=str(tmp_path / "run"))
    result = run_simulation(config, stream=False)
    history = result.history

    rounds = {r["round"]: r for r in history["rounds"]}
    assert len(rounds[1]["participants"]) == len(rounds[2]["participants"]) == OWNERS
    assert rounds[3]["participants"] == [] and len(rounds[3]["refused"]) == OWNERS
    assert all("would exceed the budget" in reason for reason in rounds[3]["refused"].values())
    # Every owner refused: the run ends there with a clear status instead of running round 4 with nobody (issue 20).
    assert 4 not in rounds and history["status"] == "finished"
    assert "every owner refused before round 4" in history["stopped"]
    for owner in history["owners"].values():
        assert owner["epsilon"] <= budget
        assert owner["rounds_trained"] == 2 and owner["rounds_refused"] == 1
    with OwnerLedger.open_readonly(result.audit.owner_ledgers["owner-0"]) as ledger:
        assert [e.kind for e in ledger.entries()] == [CHARGE, CHARGE, REFUSAL]
    assert all(r.ok for r in result.ledgers)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_plain_flwr_run_runs_the_exported_app(tmp_path):
    """privfl's Flower app (`privfl app export`) runs under plain `flwr run` (with the documented environment)."""
    port, control = _free_port(), _free_port()
    ray_tmp = tempfile.mkdtemp(prefix="privfl-ray-")  # Ray's socket paths must stay short (< 108 bytes)
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr"), "RAY_TMPDIR": ray_tmp,
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(port), "FLWR_LOCAL_CONTROL_API_PORT": str(control),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run_dir = tmp_path / "run"
    app = export_app(tmp_path / "app")
    command = ["flwr", "run", str(app), "--stream", "--federation-config", "num-supernodes=2",
               "--run-config", f"num-rounds=1 run-dir='{run_dir}'"]
    try:
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        # `flwr run --stream` may return before the run ends: wait for the ServerApp's mark.
        history_file, deadline = run_dir / "history.json", time.monotonic() + 180
        while time.monotonic() < deadline:
            history = json.loads(history_file.read_text()) if history_file.exists() else {}
            if history.get("status") == "finished":
                break
            time.sleep(1)
        assert history.get("status") == "finished", done.stdout[-3000:]
        assert sorted(history["owners"]) == ["owner-0", "owner-1"]
        assert history["final_test_accuracy"] > 0.2
    finally:
        # flwr run leaves its local SuperLink running, detached: stop it by PID.
        for pid in processes_mentioning(f"--port {port}") + processes_mentioning(ray_tmp):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(ray_tmp, ignore_errors=True)
