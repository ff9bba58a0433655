"""A malformed update is rejected with a logged reason while the round goes on.

A malicious (or broken) owner signs and sends an update of the wrong shape, with NaN
or Inf values, or farther from the global model than DP-SGD with the round's plan can
move it.  privfl's ServerApp and ClientApp run in this process; the bad owner's client
is privfl's own with its training step replaced, so its charge and receipt are genuine.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bench.inprocess_grid import run_apps
from privfl.client import round as client_round
from privfl.client.app import app as client_app
from privfl.client.owner_ledger import close_owner_ledgers
from privfl.config import ExperimentConfig
from privfl.privacy.audit import audit_run
from privfl.privacy.ledger import CHARGE, OwnerLedger
from privfl.server.app import app as server_app
from privfl.server.run_dir import settle

OWNERS, ROUNDS = 4, 2


def _bad(kind: str):
    def corrupt(update):
        state = OrderedDict(update.state_dict)
        if kind == "shape":
            state["linear.weight"] = torch.zeros(3, 3)
        elif kind == "nan":
            state["linear.bias"] = torch.full_like(state["linear.bias"], float("nan"))
        elif kind == "huge":
            state["linear.weight"] = state["linear.weight"] + 1e4
        return replace(update, state_dict=state)
    return corrupt


@pytest.mark.parametrize("kind, reason", [
    ("shape", "has shape [3, 3]"),
    ("nan", "holds NaN or Inf values"),
    ("huge", "the most DP-SGD with this plan can move it"),
])
def test_a_malformed_update_is_dropped_with_its_reason_and_the_round_goes_on(tmp_path, monkeypatch, kind, reason):
    train = client_round._train

    def malicious_train(owner, request, msg):
        update = train(owner, request, msg)
        return _bad(kind)(update) if owner.owner_id == "owner-1" else update

    monkeypatch.setattr(client_round, "_train", malicious_train)
    config = settle(ExperimentConfig(num_owners=OWNERS, num_rounds=ROUNDS, run_dir=str(tmp_path / "run"),
                                     federated_evaluation="off"))
    run_apps(server_app, client_app, OWNERS, config.to_mapping())
    close_owner_ledgers()
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    for record in (r for r in history["rounds"] if r["round"]):
        assert record["aggregated"] == OWNERS - 1  # the round went on with the others
        assert reason in record["rejected_updates"]["owner-1"]
        assert any("owner-1" in failure and reason in failure for failure in record["failures"])
    with OwnerLedger.open_readonly(Path(config.federation_dir) / "owners" / "owner-1" / "ledger.db") as ledger:
        assert [e.kind for e in ledger.entries()] == [CHARGE] * ROUNDS  # its charges stand: it released them
    audit = audit_run(tmp_path / "run")
    assert audit.ok, audit.summary()
    assert history["final_test_accuracy"] > 0.5
