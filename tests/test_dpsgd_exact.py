"""The per-layer DP-SGD path (client/linear_dpsgd.py) clips, noises and scales exactly as DP-SGD must.

Checked three ways: against a reference computed record by record (per-sample gradients by
an explicit loop, clip each to C, sum, add the same noise draw, divide by the expected batch
size); against Opacus itself, end to end through ``train_locally`` with the same secret
seeds (same Poisson batches, same noise, same weights); and the reference comparison must
fail when clipping is skipped, so it cannot pass vacuously.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from privfl.client import linear_dpsgd
from privfl.client.training import PER_LAYER_MODE, TrainingPlan, per_sample_gradient_mode, train_locally
from privfl.models import build_model
from privfl.task import ClassificationLoss

CPU = torch.device("cpu")
CLIP = 0.5


def _batch(n: int = 24, features: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g, dtype=torch.float64)
    return x, (x.sum(1) > 0).long()


def _model(name: str = "mlp") -> nn.Module:
    return build_model(name, 16, 2, seed=0).double()


def _reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, clip: float | None) -> tuple[list, torch.Tensor]:
    """Per-record gradients by an explicit loop, each clipped to ``clip`` (None: not clipped), summed."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = ClassificationLoss()
    total = [torch.zeros_like(p) for p in params]
    norms = []
    for i in range(len(y)):
        grads = torch.autograd.grad(loss(model(x[i:i + 1]), y[i:i + 1]), params)
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        norms.append(norm)
        factor = min(1.0, clip / (float(norm) + linear_dpsgd.CLIP_EPSILON)) if clip is not None else 1.0
        total = [t + factor * g for t, g in zip(total, grads)]
    return total, torch.stack(norms)


def _noised(summed: list, noise: list, expected_batch_size: int) -> list:
    return [(s + z) / expected_batch_size for s, z in zip(summed, noise)]


def _fused(model: nn.Module, x: torch.Tensor, y: torch.Tensor, clip: float) -> list:
    stack = linear_dpsgd.LinearStack(model)
    try:
        summed, _ = linear_dpsgd.clipped_gradient_sum(stack, ClassificationLoss(reduction="none"), x, y, clip)
    finally:
        stack.close()
    return summed


@pytest.mark.parametrize("name", ["mlp", "logreg"])
def test_clipped_noised_gradient_equals_the_per_record_reference(name):
    model, (x, y) = _model(name), _batch()
    params = [p for p in model.parameters() if p.requires_grad]
    noise = linear_dpsgd.noise_like(params, 1.3 * CLIP, torch.Generator().manual_seed(7))  # one fixed draw
    expected_batch_size = 20

    _, norms = _reference(model, x, y, None)
    clip = float(norms.median())  # half the records clipped, half not
    assert (norms > clip).sum() >= 8 and (norms < clip).sum() >= 8
    reference, _ = _reference(model, x, y, clip)
    want = _noised(reference, noise, expected_batch_size)
    got = _noised(_fused(model, x, y, clip), noise, expected_batch_size)
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_the_comparison_fails_when_clipping_is_skipped():
    model, (x, y) = _model(), _batch()
    reference, _ = _reference(model, x, y, CLIP)
    unclipped = _fused(model, x, y, float("inf"))  # the fused path with clipping skipped
    gap = max(float((u - r).abs().max()) for u, r in zip(unclipped, reference))
    assert gap > 0.1  # 1e11 times the tolerance of the test above
    unclipped_reference, _ = _reference(model, x, y, None)
    for u, r in zip(unclipped, unclipped_reference):  # and it is exactly the unclipped sum
        torch.testing.assert_close(u, r, rtol=1e-10, atol=1e-12)


def test_an_empty_batch_gives_zero_before_noise():
    model = _model()
    summed = _fused(model, torch.zeros(0, 16, dtype=torch.float64), torch.zeros(0, dtype=torch.long), CLIP)
    assert all(float(s.abs().max()) == 0 for s in summed)


def test_noise_is_opacus_draw_in_parameter_order():
    from opacus.optimizers.optimizer import _generate_noise

    params = [p for p in build_model("mlp", 16, 2, seed=0).parameters()]
    ours = linear_dpsgd.noise_like(params, 0.7, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    theirs = [_generate_noise(std=0.7, reference=p.detach(), generator=g) for p in params]
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- end to end against Opacus


def _data(n: int, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 16, generator=g) * 3
    return TensorDataset(x, (x.sum(1) > 24).long())


def _train(mode: str, data: TensorDataset, model: str = "mlp", **plan_changes):
    plan = dict(local_epochs=2, batch_size=64, learning_rate=0.5, momentum=0.9, dp=True, noise_multiplier=1.1,
                max_grad_norm=0.5, grad_sample_mode=mode)
    built = build_model(model, 16, 2, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train_locally(built, data, TrainingPlan(**{**plan, **plan_changes}), CPU, seed=3, noise_seed=4)


@pytest.mark.parametrize(("model", "opacus_mode", "n", "batch_size"), [
    ("mlp", "ghost", 300, 64), ("mlp", "hooks", 300, 16), ("logreg", "hooks", 300, 64),
    ("mlp", "hooks", 4, 1),  # a tiny owner: empty Poisson batches, noise-only steps
])
def test_auto_trains_exactly_as_opacus_with_the_same_secret_seeds(model, opacus_mode, n, batch_size):
    data = _data(n)
    ours = _train("auto", data, model, batch_size=batch_size)
    theirs = _train(opacus_mode, data, model, batch_size=batch_size)
    assert ours.privacy_event == theirs.privacy_event
    for k in theirs.state_dict:
        torch.testing.assert_close(ours.state_dict[k], theirs.state_dict[k], rtol=1e-5, atol=1e-5)
    moved = max(float((theirs.state_dict[k] - build_model(model, 16, 2, seed=0).state_dict()[k]).abs().max())
                for k in theirs.state_dict)
    assert moved > 1e-2  # the runs trained: equality is not that of two untouched models


def test_auto_really_takes_the_per_layer_path(monkeypatch):
    calls = []
    real = linear_dpsgd.clipped_gradient_sum
    monkeypatch.setattr(linear_dpsgd, "clipped_gradient_sum", lambda *a, **k: calls.append(1) or real(*a, **k))
    _train("auto", _data(300))
    assert calls
    assert per_sample_gradient_mode("auto", build_model("mlp", 16, 2), 64) == PER_LAYER_MODE


def test_batches_and_noise_come_from_the_os_entropy(monkeypatch):
    import secrets

    data = _data(300)
    plan = TrainingPlan(local_epochs=1, batch_size=64, learning_rate=0.5, momentum=0.0, dp=True,
                        noise_multiplier=1.0, max_grad_norm=0.5, grad_sample_mode="auto")

    def run(draws: list[int]):
        monkeypatch.setattr(secrets, "randbits", lambda k: draws.pop(0))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return train_locally(build_model("mlp", 16, 2, seed=0), data, plan, CPU).state_dict

    a, a_again, other_noise, other_batches = run([1, 2]), run([1, 2]), run([1, 5]), run([9, 2])
    assert all(torch.equal(a[k], a_again[k]) for k in a)  # both generators are seeded from secrets.randbits
    assert any(not torch.equal(a[k], other_noise[k]) for k in a)
    assert any(not torch.equal(a[k], other_batches[k]) for k in a)


class _Shared(nn.Module):
    """One linear layer applied twice: the per-layer shortcut is not exact, so Opacus trains it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(torch.relu(self.a(x)))))


class _InPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu_(self.a(x)))


@pytest.mark.parametrize("model", [_Shared, _InPlace])
def test_models_the_shortcut_is_not_exact_for_are_refused_by_it(model):
    x = torch.randn(4, 16)
    assert not linear_dpsgd.supports(model(), x)
    assert linear_dpsgd.supports(build_model("mlp", 16, 2), x)
    stack = linear_dpsgd.LinearStack(model())
    with pytest.raises(RuntimeError, match="not exact"):
        linear_dpsgd.clipped_gradient_sum(stack, ClassificationLoss(reduction="none"), x, torch.zeros(4).long(), 1.0)
