"""Local training at a client: plain SGD, or DP-SGD through Opacus's PrivacyEngine.

Each round wraps a *fresh* model: Opacus attaches hooks and a ``_module.`` wrapper to
whatever it makes private, and re-wrapping a module twice stacks them.  The global
weights are loaded into the plain module before wrapping and read back from the same
plain module after training, so no ``_module.`` prefix ever reaches a state dict.
"""

from __future__ import annotations

import secrets
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from privfl.privacy.events import PoissonSubsampledGaussian
from privfl.protocol import TrainingPlan
from privfl.task import ClassificationLoss


@dataclass(frozen=True)
class LocalUpdate:
    state_dict: OrderedDict[str, torch.Tensor]
    num_examples: int
    mean_loss: float  # over non-empty batches; NaN if every batch was empty; logged at the node, never sent
    privacy_event: PoissonSubsampledGaussian | None  # as recorded by Opacus's accountant
    metrics: dict[str, Any] | None = None  # what the reply's metrics say (set where the release is made)


# Opacus warns on every PrivacyEngine that secure_mode is off (it needs torchcsprng,
# which is not installable here; see README), and torch warns that the backward hooks
# fire without input gradients (expected: Opacus hooks parameters, not inputs).
_KNOWN_WARNINGS = ("Secure RNG turned off", "Full backward hook is firing")


def train_locally(
    model: nn.Module,
    data: TensorDataset,
    plan: TrainingPlan,
    device: torch.device,
    *,
    seed: int | None = None,
    noise_seed: int | None = None,
) -> LocalUpdate:
    """Train ``model`` (already holding the global weights) on ``data`` for one round.

    Both generators are seeded from the OS's entropy unless ``seed`` (batch order and
    Poisson draws: Opacus's DPDataLoader keeps the original loader's generator) or
    ``noise_seed`` is given, which only tests and benchmarks do.  Noise that anyone can
    regenerate from a known seed could be subtracted from the update; batches that
    anyone can regenerate void the amplification by sampling that the charged epsilon
    counts on (the coordinator knows the experiment, the round and the owner, so
    nothing it knows may seed them).
    """
    with warnings.catch_warnings():
        for message in _KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        return _train(model, data, plan, device, seed=seed, noise_seed=noise_seed)


def _train(
    model: nn.Module, data: TensorDataset, plan: TrainingPlan, device: torch.device, *, seed: int | None,
    noise_seed: int | None,
) -> LocalUpdate:
    model = model.to(device)
    model.train()
    sampling = torch.Generator().manual_seed(seed if seed is not None else secrets.randbits(63))
    loader = DataLoader(data, batch_size=plan.batch_size, shuffle=True, generator=sampling)
    optimizer = torch.optim.SGD(model.parameters(), lr=plan.learning_rate, momentum=plan.momentum)
    criterion: Any = ClassificationLoss()

    engine = None
    trained: nn.Module = model
    if plan.dp:
        mode = per_sample_gradient_mode(plan.grad_sample_mode, model, plan.batch_size)
        noise = torch.Generator(device=device).manual_seed(
            noise_seed if noise_seed is not None else secrets.randbits(63)
        )
        if mode == PER_LAYER_MODE and _per_layer_applies(model, data, device):
            return _train_per_layer(model, data, plan, device, sampling=sampling, noise=noise)
        if mode == PER_LAYER_MODE:
            mode = opacus_mode(model, plan.batch_size)
        from opacus import PrivacyEngine

        engine = PrivacyEngine(accountant="rdp")  # records steps; privfl composes them itself
        common = dict(
            module=model, optimizer=optimizer, data_loader=loader,
            noise_multiplier=plan.noise_multiplier, max_grad_norm=plan.max_grad_norm,
            poisson_sampling=True, noise_generator=noise, grad_sample_mode=mode,
        )
        if mode == "ghost":
            trained, optimizer, criterion, loader = engine.make_private(criterion=criterion, **common)
        else:
            trained, optimizer, loader = engine.make_private(**common)

    total_loss, loss_batches = 0.0, 0
    for _ in range(plan.local_epochs):
        for features, labels in loader:
            features, labels = features.to(device), labels.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(trained(features), labels)
            loss.backward()
            # An empty Poisson batch still takes a (noise-only) step: the accountant
            # counts it, so skipping it would make the accounting overstate privacy.
            optimizer.step()
            if len(labels):
                total_loss += float(loss.detach())
                loss_batches += 1

    event = _recorded_event(engine, plan) if engine is not None else None
    state = OrderedDict((k, v.detach().cpu().clone()) for k, v in model.state_dict().items())
    return LocalUpdate(
        state_dict=state,
        num_examples=len(data),
        mean_loss=total_loss / loss_batches if loss_batches else float("nan"),
        privacy_event=event,
    )


# From bench/client_step.py (docs/benchmarks.md, section 2): ghost clipping avoids materialising
# per-sample gradients but runs a second backward pass.  It pays off for stacks of linear layers
# at larger batches (MLP, batch 64: 3.7x the non-private epoch against 4.3x with hooks; batch
# 128: 2.8x against 5.6x) and loses for a single linear layer and for convolutions, where the
# backward compute dominates (logistic regression, batch 64: 3.0x against 2.4x; CNN: 3.5x
# against 2.8x).  The mode changes the cost only: the clipping, noise and accounting are the same.
GHOST_MIN_BATCH = 64
GHOST_MIN_LINEAR_LAYERS = 2


# For a model made only of linear layers, ``auto`` trains with client/linear_dpsgd.py (the same
# sampling, clipping, noise and scaling as Opacus, from one forward and one backward pass per
# batch; docs/benchmarks.md, section 2).  Not an Opacus mode, so not selectable by name.
PER_LAYER_MODE = "per-layer"


def per_sample_gradient_mode(requested: str, model: nn.Module, batch_size: int) -> str:
    """The per-sample-gradient mode to train ``model`` with: ``requested``, or for ``auto`` the faster one."""
    if requested != "auto":
        return requested
    with_parameters = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    only_linear = bool(with_parameters) and all(isinstance(m, nn.Linear) for m in with_parameters)
    return PER_LAYER_MODE if only_linear else "hooks"


def opacus_mode(model: nn.Module, batch_size: int) -> str:
    """The Opacus mode ``auto`` falls back to where the per-layer path does not apply to a linear model."""
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if len(linear) >= GHOST_MIN_LINEAR_LAYERS and batch_size >= GHOST_MIN_BATCH:
        return "ghost"
    return "hooks"


def _per_layer_applies(model: nn.Module, data: Any, device: torch.device) -> bool:
    """Whether ``data`` is a (features, labels) TensorDataset and the per-layer shortcut is exact for ``model``."""
    from privfl.client.linear_dpsgd import supports

    tensors = getattr(data, "tensors", None)
    if not isinstance(tensors, tuple) or len(tensors) != 2 or len(data) == 0:
        return False
    return supports(model, tensors[0][:2].to(device))


def _train_per_layer(
    model: nn.Module, data: TensorDataset, plan: TrainingPlan, device: torch.device, *,
    sampling: torch.Generator, noise: torch.Generator,
) -> LocalUpdate:
    """DP-SGD as Opacus does it (Poisson batches, clip, noise, divide by the expected batch), per layer in one pass.

    The batches come from ``sampling`` and the noise from ``noise``, both seeded from the
    OS's entropy by the caller; the event records the steps actually taken.
    """
    from privfl.client.linear_dpsgd import LinearStack, clipped_gradient_sum, noise_like, poisson_batches

    features, labels = (t.to(device) for t in data.tensors)
    n = len(data)
    sample_rate = 1 / plan.batches_per_epoch(n)  # Opacus: 1 / len(data_loader)
    expected_batch_size = int(n * sample_rate)
    optimizer = torch.optim.SGD(model.parameters(), lr=plan.learning_rate, momentum=plan.momentum)
    per_sample_loss = ClassificationLoss(reduction="none")
    std = plan.noise_multiplier * plan.max_grad_norm
    stack = LinearStack(model)
    steps, total_loss, loss_batches = 0, 0.0, 0
    try:
        for _ in range(plan.local_epochs):
            for index in poisson_batches(n, sample_rate, sampling):
                index = index.to(device)
                summed, losses = clipped_gradient_sum(stack, per_sample_loss, features[index], labels[index],
                                                      plan.max_grad_norm)
                for p, clipped, z in zip(stack.params, summed, noise_like(stack.params, std, noise)):
                    p.grad = (clipped + z).view_as(p)
                    p.grad /= expected_batch_size
                optimizer.step()  # an empty batch too: a noise-only step that the accountant counts
                steps += 1
                if len(losses):
                    total_loss += float(losses.mean())
                    loss_batches += 1
    finally:
        stack.close()
    state = OrderedDict((k, v.detach().cpu().clone()) for k, v in model.state_dict().items())
    return LocalUpdate(
        state_dict=state,
        num_examples=n,
        mean_loss=total_loss / loss_batches if loss_batches else float("nan"),
        privacy_event=PoissonSubsampledGaussian(noise_multiplier=float(plan.noise_multiplier),
                                                sample_rate=float(sample_rate), steps=steps),
    )


def _recorded_event(engine: Any, plan: TrainingPlan) -> PoissonSubsampledGaussian:
    """The round's DP event as Opacus counted it (steps actually taken, rate actually used)."""
    history = engine.accountant.history
    if len(history) != 1:
        raise RuntimeError(f"expected one (noise, rate, steps) entry from Opacus, got {history}")
    noise, rate, steps = history[0]
    if noise != plan.noise_multiplier:
        raise RuntimeError(f"Opacus used noise {noise}, the plan asked for {plan.noise_multiplier}")
    return PoissonSubsampledGaussian(noise_multiplier=float(noise), sample_rate=float(rate), steps=int(steps))
