"""Models that server and clients build identically, and the check that Opacus can train them.

The server must construct exactly the architecture the clients train (the global
weights are exchanged as a ``state_dict``), so both call :func:`build_model` with the
same validated config.  Models use ``x.flatten(1)`` rather than ``x.view(len(x), -1)``
because Poisson sampling can yield an empty batch, and GroupNorm rather than
BatchNorm because per-sample gradients are undefined across a batch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

MODEL_NAMES = ("mlp", "cnn", "logreg")


class ModelNotPrivatizableError(ValueError):
    """Opacus cannot compute per-sample gradients for this model."""


class MLP(nn.Module):
    """Two-layer perceptron; under DP it beat a small CNN on digits at eps 3 and 1."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class SmallCNN(nn.Module):
    """A CNN for square single-channel images given as flat vectors (8x8 digits)."""

    def __init__(self, in_features: int, num_classes: int, channels: int = 16) -> None:
        super().__init__()
        side = int(round(in_features**0.5))
        if side * side != in_features:
            raise ValueError(f"cnn needs square images; {in_features} features is not a square")
        self.side = side
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.GroupNorm(4, channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(4, channels), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Linear(channels * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], 1, self.side, self.side)
        return self.head(self.features(x).flatten(1))


class LogisticRegression(nn.Module):
    """A linear classifier: FLamby's baseline for Fed-Heart-Disease."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


_BUILTIN: dict[str, Callable[[int, int], nn.Module]] = {
    "mlp": MLP,
    "cnn": SmallCNN,
    "logreg": LogisticRegression,
}


def build_model(name: str, in_features: int, num_classes: int, *, seed: int | None = None) -> nn.Module:
    """Build a model by name or by a ``package.module:factory(in_features, num_classes)`` path."""
    if seed is not None:
        torch.manual_seed(seed)
    factory = _BUILTIN.get(name) or _import_factory(name)
    return factory(in_features, num_classes)


def _import_factory(path: str) -> Callable[[int, int], nn.Module]:
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"unknown model '{path}': use one of {', '.join(MODEL_NAMES)} or 'package.module:factory'")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot load model factory '{path}': {err}") from None


def ensure_privatizable(model: nn.Module) -> None:
    """Fail early, with Opacus's own diagnosis, for a model DP-SGD cannot train."""
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    # Opacus validates only modules with trainable parameters: a BatchNorm without affine
    # parameters passed, and it makes each record's gradient depend on the whole batch (one
    # record then moves the clipped sum by more than C: tests/test_red_team_2.py).
    errors += [f"{type(m).__name__} without parameters still mixes the records of a batch"
               for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and
               not any(True for _ in m.parameters())]
    if errors:
        details = "; ".join(str(e) for e in errors)
        raise ModelNotPrivatizableError(
            f"Opacus cannot make {type(model).__name__} private: {details}. "
            "Replace BatchNorm with GroupNorm (opacus.validators.ModuleValidator.fix does this) "
            "and build the same model on the server."
        )


@dataclass(frozen=True)
class ModelSpec:
    """Enough to build the global model anywhere: sent to clients with every round."""

    name: str
    num_features: int
    num_classes: int

    def build(self, seed: int | None = None) -> nn.Module:
        return build_model(self.name, self.num_features, self.num_classes, seed=seed)

    def to_record_values(self) -> dict[str, str | int]:
        return {"model": self.name, "num-features": self.num_features, "num-classes": self.num_classes}

    @classmethod
    def from_record_values(cls, values: Any) -> ModelSpec:
        return cls(str(values["model"]), int(values["num-features"]), int(values["num-classes"]))
