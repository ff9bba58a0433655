"""Owner-level empirical audit (issue 21): canary owners (Andrew et al., ICLR 2024), their statistics, its power.

The end-to-end runs use privfl's real ServerApp and ClientApp in this process
(bench/inprocess_grid.py, as tests/test_owner_level_round.py does) against real ledgers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from privfl.privacy.empirical import gaussian_delta, gaussian_epsilon, one_shot_estimate
from privfl.privacy.empirical.one_shot import cosines

DELTA = 1e-5

# ------------------------------------------------------------------ the statistics, against closed forms


@pytest.mark.parametrize("mu", [0.5, 1.0, 2.0, 3.0])
def test_gaussian_delta_is_the_closed_form_of_dong_roth_su(mu):
    # mu-GDP: delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2), evaluated directly.
    for eps in (0.0, 0.5, 1.0, 2.0, 4.0):
        expected = stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2)
        assert gaussian_delta(eps, mu) == pytest.approx(expected, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("mu", [0.3, 1.0, 2.0, 5.0])
def test_gaussian_epsilon_inverts_the_closed_form(mu):
    eps = gaussian_epsilon(mu, DELTA)
    assert eps > 0
    assert gaussian_delta(eps, mu) == pytest.approx(DELTA, rel=1e-6)


def test_gaussian_epsilon_of_the_gaussian_mechanism_is_its_sensitivity_over_noise():
    # The Gaussian mechanism with sensitivity 1 and noise sigma is (1/sigma)-GDP; composed T times,
    # sqrt(T)/sigma-GDP (Dong, Roth, Su, Corollary 3.3). Values at delta = 1e-5 from the closed form:
    # mu = 1 gives eps 4.3772 (solve Phi(-eps + 1/2) - e^eps Phi(-eps - 1/2) = 1e-5).
    assert gaussian_epsilon(1.0, DELTA) == pytest.approx(4.3772, abs=1e-3)
    assert gaussian_epsilon(math.sqrt(4) / 2.0, DELTA) == pytest.approx(gaussian_epsilon(1.0, DELTA))


@pytest.mark.parametrize("dim", [100, 650, 5000])
def test_cosine_of_a_random_direction_is_null_distributed_n0_1_over_d(dim):
    # A uniformly random unit direction's cosine with any fixed vector has mean 0 and variance exactly 1/d
    # (and is close to N(0, 1/d) for large d): the null distribution of the one-shot estimate.
    from privfl.simulations.canary_owners import unit_directions

    rng = np.random.default_rng(dim)
    fixed = rng.standard_normal(dim) * 3 + 1
    values = cosines(unit_directions(rng, 20000, dim), fixed)
    assert np.mean(values) == pytest.approx(0.0, abs=4 / math.sqrt(20000 * dim))
    assert np.var(values) == pytest.approx(1 / dim, rel=0.05)
    if dim >= 650:  # Kolmogorov-Smirnov against N(0, 1/d)
        assert stats.kstest(values * math.sqrt(dim), "norm").pvalue > 1e-3


def test_estimate_recovers_the_mu_of_a_simulated_gaussian_mechanism():
    # Cosines drawn as N(mu/sqrt(d), 1/d): the estimate's mu is (mean - null mean) / std, so its epsilon is
    # the Gaussian mechanism's epsilon at that mu.
    rng = np.random.default_rng(4)
    dim, mu = 650, 2.0
    observed = rng.normal(mu / math.sqrt(dim), 1 / math.sqrt(dim), 400)
    null = rng.normal(0, 1 / math.sqrt(dim), 4000)
    result = one_shot_estimate(observed, dim=dim, delta=DELTA, null_cosines=null)
    assert result.details["mu"] == pytest.approx(mu, rel=0.1)
    assert result.epsilon == pytest.approx(gaussian_epsilon(result.details["mu"], DELTA), rel=1e-9)
    assert result.kind == "estimate" and result.confidence is None


# ------------------------------------------------------------------ the canary owner at its ClientApp


def _owner_round_request(owners_dir: str, **changes):
    from privfl.config import ExperimentConfig
    from privfl.models import ModelSpec
    from privfl.protocol import OwnerRound, RoundRequest, TrainingPlan

    plan = TrainingPlan.from_config(ExperimentConfig(dp=False))
    terms = OwnerRound(noise_multiplier=1.0, sampling="poisson", sample_rate=1.0, sample_size=0, population=2,
                       clipping_norm=0.7, secure=False)
    values = dict(experiment_id="e-1", server_round=1, purpose="p", privacy_unit="owner",
                  model=ModelSpec("logreg", 4, 3), plan=plan, owners_dir=owners_dir, owner_round=terms)
    return RoundRequest(**{**values, **changes})


def _global_message():
    """A train message's content as the ClientApp reads it (only its global model is used here)."""
    from types import SimpleNamespace

    from flwr.app import ArrayRecord, RecordDict

    from privfl import protocol
    from privfl.models import build_model

    state = build_model("logreg", 4, 3, seed=0).state_dict()
    return SimpleNamespace(content=RecordDict({protocol.ARRAYS: ArrayRecord(state)})), \
        {k: v.clone() for k, v in state.items()}


def _owner(owner_id: str, simulated: bool):
    from types import SimpleNamespace

    return SimpleNamespace(owner_id=owner_id, simulated=simulated)


def _trained(state):
    from privfl.client.training import LocalUpdate

    return LocalUpdate(state_dict={k: v + 1.0 for k, v in state.items()}, num_examples=5, mean_loss=0.1,
                       privacy_event=None)


def test_a_simulated_canary_owners_update_is_its_direction_scaled_to_the_clip(tmp_path):
    from privfl.client.audit_canary import canary_update
    from privfl.client.owner_level import as_released
    from privfl.simulations.canary_owners import draw_canary_owners, flat_delta, place_canary_directions

    canaries = draw_canary_owners(2, 15, seed=1)  # logreg 4 -> 3: 12 weights + 3 biases
    place_canary_directions(tmp_path, canaries)
    msg, state = _global_message()
    request = _owner_round_request(str(tmp_path))
    update = canary_update(_owner(canaries.owner_ids[1], True), request, msg, _trained(state))
    released = as_released(update, request, msg)  # what leaves: the owner-level clipping comes after
    moved = flat_delta({k: v.numpy() for k, v in released.state_dict.items()}, {k: 0 * v.numpy()
                                                                               for k, v in state.items()})
    np.testing.assert_allclose(moved, 0.7 * canaries.directions[1], atol=1e-6)
    # An owner without a direction file, and a record-level round, train as ever.
    plain = _trained(state)
    assert canary_update(_owner("owner-0", True), request, msg, plain) is plain
    assert canary_update(_owner(canaries.owner_ids[1], True), _owner_round_request(str(tmp_path),
                         privacy_unit="record", owner_round=None), msg, plain) is plain


def test_a_deployed_node_is_never_a_canary_whatever_the_request_names(tmp_path):
    """The coordinator writes the request (owners-dir included): a deployed node never reads a canary file."""
    from privfl.client.audit_canary import canary_direction_file, canary_update
    from privfl.simulations.canary_owners import draw_canary_owners, place_canary_directions

    canaries = draw_canary_owners(2, 15, seed=2)
    place_canary_directions(tmp_path, canaries)
    msg, state = _global_message()
    request = _owner_round_request(str(tmp_path))
    deployed = _owner(canaries.owner_ids[0], simulated=False)
    assert canary_direction_file(deployed, request) is None
    plain = _trained(state)
    assert canary_update(deployed, request, msg, plain) is plain


@pytest.mark.usefixtures("flower_task_identity")
def test_a_deployed_institution_trains_as_ever_when_the_coordinator_names_a_canary_folder(tmp_path):
    """Through the ClientApp's own round: a deployed node (its policy in its own node config, no partition-id)
    whose owner id has a canary direction in the owners folder the request names is charged, trains with
    DP-SGD and releases its own clipped update, not the direction."""
    from dataclasses import replace

    from tests.owner_helpers import (
        CONFIG, both_units_owner, deployed_context, message, owner_round_terms, request, signed_entry,
    )
    from privfl import protocol
    from privfl.client.round import run_train_round
    from privfl.simulations.canary_owners import draw_canary_owners, flat_delta, place_canary_directions

    policy = both_units_owner(tmp_path)
    canaries = draw_canary_owners(2, 650, seed=3)  # logreg on 64 features, 10 classes
    canaries = type(canaries)(("st-mary", "other"), canaries.directions)
    hostile = tmp_path / "owners"  # the coordinator's choice of folder, holding a direction for st-mary
    place_canary_directions(hostile, canaries)
    terms = owner_round_terms()
    node = deployed_context({"policy": str(policy)})
    for stage in (protocol.OWNER_CHARGE_STAGE, protocol.TRAIN_STAGE):
        req = replace(request(CONFIG, 1, owners_dir=hostile, privacy_unit="owner"), stage=stage, owner_round=terms)
        msg = message(req)
        reply = run_train_round(msg, node)
        assert signed_entry(reply).is_charge, signed_entry(reply)  # charged at both stages, never refused
    released = reply[protocol.ARRAYS].to_torch_state_dict()
    start = msg.content[protocol.ARRAYS].to_torch_state_dict()
    moved = flat_delta({k: v.numpy() for k, v in released.items()}, {k: 0 * v.numpy() for k, v in start.items()})
    assert np.linalg.norm(moved) > 0  # an update left (a difference from the global model, clipped to C = 1)
    assert abs(float(moved @ canaries.directions[0]) / np.linalg.norm(moved)) < 0.5  # its own, not the direction


def test_the_owner_level_audit_refuses_a_deployment(tmp_path):
    from privfl.config import ConfigError, ExperimentConfig
    from privfl.simulations.canaries import prepare_audit
    from privfl.simulations.canary_owners import prepare_owner_audit

    config = ExperimentConfig(num_owners=2, dp=False, owner_dp=True, owner_epsilon_budget=10.0,
                              run_dir=str(tmp_path / "a"))
    with pytest.raises(ConfigError, match="simulation"):
        prepare_owner_audit(config.replace(deployment=True), config, 4)
    with pytest.raises(ConfigError, match="simulations only"):
        prepare_audit(config.replace(deployment=True), 0)


# ------------------------------------------------------------------ end to end, in process, and the proof of power

REAL_OWNERS, CANARY_OWNERS, ROUNDS, NOISE = 4, 20, 5, 5.0


def _audited_run(tmp_path: Path, name: str) -> tuple[float, object, dict]:
    """A small owner-level audit through privfl's own ServerApp and ClientApp: (claimed eps, estimate, history)."""
    from bench.inprocess_grid import run_apps
    from privfl.client.app import app as client_app
    from privfl.client.owner_ledger import close_owner_ledgers
    from privfl.config import ExperimentConfig
    from privfl.server.app import app as server_app
    from privfl.server.checkpoint import read_checkpoint
    from privfl.server.run_dir import layout, settle
    from privfl.simulations.canaries import prepare_audit
    from privfl.simulations.canary_owners import place_canary_directions, prepare_owner_audit
    from privfl.cli.audit import score_owner_level

    config = ExperimentConfig(num_owners=REAL_OWNERS, num_rounds=ROUNDS, dp=False, owner_dp=True,
                              owner_sampling="poisson", owner_sample_rate=1.0, owner_noise_multiplier=NOISE,
                              owner_clipping_norm=1.0, owner_epsilon_budget=100.0, delta=DELTA, learning_rate=0.5,
                              batch_size=32, local_epochs=1, federated_evaluation="off",
                              run_dir=str(tmp_path / name))
    audited, records = prepare_audit(config, 0)
    audited, canaries = prepare_owner_audit(config, audited, CANARY_OWNERS, seed=5)
    audited = settle(audited)
    place_canary_directions(layout(audited).owners_dir, canaries)
    run_apps(server_app, client_app, REAL_OWNERS + CANARY_OWNERS, audited.to_mapping())
    close_owner_ledgers()
    history = json.loads((tmp_path / name / "history.json").read_text())
    claimed = max(o["owner_epsilon"] for o in history["owners"].values())
    _, state = read_checkpoint(Path(audited.run_dir))
    lines, unit = score_owner_level(state, audited, records.features.shape[1], canaries, claimed)
    return claimed, (lines, unit), history


@pytest.mark.timeout(600)
def test_broken_owner_level_noise_is_caught_and_honest_noise_is_not(tmp_path, monkeypatch):
    """Noise off at the coordinator (a test-only switch) while every ledger still charges sigma 5: the one-shot
    estimate exceeds the claim by far; with the noise on it stays near the claim (it estimates, for q = 1, the
    very Gaussian mechanism the accountant composes)."""
    from privfl.server.owner_dp import OwnerLevelDP

    claimed, (honest_lines, honest), history = _audited_run(tmp_path, "honest")
    assert all(r["owner_level"]["aggregated"] == REAL_OWNERS + CANARY_OWNERS
               for r in history["rounds"] if r["round"])  # q = 1: every owner, canaries too, every round
    assert {o for o in history["owners"] if o.startswith("audit-canary-")} == set(honest["canary_owners"])
    assert "audit" in history["config"]["purpose"] and history["experiment"].endswith("-audit")
    monkeypatch.setattr(OwnerLevelDP, "noise_stddev", lambda self, population_size=None: 0.0)  # THE SWITCH
    broken_claim, (broken_lines, broken), _ = _audited_run(tmp_path, "broken")
    # sqrt(5) / 5 = 0.447-GDP: the claim is that mechanism's epsilon, as privfl's PLD accountant gives it.
    assert claimed == pytest.approx(gaussian_epsilon(math.sqrt(ROUNDS) / NOISE, DELTA), rel=0.02)
    assert broken_claim == pytest.approx(claimed)
    # Measured here: claim 1.76; broken estimate 26.7 (mu 4.3); honest estimate 0.67 (mu 0.19; the paper's
    # target for q = 1 is the claim's mu 0.447, and with 20 canaries mu's standard error is about 0.22).
    assert broken["estimate"] > 4 * claimed, (broken, claimed)  # refuted by a wide margin
    assert "exceeds the claim" in " ".join(broken_lines)
    assert honest["estimate"] < 3 * claimed, (honest, claimed)  # an estimate near the truth (mu < 1.15), not a bound
    assert honest["estimate"] < broken["estimate"] / 3
    assert honest["lower_bound"] is None and honest["kind"] == "estimate" and honest["confidence"] is None
    assert honest_lines[0].startswith(f"owner-level: claimed epsilon {claimed:.2f}, empirical estimate ")


def test_audit_command_takes_canary_owners():
    from privfl.cli import build_parser

    args = build_parser().parse_args(["audit", "digits-owner-dp", "--canary-owners", "30"])
    assert args.canary_owners == 30


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_privfl_audit_of_an_owner_level_experiment_prints_claim_and_estimate(tmp_path, capsys, monkeypatch):
    """One real audited run through Flower's simulation engine: canary owners are nodes like any owner."""
    import re

    from privfl.cli import main

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray"))
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    run_dir = tmp_path / "run"
    assert main(["audit", "digits-owner-dp", "--set", "num-owners=6", "--set", "num-rounds=3", "--set",
                 "owner-sample-rate=1.0", "--set", "owner-noise-multiplier=2.0", "--canary-owners", "4",
                 "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    line = re.search(r"^owner-level: claimed epsilon (\d+\.\d\d), empirical estimate (\d+\.\d\d) \(one-shot Gaussian "
                     r"fit over 4 canary owners: an estimate, not a bound\)$", out, re.MULTILINE)
    assert line, out
    assert "record-level:" not in out  # dp = false: no record-level claim, no canary records
    history = json.loads((run_dir / "history.json").read_text())
    assert history["experiment"] == "digits-owner-dp-audit" and "canary owners" in history["config"]["purpose"]
    canaries = sorted(o for o in history["owners"] if o.startswith("audit-canary-"))
    assert len(canaries) == 4 and all(history["owners"][o]["rounds_trained"] == 3 for o in canaries)
    record = json.loads((run_dir / "audit" / "result.json").read_text())
    unit = record["units"]["owner"]
    assert unit["claimed_epsilon"] == pytest.approx(float(line.group(1)), abs=0.005)
    assert unit["estimate"] == pytest.approx(float(line.group(2)), abs=0.005)
    assert unit["lower_bound"] is None and unit["confidence"] is None and unit["kind"] == "estimate"
    assert "record" not in record["units"] and record["canaries"] == 0
    # the run's own report, written again after scoring, shows the estimate beside the claim
    report = json.loads((run_dir / "report.json").read_text())
    shown = next(u for u in report["empirical_audit"]["units"] if u["privacy_unit"] == "owner")
    assert shown["estimate"] == pytest.approx(unit["estimate"]) and "not a bound" in shown["meaning"]
    assert "empirical" in (run_dir / "report.html").read_text(encoding="utf-8").lower()
