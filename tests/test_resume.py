"""Checkpoints and resume: an experiment killed mid-round goes on from its last completed round.

privfl's ServerApp and ClientApp run in this process (Flower's runtime is not what
these tests are about); the crash is an exception thrown from inside the round, after
or before the coordinator committed the round's receipts.  After the resume every
owner's ledger holds exactly one charge per round it released, and its epsilon is the
composition of those charges.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from bench.inprocess_grid import run_apps
from privfl.client.app import app as client_app
from privfl.client.owner_ledger import close_owner_ledgers
from privfl.config import ConfigError, ExperimentConfig
from privfl.privacy.accountants import get_accountant
from privfl.privacy.audit import audit_run
from privfl.privacy.ledger import CHARGE, OwnerLedger
from privfl.server.app import app as server_app
from privfl.server.receipts import ReceiptCheck
from privfl.server.run_dir import settle

OWNERS, ROUNDS = 3, 4


class Crash(RuntimeError):
    """The coordinator dies mid-round."""


def _config(tmp_path: Path, **changes) -> ExperimentConfig:
    values = dict(num_owners=OWNERS, num_rounds=ROUNDS, run_dir=str(tmp_path / "run"), federated_evaluation="off")
    return settle(ExperimentConfig(**{**values, **changes}))


def _run(config: ExperimentConfig) -> None:
    try:
        run_apps(server_app, client_app, OWNERS, config.to_mapping())
    finally:
        close_owner_ledgers()


def _crash_in_round(monkeypatch, crash_round: int, *, after_commit: bool) -> None:
    original = ReceiptCheck.commit

    def commit(self, server_round, accepted):
        if server_round == crash_round and not after_commit:
            raise Crash(f"killed before round {server_round}'s receipts were kept")
        original(self, server_round, accepted)
        if server_round == crash_round:
            raise Crash(f"killed after round {server_round}'s receipts were kept")

    monkeypatch.setattr(ReceiptCheck, "commit", commit)


def _ledger_entries(config: ExperimentConfig, owner: str = "owner-1"):
    with OwnerLedger.open_readonly(Path(config.federation_dir) / "owners" / owner / "ledger.db") as ledger:
        return ledger.entries(), ledger.events()


@pytest.mark.parametrize("after_commit", [True, False], ids=["after-commit", "before-commit"])
def test_a_resumed_experiment_charges_each_round_once_and_finishes(tmp_path, monkeypatch, after_commit):
    config = _config(tmp_path)
    _crash_in_round(monkeypatch, 3, after_commit=after_commit)
    with pytest.raises(Crash):
        _run(config)
    monkeypatch.undo()
    checkpoint = json.loads((tmp_path / "run" / "checkpoints" / "state.json").read_text())
    assert checkpoint["round"] == 2
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["status"] == "running"

    _run(config.replace(resume=True))
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["status"] == "finished" and history["aggregated_rounds"] == ROUNDS
    assert [r["round"] for r in history["rounds"] if r["round"]] == [1, 2, 3, 4]
    for owner in ("owner-0", "owner-1", "owner-2"):
        entries, events = _ledger_entries(config, owner)
        charges = Counter((e.run_id, e.round) for e in entries if e.kind == CHARGE)
        assert sorted(charges) == [(config.experiment_id, r) for r in range(1, ROUNDS + 1)]
        assert set(charges.values()) == {1}  # round 3 was released before the crash and re-sent, not re-charged
        assert entries[-1].cumulative_epsilon == pytest.approx(get_accountant("pld").epsilon(events, config.delta))
    audit = audit_run(tmp_path / "run")
    assert audit.ok, audit.summary()
    assert audit.unaggregated == []  # the re-sent round 3 updates were aggregated after the resume
    model = torch.load(tmp_path / "run" / "model.pt")
    assert set(model) == {"linear.weight", "linear.bias"}


def test_charged_but_never_aggregated_rounds_are_reported_and_still_count(tmp_path, monkeypatch):
    config = _config(tmp_path)
    _crash_in_round(monkeypatch, 3, after_commit=False)
    with pytest.raises(Crash):
        _run(config)
    monkeypatch.undo()
    audit = audit_run(tmp_path / "run")
    assert audit.ok, audit.summary()  # not a tampering: the files agree
    assert len(audit.unaggregated) == OWNERS
    assert all("round 3" in note and "never aggregated" in note for note in audit.unaggregated)
    entries, events = _ledger_entries(config)
    assert len(events) == 3  # round 3 counts in the owner's epsilon
    assert audit.epsilon["owner-1"]["lifetime"] == pytest.approx(get_accountant("pld").epsilon(events, config.delta))


def test_a_resume_refuses_changed_settings_and_a_missing_checkpoint(tmp_path, monkeypatch):
    config = _config(tmp_path)
    _crash_in_round(monkeypatch, 1, after_commit=False)
    with pytest.raises(Crash):
        _run(config)
    monkeypatch.undo()
    with pytest.raises(Exception, match="no checkpoint"):
        _run(config.replace(resume=True))
    other = _config(tmp_path / "b")
    _crash_in_round(monkeypatch, 2, after_commit=True)
    with pytest.raises(Crash):
        _run(other)
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="noise-multiplier"):
        _run(other.replace(resume=True, noise_multiplier=5.0))


def test_a_new_experiment_can_start_from_a_saved_model(tmp_path):
    first = _config(tmp_path, num_rounds=2)
    _run(first)
    second = settle(first.replace(run_dir=str(tmp_path / "second"), experiment_id="", num_rounds=1,
                                  initial_model=str(tmp_path / "run" / "model.pt")))
    _run(second)
    history = json.loads((tmp_path / "second" / "history.json").read_text())
    start = next(r for r in history["rounds"] if r["round"] == 0)["test_accuracy"]
    first_history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert start == pytest.approx(first_history["final_test_accuracy"], abs=1e-6)  # evaluated the saved model
    with pytest.raises(ConfigError, match="does not exist"):
        _run(first.replace(run_dir=str(tmp_path / "third"), experiment_id="", initial_model="/nowhere/model.pt"))
