"""Empirical privacy audit (issue 21): the statistics, the canaries, and the audit's power."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from privfl.privacy.empirical import (
    gaussian_delta, gaussian_epsilon, guesses_from_scores, one_run_audit, one_run_epsilon, one_run_p_value,
    one_shot_estimate,
)
from privfl.privacy.empirical.one_run import all_correct_epsilon
from privfl.privacy.empirical.one_shot import cosines

# ------------------------------------------------------------------ one run (Steinke, Nasr, Jagielski 2023)


@pytest.mark.parametrize("r", [1, 10, 100, 1000])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_all_correct_pure_bound_is_the_closed_form(r, confidence):
    # Under pure eps-DP each guess is right with probability p = e^eps/(1+e^eps): P[all r right] = p^r.
    # The claim is rejected while p^r <= beta, so eps* = log(p / (1 - p)) at p = beta^(1/r).
    p = (1 - confidence) ** (1 / r)
    expected = max(0.0, math.log(p / (1 - p)))  # one guess cannot reject eps = 0 at beta < 1/2
    assert one_run_epsilon(max(r, 2), r, r, delta=0, confidence=confidence) == pytest.approx(expected, rel=1e-5)


def test_paper_example_scale():
    # 100 guesses all right, beta 0.05: e^eps/(1+e^eps) = 0.05^(1/100) = 0.97048..., eps = 3.4930.
    assert one_run_epsilon(1000, 100, 100, delta=0, confidence=0.95) == pytest.approx(3.4930, abs=1e-3)


@pytest.mark.parametrize("r", [2, 10, 100, 1000])
def test_chance_level_guesses_reject_nothing(r):
    assert one_run_epsilon(1000, r, r // 2, delta=0, confidence=0.95) == 0.0
    assert one_run_epsilon(1000, r, r // 2, delta=1e-5, confidence=0.95) == 0.0


def test_pure_p_value_is_the_binomial_tail():
    q = math.exp(1.0) / (1 + math.exp(1.0))
    assert one_run_p_value(500, 80, 60, 1.0, 0.0) == pytest.approx(stats.binom.sf(59, 80, q), rel=1e-12)


def test_delta_term_is_theorem_5_2():
    # f(v) + 2 m delta max_i (f(v - i) - f(v)) / i, written out term by term.
    m, r, v, eps, delta = 200, 40, 33, 1.2, 1e-4
    q = math.exp(eps) / (1 + math.exp(eps))

    def f(u):
        return 1.0 if u <= 0 else sum(math.comb(r, j) * q**j * (1 - q) ** (r - j) for j in range(u, r + 1))

    expected = f(v) + 2 * m * delta * max((f(v - i) - f(v)) / i for i in range(1, m + 1))
    assert one_run_p_value(m, r, v, eps, delta) == pytest.approx(expected, rel=1e-9)


def test_the_bound_is_where_the_p_value_crosses_beta():
    m, r, v, delta = 1000, 200, 170, 1e-5
    eps = one_run_epsilon(m, r, v, delta=delta, confidence=0.95)
    assert eps > 0
    assert one_run_p_value(m, r, v, eps, delta) <= 0.05 + 1e-9
    assert one_run_p_value(m, r, v, eps * 1.001 + 1e-6, delta) > 0.05


def test_delta_only_lowers_the_bound():
    pure = one_run_epsilon(1000, 200, 170, delta=0, confidence=0.95)
    with_delta = one_run_epsilon(1000, 200, 170, delta=1e-3, confidence=0.95)
    assert 0 < with_delta < pure


def test_guesses_from_scores_counts_both_ends():
    scores = [5, 4, 3, 2, 1, 0]
    included = [True, True, False, True, False, False]
    assert guesses_from_scores(scores, included, 2, 0) == (2, 2)
    assert guesses_from_scores(scores, included, 3, 2) == (5, 4)  # third "in" guess wrong; both "out" right
    with pytest.raises(ValueError):
        guesses_from_scores(scores, included, 4, 4)


def test_audit_of_perfectly_separable_scores_reaches_the_largest_bound():
    rng = np.random.default_rng(0)
    included = rng.random(1000) < 0.5
    scores = included.astype(float) + rng.random(1000) * 0.1  # every included canary scores above every other
    result = one_run_audit(scores, included, delta=1e-5, confidence=0.95)
    assert result.kind == "lower bound" and result.confidence == 0.95
    assert result.details["correct"] == result.details["guesses"]
    assert result.epsilon > 2.0


def test_audit_of_scores_independent_of_the_coins_is_near_zero():
    rng = np.random.default_rng(1)
    bounds = [one_run_audit(rng.random(1000), rng.random(1000) < 0.5, delta=1e-5).epsilon for _ in range(20)]
    assert max(bounds) < 0.5
    assert sum(b > 0 for b in bounds) <= 2  # 95% confidence with Bonferroni: rarely above 0 by chance


@settings(max_examples=60, deadline=None)
@given(r=st.integers(1, 300), data=st.data(), delta=st.sampled_from([0.0, 1e-6, 1e-3]),
       confidence=st.sampled_from([0.8, 0.95, 0.99]))
def test_bound_monotone_in_correct_guesses_and_within_what_the_observation_allows(r, data, delta, confidence):
    v = data.draw(st.integers(0, r - 1))
    m = data.draw(st.integers(r, 3 * r + 2))
    lower = one_run_epsilon(m, r, v, delta=delta, confidence=confidence)
    higher = one_run_epsilon(m, r, v + 1, delta=delta, confidence=confidence)
    assert 0.0 <= lower <= higher + 1e-6
    assert higher <= all_correct_epsilon(r, confidence) + 1e-6  # nothing exceeds r of r right, pure DP
    assert one_run_epsilon(m, r, v + 1, delta=0.0, confidence=confidence) >= higher - 1e-6


# ------------------------------------------------------------------ one shot (Andrew et al. 2024)


@pytest.mark.parametrize("mu", [0.25, 0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("delta", [1e-5, 1e-3])
def test_gaussian_epsilon_matches_dp_accounting(mu, delta):
    # A Gaussian mechanism with noise multiplier 1/mu is mu-GDP: dp-accounting's PLD of one Gaussian
    # event gives its (eps, delta) curve numerically.
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    accountant.compose(dp_accounting.GaussianDpEvent(noise_multiplier=1 / mu))
    assert gaussian_epsilon(mu, delta) == pytest.approx(accountant.get_epsilon(delta), abs=2e-3, rel=2e-3)


def test_gaussian_delta_closed_form_at_zero():
    # delta(0) = Phi(mu/2) - Phi(-mu/2): the total variation distance of N(0,1) and N(mu,1).
    assert gaussian_delta(0.0, 1.0) == pytest.approx(stats.norm.cdf(0.5) - stats.norm.cdf(-0.5), rel=1e-12)
    assert gaussian_epsilon(0.0, 1e-5) == 0.0


def test_one_shot_null_gives_a_small_estimate_and_a_shift_a_larger_one():
    rng = np.random.default_rng(2)
    dim, k = 5000, 200
    directions = rng.standard_normal((k, dim))
    noise_only = rng.standard_normal(dim)
    null = one_shot_estimate(cosines(directions, noise_only), dim=dim, delta=1e-5)
    assert null.kind == "estimate" and null.details["cosine_std"] == pytest.approx(dim ** -0.5, rel=0.2)
    assert null.epsilon < 1.0
    # The delta contains the sum of unit canary directions plus Gaussian noise of std sigma per coordinate.
    # In high dimension each canary's cosine is about N(1 / (sigma sqrt(d)), 1/d) relative to the delta's
    # norm, i.e. the Gaussian mechanism with mu = 1 / sigma: the estimate should be near its epsilon.
    sigma = 0.5
    units = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    delta_vector = units.sum(axis=0) + sigma * rng.standard_normal(dim)
    inserted = one_shot_estimate(cosines(units, delta_vector), dim=dim, delta=1e-5,
                                 null_cosines=cosines(rng.standard_normal((k, dim)), delta_vector))
    assert inserted.details["mu"] == pytest.approx(1 / math.sqrt(sigma**2 + k / dim), rel=0.35)
    assert inserted.epsilon > 2 * null.epsilon + 1


# ------------------------------------------------------------------ canaries in the simulation's data setup


def _small_config(**changes):
    from privfl.config import ExperimentConfig

    return ExperimentConfig(**{"num_owners": 2, "num_rounds": 20, "local_epochs": 3, "batch_size": 32,
                               "noise_multiplier": 25.0, **changes})


def test_canaries_are_planted_by_their_coins_only_in_the_audit_data(tmp_path):
    from privfl.datafiles import load_data_folder
    from privfl.simulations.canaries import AUDIT_SUFFIX, Canaries, prepare_audit
    from privfl.simulations.federation import simulated_federation

    config = _small_config(run_dir=str(tmp_path / "run"))
    audited, canaries = prepare_audit(config, 40, seed=3)
    assert audited.experiment == config.experiment + AUDIT_SUFFIX and "audit" in audited.purpose
    folder = load_data_folder(audited.data_dir, num_classes=audited.num_classes)
    plain = simulated_federation(config)
    for index, owner_id in enumerate(plain.owner_ids):
        planted = canaries.planted_at(index)
        assert len(folder.owners[owner_id]) == len(plain.train[index]) + len(planted)
        np.testing.assert_array_equal(folder.owners[owner_id].features[len(plain.train[index]):],
                                      canaries.features[planted])
    assert 0 < canaries.included.sum() < 40
    saved = Canaries.load(tmp_path / "run" / "audit" / "canaries.npz")  # the secret, outside the data folder
    np.testing.assert_array_equal(saved.included, canaries.included)
    assert not any(p.name == "canaries.npz" for p in Path(audited.data_dir).rglob("*"))
    # The simulation's own data is untouched: canaries exist only in the audit's folder.
    assert len(simulated_federation(config).train[0]) == len(plain.train[0])


def test_audit_refuses_a_deployment_and_a_shared_federation_folder(tmp_path):
    from privfl.config import ConfigError
    from privfl.simulations.canaries import prepare_audit

    with pytest.raises(ConfigError, match="simulated owners"):
        prepare_audit(_small_config(run_dir=str(tmp_path / "a"), deployment=True), 10)
    with pytest.raises(ConfigError, match="fresh federation folder"):
        prepare_audit(_small_config(run_dir=str(tmp_path / "b"), federation_dir=str(tmp_path / "f")), 10)


# ------------------------------------------------------------------ proof of power


def _train_federation_in_process(config, canaries, noise_multiplier):
    """FedAvg over the owners, each round trained by the ClientApp's own DP-SGD function (client/training.py).

    ``noise_multiplier`` is what Opacus really adds; the claim is computed from ``config``'s planned one.
    Returns the final model and each owner's planned DP events (what its ledger would hold).
    """
    import dataclasses

    import torch
    from torch.utils.data import TensorDataset

    from privfl.client.training import train_locally
    from privfl.models import build_model
    from privfl.privacy.events import PoissonSubsampledGaussian
    from privfl.protocol import TrainingPlan
    from privfl.simulations.canaries import with_canaries
    from privfl.simulations.federation import simulated_federation

    federation = with_canaries(simulated_federation(config), canaries)
    plan = TrainingPlan.from_config(config)
    actual = dataclasses.replace(plan, noise_multiplier=noise_multiplier)  # the test-only switch
    model = build_model(config.model, federation.num_features, federation.num_classes, seed=0)
    claimed: dict[str, list] = {o: [] for o in federation.owner_ids}
    for round_number in range(config.num_rounds):
        states, sizes = [], []
        for index, (owner_id, data) in enumerate(zip(federation.owner_ids, federation.train)):
            local = build_model(config.model, federation.num_features, federation.num_classes)
            local.load_state_dict(model.state_dict())
            update = train_locally(local, TensorDataset(torch.as_tensor(data.features), torch.as_tensor(data.labels)),
                                   actual, torch.device("cpu"), seed=1000 * round_number + index)
            states.append(update.state_dict)
            sizes.append(update.num_examples)
            steps = update.privacy_event.steps
            claimed[owner_id].append(PoissonSubsampledGaussian(noise_multiplier=plan.noise_multiplier,
                                                               sample_rate=update.privacy_event.sample_rate,
                                                               steps=steps))
        model.load_state_dict({k: sum(s[k] * n for s, n in zip(states, sizes)) / sum(sizes) for k in states[0]})
    return model, claimed


@pytest.mark.timeout(900)
def test_broken_noise_is_caught_and_honest_training_is_not():
    """With Opacus's noise forced to 0 while the claim keeps the planned sigma, the bound exceeds the claim."""
    from privfl.privacy.ledger.owner import compute_epsilon
    from privfl.simulations.canaries import canary_losses, draw_canaries
    from privfl.simulations.federation import simulated_federation

    config = _small_config()
    canaries = draw_canaries(simulated_federation(config), 100, seed=7)
    results = {}
    for label, noise in (("broken", 0.0), ("honest", config.noise_multiplier)):
        model, claimed = _train_federation_in_process(config, canaries, noise)
        claim = max(compute_epsilon("pld", events, config.delta) for events in claimed.values())
        bound = one_run_audit(-canary_losses(model, canaries), canaries.included, delta=config.delta,
                              confidence=0.95)
        results[label] = (claim, bound.epsilon)
    (claim, broken), (_, honest) = results["broken"], results["honest"]
    # Measured here: claim 0.21 (sigma 25 planned), broken bound 0.88 (89 of 100 guesses right), honest 0.0.
    assert claim < 0.3, results  # a small claim
    assert broken > 3 * claim, results  # the lower bound refutes the claim by a wide margin
    assert honest <= claim, results  # and the honest run does not (a lower bound at most the truth)


# ------------------------------------------------------------------ the command


def test_audit_is_a_subcommand():
    from privfl.cli import build_parser

    args = build_parser().parse_args(["audit", "quickstart", "--canaries", "50", "--confidence", "0.9"])
    assert args.command == "audit" and args.canaries == 50 and args.confidence == 0.9


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_privfl_audit_quickstart_prints_claim_and_bound(tmp_path, capsys, monkeypatch):
    """One real audited run through Flower's simulation engine (small: 3 rounds, 100 canaries)."""
    import json
    import re

    from privfl.cli import main

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray"))
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    run_dir = tmp_path / "run"
    assert main(["audit", "quickstart", "--set", "num-rounds=3", "--canaries", "100", "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    line = re.search(r"^record-level: claimed epsilon (\d+\.\d\d), empirical lower bound (\d+\.\d\d) "
                     r"\(95% confidence\)$", out, re.MULTILINE)
    assert line, out
    claimed, bound = float(line.group(1)), float(line.group(2))
    history = json.loads((run_dir / "history.json").read_text())
    assert history["experiment"] == "quickstart-audit" and "audit" in history["config"]["purpose"]
    table = [float(m) for m in re.findall(r"^owner-\d+\s+\S+\s+(\d+\.\d{3})", out, re.MULTILINE)]
    assert table and claimed == pytest.approx(max(table), abs=0.006)  # the summary's "this exp." figure
    assert bound <= claimed
    record = json.loads((run_dir / "audit" / "result.json").read_text())
    assert record["audit"] is True and record["units"]["record"]["lower_bound"] == pytest.approx(bound, abs=0.005)
