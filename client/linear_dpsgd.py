"""DP-SGD for models whose trainable layers are all ``nn.Linear``, one forward and one backward per Poisson batch.

Why: for a small MLP a non-private step costs a fraction of a millisecond, and Opacus's
fixed work per step (Python hooks per layer, a (batch x parameters) per-sample gradient
tensor or ghost clipping's second backward pass, the DataLoader fetching and collating
records one by one) made a DP-SGD step 3-4x a non-private one (docs/benchmarks.md,
section 2).  For a linear layer ``z = a W^T + b`` and one record ``i`` the per-sample
gradient is ``g_i a_i^T`` (weight) and ``g_i`` (bias), where ``g_i = dl_i/dz_i``; so its
squared norm is ``|g_i|^2 |a_i|^2 + |g_i|^2`` exactly, and the sum of the clipped
per-sample gradients is ``(c * g)^T a`` with ``c_i`` the clip factor.  One backward pass
of the summed per-sample losses gives every ``g`` for the whole batch in one call.

What it must keep exactly (tests/test_dpsgd_exact.py checks it against an explicit
per-record loop and against Opacus itself): Opacus's Poisson sampling (each record in a
batch independently with rate ``1 / ceil(n / batch)``, ``int(1 / rate)`` batches an
epoch, drawn from the same secret generator, in the same order), its clip factor
``min(1, C / (norm + 1e-6))`` over the whole per-sample gradient, its noise (one
``N(0, (sigma C)^2)`` draw per parameter from the secret noise generator, in parameter
order) and its scaling (divide by the expected batch size ``int(n * rate)``); an empty
batch still takes a noise-only step.  :func:`supports` says whether a model satisfies the
assumptions (each linear layer called once per forward on 2-D inputs, no in-place change
of its output); anything else trains through Opacus.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

CLIP_EPSILON = 1e-6  # Opacus's: clip factor = C / (norm + 1e-6), at most 1


@dataclass
class _Capture:
    """Inputs and outputs of every linear layer in one forward pass, in call order."""

    layers: list[nn.Linear]
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]
    versions: list[int]


class LinearStack:
    """A model's linear layers, with forward hooks that record what each one saw and produced."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
        self.params = [p for p in model.parameters() if p.requires_grad]  # Opacus's order: the noise order
        self._capture: _Capture | None = None
        self._handles = [layer.register_forward_hook(self._hook) for layer in self.layers]

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if self._capture is not None:
            self._capture.layers.append(module)  # type: ignore[arg-type]
            self._capture.inputs.append(inputs[0].detach())
            self._capture.outputs.append(output)
            self._capture.versions.append(output._version)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, _Capture]:
        self._capture = capture = _Capture([], [], [], [])
        try:
            return self.model(features), capture
        finally:
            self._capture = None

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def _check(stack: LinearStack, capture: _Capture) -> str | None:
    """Why the per-layer shortcut would not be exact for this forward pass (None: it is)."""
    if sorted(map(id, capture.layers)) != sorted(map(id, stack.layers)):
        return "a linear layer was skipped or called more than once in a forward pass"
    if any(a.dim() != 2 for a in capture.inputs):
        return "a linear layer saw inputs that are not (batch, features)"
    if any(z._version != v for z, v in zip(capture.outputs, capture.versions)):
        return "a linear layer's output was changed in place"
    owned = [id(p) for layer in stack.layers for p in layer.parameters()]
    if len(owned) != len(set(owned)):  # tied weights: Opacus sums the layers' shares, this path would not
        return "a parameter is shared by more than one linear layer"
    if any(id(p) not in set(owned) for p in stack.params):
        return "a trainable parameter lies outside the linear layers"
    return None


def supports(model: nn.Module, features: torch.Tensor) -> bool:
    """Whether :func:`clipped_gradient_sum` is exact for ``model`` (probed with a two-record forward pass)."""
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        return False
    stack = LinearStack(model)
    try:
        with torch.no_grad():
            _, capture = stack.forward(features[:2])
        return _check(stack, capture) is None
    finally:
        stack.close()


def clipped_gradient_sum(
    stack: LinearStack, per_sample_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    features: torch.Tensor, labels: torch.Tensor, max_grad_norm: float,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The sum over the batch of each record's gradient clipped to ``max_grad_norm``, per parameter; and the losses.

    ``per_sample_loss`` must return one loss per record (reduction "none").
    """
    if len(labels) == 0:
        return [torch.zeros_like(p) for p in stack.params], torch.zeros(0)
    logits, capture = stack.forward(features)
    reason = _check(stack, capture)
    if reason is not None:
        raise RuntimeError(f"per-layer DP-SGD is not exact for this model: {reason}; set grad-sample-mode = hooks")
    losses = per_sample_loss(logits, labels)
    backprops = torch.autograd.grad(losses.sum(), capture.outputs)
    squared = torch.zeros(len(labels), dtype=losses.dtype, device=losses.device)
    for layer, a, g in zip(capture.layers, capture.inputs, backprops):
        g_sq = g.pow(2).sum(1)
        if layer.weight.requires_grad:
            squared += g_sq * a.pow(2).sum(1)
        if layer.bias is not None and layer.bias.requires_grad:
            squared += g_sq
    factor = (max_grad_norm / (squared.sqrt() + CLIP_EPSILON)).clamp(max=1.0)
    summed: dict[int, torch.Tensor] = {}
    for layer, a, g in zip(capture.layers, capture.inputs, backprops):
        scaled = g * factor[:, None]
        if layer.weight.requires_grad:
            summed[id(layer.weight)] = scaled.t() @ a
        if layer.bias is not None and layer.bias.requires_grad:
            summed[id(layer.bias)] = scaled.sum(0)
    return [summed[id(p)] for p in stack.params], losses.detach()


def noise_like(params: list[torch.Tensor], std: float, generator: torch.Generator) -> list[torch.Tensor]:
    """Opacus's Gaussian noise (secure_mode off): one draw per parameter, in order; none at all when std is 0."""
    if std == 0:
        return [torch.zeros_like(p) for p in params]
    return [torch.normal(mean=0.0, std=std, size=p.shape, device=p.device, generator=generator, dtype=p.dtype)
            for p in params]


def poisson_batches(num_records: int, sample_rate: float, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch of Opacus's ``UniformWithReplacementSampler`` batches (record indices), drawn as its DPDataLoader does.

    Each DataLoader iteration first draws a base seed from the loader's generator; the same
    draw is kept here so that the batches are the very ones Opacus would draw.
    """
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    batches = []
    for _ in range(int(1 / sample_rate)):
        mask = torch.rand(num_records, generator=generator) < sample_rate
        batches.append(mask.nonzero(as_tuple=False).reshape(-1))
    return batches
