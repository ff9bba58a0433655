"""Local training: DP-SGD really clips and really adds noise, and weights move cleanly."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch.utils.data import TensorDataset

from privfl.client.training import TrainingPlan, train_locally
from privfl.models import build_model

CPU = torch.device("cpu")


def _data(n: int = 120, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 16, generator=g) * 10  # large inputs: unclipped gradients are large
    return TensorDataset(x, (x.sum(1) > 80).long())


def _plan(**changes) -> TrainingPlan:
    base = dict(local_epochs=1, batch_size=20, learning_rate=0.5, momentum=0.0, dp=True,
                noise_multiplier=0.0, max_grad_norm=1.0, grad_sample_mode="hooks")
    return TrainingPlan(**{**base, **changes})


def _update_norm(before: dict, after: dict) -> float:
    return math.sqrt(sum(float(((after[k] - before[k]) ** 2).sum()) for k in before))


def _train(plan: TrainingPlan, *, seed: int = 0, noise_seed: int | None = 0, data=None):
    model = build_model("mlp", 16, 2, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        update = train_locally(model, data or _data(), plan, CPU, seed=seed, noise_seed=noise_seed)
    return before, update


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_clipping_bounds_the_update_without_noise(mode):
    clip, plan = 1e-3, _plan(max_grad_norm=1e-3, grad_sample_mode=mode)
    before, update = _train(plan)
    n, steps = 120, plan.local_epochs * plan.batches_per_epoch(120)
    # Each step moves by lr * (sum of clipped per-sample grads) / expected batch size,
    # and a Poisson batch holds at most n records.
    bound = plan.learning_rate * steps * clip * n / plan.batch_size
    assert _update_norm(before, update.state_dict) <= bound
    _, unclipped = _train(_plan(dp=False))
    assert _update_norm(before, unclipped.state_dict) > 100 * bound  # the bound is not trivially loose


def test_noise_changes_the_update_between_noise_seeds_and_is_reproducible():
    plan = _plan(noise_multiplier=1.0)
    before, a = _train(plan, noise_seed=1)
    _, b = _train(plan, noise_seed=2)
    _, a_again = _train(plan, noise_seed=1)
    assert _update_norm(a.state_dict, b.state_dict) > 1e-3
    assert _update_norm(a.state_dict, a_again.state_dict) == 0


def test_noise_seed_defaults_to_fresh_entropy():
    plan = _plan(noise_multiplier=1.0)
    _, a = _train(plan, noise_seed=None)
    _, b = _train(plan, noise_seed=None)
    assert _update_norm(a.state_dict, b.state_dict) > 1e-3


def test_recorded_event_is_opacus_poisson_rate_and_steps():
    plan = _plan(noise_multiplier=1.3, local_epochs=3)
    _, update = _train(plan)
    assert update.privacy_event == plan.privacy_event(120)
    assert update.privacy_event.sample_rate == pytest.approx(1 / 6)
    assert update.privacy_event.steps == 18


def test_state_dict_has_the_plain_module_keys_round_after_round():
    model = build_model("mlp", 16, 2, seed=0)
    keys = list(model.state_dict())
    plan = _plan(noise_multiplier=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for round_ in range(3):  # a fresh model each round, loaded from the last update
            update = train_locally(model, _data(), plan, CPU, seed=round_, noise_seed=round_)
            assert list(update.state_dict) == keys and not any("_module" in k for k in update.state_dict)
            model = build_model("mlp", 16, 2)
            model.load_state_dict(update.state_dict)


def test_tiny_owner_with_empty_poisson_batches_still_counts_every_step():
    plan = _plan(noise_multiplier=1.0, batch_size=1, local_epochs=5)
    _, update = _train(plan, data=_data(n=4))
    assert update.privacy_event.steps == 20  # empty batches are steps too
    assert all(torch.isfinite(v).all() for v in update.state_dict.values())


def test_non_private_training_records_no_event():
    _, update = _train(_plan(dp=False))
    assert update.privacy_event is None and update.num_examples == 120


# --------------------------------------------------------------------------- the per-sample-gradient mode


@pytest.mark.parametrize(("model", "batch_size", "expected", "fallback"), [
    ("mlp", 64, "per-layer", "ghost"), ("mlp", 128, "per-layer", "ghost"),  # linear layers: one pass per batch
    ("mlp", 16, "per-layer", "hooks"), ("mlp", 63, "per-layer", "hooks"),   # (tests/test_dpsgd_exact.py)
    ("logreg", 128, "per-layer", "hooks"),
    ("cnn", 128, "hooks", None),                        # convolutions: Opacus's hooks
])
def test_auto_picks_the_measured_faster_mode(model, batch_size, expected, fallback):
    from privfl.client.training import opacus_mode, per_sample_gradient_mode

    in_features = 64 if model == "cnn" else 16
    built = build_model(model, in_features, 10, seed=0)
    assert per_sample_gradient_mode("auto", built, batch_size) == expected
    assert per_sample_gradient_mode("functorch", built, batch_size) == "functorch"  # an explicit mode is kept
    if fallback:  # where the per-layer shortcut is not exact for a linear model (weight sharing, ...)
        assert opacus_mode(built, batch_size) == fallback


def test_auto_mode_trains_and_clips_like_the_mode_it_picks():
    clip = 1e-3
    plan = _plan(max_grad_norm=clip, grad_sample_mode="auto", batch_size=64)
    before, update = _train(plan)
    steps = plan.local_epochs * plan.batches_per_epoch(120)
    assert _update_norm(before, update.state_dict) <= plan.learning_rate * steps * clip * 120 / plan.batch_size
    assert update.privacy_event is not None and update.privacy_event.steps == steps
