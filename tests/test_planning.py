"""Per-owner noise planning: every owner ends at its target (or at its remaining budget), none above it."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.inprocess_grid import run_apps
from privfl.client.app import app as client_app
from privfl.client.owner_ledger import close_owner_ledgers
from privfl.config import ExperimentConfig
from privfl.privacy.accountants import get_accountant
from privfl.privacy.budget import PrivacyBudget, decide_next_release
from privfl.privacy.events import PoissonSubsampledGaussian
from privfl.privacy.planning import plan_noise
from privfl.server.app import app as server_app
from privfl.server.run_dir import settle
from privfl.simulations.federation import simulated_federation

DELTA = 1e-5


@settings(max_examples=12, deadline=None)
@given(records=st.integers(20, 600), batch=st.sampled_from([16, 48, 128]), rounds=st.integers(1, 30),
       target=st.floats(0.5, 8.0), accountant=st.sampled_from(["pld", "rdp"]))
def test_a_planned_owner_ends_within_two_percent_below_its_target_and_never_above(records, batch, rounds, target,
                                                                                  accountant):
    plan = plan_noise(accountant=accountant, target_epsilon=target, delta=DELTA, records=records, batch_size=batch,
                      local_epochs=1, rounds=rounds)
    spent = get_accountant(accountant).epsilon([PoissonSubsampledGaussian(
        plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)] * rounds, DELTA)
    assert target * 0.98 <= spent <= target * (1 + 1e-9)
    assert spent == pytest.approx(plan.experiment_epsilon, rel=1e-9)


def test_an_owner_with_little_budget_left_plans_more_noise_to_end_at_its_budget():
    earlier = [PoissonSubsampledGaussian(1.0, 0.5, 40)]
    pld = get_accountant("pld")
    spent = pld.epsilon(earlier, DELTA)
    plan = plan_noise(accountant="pld", target_epsilon=3.0, delta=DELTA, records=144, batch_size=72, local_epochs=1,
                      rounds=20, spent=earlier, budget=spent + 0.2)
    assert plan.limited_by == "budget"
    assert spent + 0.2 >= plan.lifetime_epsilon >= (spent + 0.2) * 0.98
    free = plan_noise(accountant="pld", target_epsilon=3.0, delta=DELTA, records=144, batch_size=72, local_epochs=1,
                      rounds=20)
    assert free.limited_by == "target" and plan.noise_multiplier > free.noise_multiplier


def test_pld_enforcement_refuses_exactly_at_the_budget():
    event = PoissonSubsampledGaussian(1.5, 0.25, 8)
    pld = get_accountant("pld")
    budget = PrivacyBudget(epsilon=pld.epsilon([event] * 5, DELTA), delta=DELTA)  # room for exactly 5 rounds
    assert decide_next_release([event] * 4, event, budget, pld).allowed  # the 5th fits (== budget)
    assert not decide_next_release([event] * 5, event, budget, pld).allowed  # the 6th does not


def test_uneven_owners_each_end_at_the_target_in_a_run(tmp_path):
    """Label-skewed owners of different sizes: one target, each owner its own noise, each within 2% below."""
    config = settle(ExperimentConfig(num_owners=5, partitioning="dirichlet", dirichlet_alpha=0.5, num_rounds=3,
                                     target_epsilon=2.0, accountant="pld", batch_size=32, epsilon_budget=10.0,
                                     run_dir=str(tmp_path / "run"), federated_evaluation="off"))
    run_apps(server_app, client_app, 5, config.to_mapping())
    close_owner_ledgers()
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    sizes = {o: len(t) for o, t in zip(simulated_federation(config).owner_ids, simulated_federation(config).train)}
    assert len(set(sizes.values())) > 1  # uneven owners
    last = {r["owner_id"]: r for r in history["rounds"][-1]["receipts"]}
    sigmas = {o: r["noise_multiplier"] for o, r in last.items()}
    assert len(set(sigmas.values())) > 1  # each planned its own noise
    for owner in sizes:
        assert 2.0 * 0.98 <= history["owners"][owner]["epsilon"] <= 2.0 * (1 + 1e-6), owner


def test_a_huge_target_never_makes_the_planner_ask_about_unaccountable_noise():
    """A coordinator's target epsilon of 10^6 once made the owner bisect down to sigma 0.001,
    where dp-accounting's PLD asked for tens of GB and the node was killed (found by hypothesis)."""
    from privfl.privacy.accountants.base import bisect_noise
    from privfl.privacy.events import LEAST_NOISE

    asked: list[float] = []

    def epsilon_at(sigma: float) -> float:
        asked.append(sigma)
        return 1.0 / sigma

    assert bisect_noise(epsilon_at, 1e6) == LEAST_NOISE
    assert bisect_noise(epsilon_at, 5.0) == pytest.approx(0.2, rel=2e-3)
    assert min(asked) >= LEAST_NOISE
    plan = plan_noise(accountant="pld", target_epsilon=1e6, delta=1e-5, records=100, batch_size=10,
                      local_epochs=1, rounds=3)
    assert plan.noise_multiplier == LEAST_NOISE
