"""Owner-level DP rounds end to end: every owner charged every round, epsilon as dp-accounting states it.

privfl's ServerApp and ClientApp run in this process against real ledgers (Flower's
runtime is not what these tests are about; secure aggregation runs Flower's own SecAgg+
stages through the same in-process grid).
"""

from __future__ import annotations

import json
from pathlib import Path

import dp_accounting
import pytest

from bench.inprocess_grid import run_apps
from privfl.client.app import app as client_app
from privfl.client.owner_ledger import close_owner_ledgers
from privfl.config import ExperimentConfig
from privfl.privacy.audit import audit_run
from privfl.privacy.ledger import OwnerLedger
from privfl.privacy.policy import load_policy_file, write_policy_file
from privfl.server.app import app as server_app
from privfl.server.run_dir import settle

OWNERS, ROUNDS, DELTA = 12, 3, 1e-5


def _run(tmp_path: Path, name: str = "run", owners: int = OWNERS, **changes) -> tuple[ExperimentConfig, dict]:
    values = dict(num_owners=owners, num_rounds=ROUNDS, run_dir=str(tmp_path / name), federated_evaluation="off",
                  dp=False, owner_dp=True, owner_noise_multiplier=1.2, owner_clipping_norm=1.0, delta=DELTA,
                  owner_epsilon_budget=50.0, learning_rate=0.5, batch_size=32)
    config = settle(ExperimentConfig(**{**values, **changes}))
    run_apps(server_app, client_app, owners, config.to_mapping())
    close_owner_ledgers()
    return config, json.loads((tmp_path / name / "history.json").read_text())


def _dp_accounting_epsilon(event: dp_accounting.DpEvent, relation, rounds: int, accountant: str) -> float:
    if accountant == "pld":
        acc = dp_accounting.pld.PLDAccountant(neighboring_relation=relation)
    else:
        acc = dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)
    acc.compose(event, rounds)
    return acc.get_epsilon(DELTA)


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_poisson_owner_sampling_charges_every_owner_every_round_as_dp_accounting_composes_it(tmp_path, accountant):
    config, history = _run(tmp_path, owner_sample_rate=0.25, accountant=accountant)
    rounds = [r for r in history["rounds"] if r["round"]]
    assert all(r["owner_level"]["charged"] == OWNERS for r in rounds)  # drawn or not, every owner pays every round
    assert sum(r["owner_level"]["sampled"] for r in rounds) < OWNERS * ROUNDS
    expected = _dp_accounting_epsilon(
        dp_accounting.PoissonSampledDpEvent(0.25, dp_accounting.GaussianDpEvent(1.2)),
        dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE, ROUNDS, accountant)
    for owner in history["owners"].values():
        assert owner["owner_epsilon"] == pytest.approx(expected, rel=0.01)
        assert owner["owner_rounds_charged"] == ROUNDS
    # "trained" counts the rounds an owner's update went into the aggregate: drawn ones only.
    for owner_id, owner in history["owners"].items():
        assert owner["rounds_trained"] == sum(owner_id in r["participants"] for r in rounds)
    assert sum(o["rounds_trained"] for o in history["owners"].values()) == sum(r["owner_level"]["sampled"]
                                                                             for r in rounds)
    assert audit_run(tmp_path / "run").ok


def test_fixed_size_owner_sampling_is_accounted_under_replace_one_and_differs_from_poisson(tmp_path):
    """m of N without replacement: dp-accounting's RDP at sigma/2 (replace-one moves the sum by 2C; its
    RDP for this event assumes C, google/differential-privacy#378), a valid bound above Poisson's."""
    _, fixed = _run(tmp_path, "fixed", owner_sampling="fixed", owners_per_round=3, accountant="rdp")
    _, poisson = _run(tmp_path, "poisson", owner_sample_rate=3 / OWNERS, accountant="rdp")
    expected = _dp_accounting_epsilon(
        dp_accounting.SampledWithoutReplacementDpEvent(OWNERS, 3, dp_accounting.GaussianDpEvent(1.2 / 2)),
        dp_accounting.NeighboringRelation.REPLACE_ONE, ROUNDS, "rdp")
    fixed_eps = {o["owner_epsilon"] for o in fixed["owners"].values()}
    assert len(fixed_eps) == 1 and next(iter(fixed_eps)) == pytest.approx(expected, rel=0.01)
    assert all(r["owner_level"]["sampled"] == 3 for r in fixed["rounds"] if r["round"])
    assert next(iter(fixed_eps)) > max(o["owner_epsilon"] for o in poisson["owners"].values())


def test_an_owner_that_does_not_accept_owner_level_rounds_refuses_them_signed(tmp_path):
    """Its policy's privacy units exclude 'owner': it is charged nothing and never drawn."""
    config = settle(ExperimentConfig(num_owners=4, run_dir=str(tmp_path / "run"), owner_dp=True, dp=False))
    from privfl.server import run_dir as artefacts
    from privfl.simulations.federation import simulated_federation
    from privfl.simulations.owners import enroll_simulated_owners

    where = artefacts.layout(config)
    enroll_simulated_owners(config, where, simulated_federation(config).owner_ids)
    policy_file = where.owner_dir("owner-1") / "policy.toml"
    write_policy_file(load_policy_file(policy_file).replace(privacy_units=("record",)), policy_file)
    secure_only = where.owner_dir("owner-2") / "policy.toml"
    write_policy_file(load_policy_file(secure_only).replace(require_secure_aggregation=True), secure_only)
    _, history = _run(tmp_path, owners=4, federation_dir=config.federation_dir, owner_sample_rate=1.0)
    first = next(r for r in history["rounds"] if r["round"] == 1)
    assert "privacy unit 'owner' is not one this owner accepts" in first["refused"]["owner-1"]
    assert "requires secure aggregation" in first["refused"]["owner-2"]
    assert {"owner-1", "owner-2"}.isdisjoint(first["participants"])
    with OwnerLedger.open_readonly(where.owner_dir("owner-1") / "ledger.db") as ledger:
        assert ledger.events("owner") == []


def test_both_units_in_one_run_are_accounted_separately_with_secure_aggregation(tmp_path):
    config, history = _run(tmp_path, owners=5, dp=True, owner_sample_rate=1.0, secure_aggregation=True,
                           noise_multiplier=2.3, learning_rate=5.0, batch_size=72, accountant="pld")
    rounds = [r for r in history["rounds"] if r["round"]]
    assert all(r["owner_level"]["secure"] and r["owner_level"]["aggregated"] == 5 for r in rounds)
    owner = history["owners"]["owner-1"]
    assert owner["rounds_trained"] == ROUNDS and owner["owner_rounds_charged"] == ROUNDS
    with OwnerLedger.open_readonly(Path(config.federation_dir) / "owners" / "owner-1" / "ledger.db") as ledger:
        record, owner_level = ledger.events("record"), ledger.events("owner")
        entries = ledger.entries()
    assert len(record) == len(owner_level) == ROUNDS
    from privfl.privacy.accountants import get_accountant

    pld = get_accountant("pld")
    assert owner["epsilon"] == pytest.approx(pld.epsilon(record, DELTA), rel=1e-9)
    assert owner["owner_epsilon"] == pytest.approx(pld.epsilon(owner_level, DELTA), rel=1e-9)
    assert {e.privacy_unit for e in entries} == {"record", "owner"}
    assert audit_run(tmp_path / "run").ok
