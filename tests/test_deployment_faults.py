"""Faults in a real deployment on loopback (TLS, SuperNode authentication, the signed app).

1. A SuperNode killed mid-run and restarted: the run finishes, no owner is charged twice
   for a round, nothing left an owner without a charge.
2. The SuperLink killed mid-run: Flower cannot resume its run, so the experiment is
   resumed in a new Flower run (``resume = true``) on the restarted SuperLink; every
   owner ends with exactly one charge per round it released and its epsilon is the
   composition of those charges.

After each: every ledger verifies against its registered key and the coordinator's
registry, and the run's audit (ledgers and history cross-checked) passes.  Every
process is stopped by PID, whatever happens.
"""

from __future__ import annotations

import json
import time
import tomllib
from collections import Counter
from pathlib import Path

import pytest

from privfl.deploy import layout as names
from privfl.privacy.accountants import get_accountant
from privfl.privacy.audit import audit_run
from privfl.privacy.keys import load_public_key
from privfl.privacy.ledger import CHARGE, OwnerLedger, verify
from privfl.privacy.ledger.registry import CoordinatorRegistry
from privfl.deploy.demo_data import write_digits_data
from tests.deployment_harness import Deployment

pytestmark = pytest.mark.e2e

OWNERS = ["st-mary", "st-john", "city-lab"]
PURPOSE = "digit recognition study"
ROUNDS = 2


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    deployment = Deployment.create(root, OWNERS, purpose=PURPOSE, min_noise_multiplier=1.0, num_rounds=ROUNDS)
    try:
        write_digits_data({owner: deployment.institution(owner) for owner in OWNERS})
        deployment.start_coordinator()
        deployment.register()
        deployment.nodes = {owner: deployment.start_supernode(deployment.institution(owner)) for owner in OWNERS}
        yield deployment
    finally:
        deployment.stop()
        assert not deployment.alive(), f"processes left running: {deployment.alive()}"


def _wait_for_round(run_dir: Path, number: int, timeout: float = 300) -> None:
    """Until the round's checkpoint exists: its receipts are committed and anchored."""
    state, deadline = run_dir / "checkpoints" / "state.json", time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads(state.read_text())["round"] >= number:
                return
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"round {number} of {run_dir} was not checkpointed within {timeout:.0f}s")


def _check_ledgers(deployment: Deployment, run_dir: Path, experiment_id: str) -> dict[str, list]:
    """Every ledger verifies; one charge per (experiment, round); the audit passes. Returns the owners' events."""
    ledgers = {owner: deployment.institution(owner).ledger for owner in OWNERS}
    with CoordinatorRegistry.open_readonly(deployment.coordinator.registry) as registry:
        anchors = {owner: registry.anchors(owner) for owner in OWNERS}
    events = {}
    for owner, path in ledgers.items():
        report = verify(path, load_public_key(deployment.institution(owner).signing_public_key),
                        anchored=anchors[owner])
        assert report.ok, report.summary()
        with OwnerLedger.open_readonly(path) as ledger:
            charges = Counter((e.run_id, e.round) for e in ledger.entries() if e.kind == CHARGE
                              and e.run_id == experiment_id)
            assert set(charges.values()) <= {1}, charges  # never charged twice for a round
            events[owner] = [e.event for e in ledger.entries() if e.kind == CHARGE and e.run_id == experiment_id]
    audit = audit_run(run_dir, owner_ledgers=ledgers)
    assert audit.ok, audit.summary()
    return events


def _experiment(deployment: Deployment, name: str, **changes) -> tuple[Path, Path]:
    config = deployment.write_run_config(name, round_timeout=90.0, **changes)
    return config, Path(tomllib.loads(config.read_text())["run-dir"])


def test_a_supernode_killed_and_restarted_mid_run(deployment):
    config, run_dir = _experiment(deployment, "node-fault")
    run_id = deployment.submit(config, name="submit-node-fault")
    _wait_for_round(run_dir, 1)
    deployment.stop_one(deployment.nodes["st-john"])  # killed after round 1
    time.sleep(2)
    deployment.nodes["st-john"] = deployment.start_supernode(deployment.institution("st-john"),
                                                             name="supernode-st-john-restarted")
    history = deployment.wait_for_run(run_id, run_dir, timeout=450)
    assert history["status"] == "finished" and history["aggregated_rounds"] == ROUNDS
    _check_ledgers(deployment, run_dir, history["experiment_id"])


def test_the_superlink_killed_and_the_experiment_resumed(deployment):
    config, run_dir = _experiment(deployment, "link-fault")
    deployment.submit(config, name="submit-link-fault")
    _wait_for_round(run_dir, 1)
    superlink = next(s for s in deployment.started if s.name == "superlink" and s.process.poll() is None)
    deployment.stop_one(superlink)  # the SuperLink and its ServerApp die after round 1
    experiment_id = json.loads((run_dir / "config.json").read_text())["experiment-id"]
    assert json.loads((run_dir / "history.json").read_text())["status"] == "running"

    restarted = deployment.start("superlink-restarted", deployment.coordinator.script(names.START_SUPERLINK))
    deployment.wait_listening(restarted, deployment.port)
    resume = config.with_name("link-fault-resume.toml")  # the same experiment, resumed
    resume.write_text(config.read_text() + "resume = true\n")
    run_id = deployment.submit(resume, name="submit-link-fault-resume")
    history = deployment.wait_for_run(run_id, run_dir, timeout=450)
    assert history["status"] == "finished" and history["experiment_id"] == experiment_id
    assert [r["round"] for r in history["rounds"]] == [1, 2]
    events = _check_ledgers(deployment, run_dir, experiment_id)
    for owner in OWNERS:
        assert len(events[owner]) == ROUNDS  # one charge per round it released
        with OwnerLedger.open_readonly(deployment.institution(owner).ledger) as ledger:
            last, lifetime = ledger.entries()[-1], ledger.events()
        assert last.cumulative_epsilon == pytest.approx(get_accountant(last.accountant).epsilon(lifetime, last.delta),
                                                        rel=1e-6)
