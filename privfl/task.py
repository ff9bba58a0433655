"""The learning task both sides share: its loss, its predictions, evaluation, and the model check.

Classification with ``num_classes`` classes.  A model outputs either ``num_classes``
logits (cross-entropy) or, for a binary task, one logit (binary cross-entropy on it):
:class:`ClassificationLoss` picks by the output's width, so a user's own model can be
written either way.  The server evaluates centrally with :func:`evaluate` and every
owner evaluates its own data with the same function.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from privfl.models import ModelNotPrivatizableError, ModelSpec, ensure_privatizable


class ModelMismatchError(ValueError):
    """The model does not fit the data: wrong number of inputs or classes."""


class ClassificationLoss(nn.Module):
    """Cross-entropy over C logits, or binary cross-entropy over one logit.

    Has a ``reduction`` attribute that Opacus's ghost clipping switches to ``"none"``
    to get per-sample losses.
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.shape[-1] == 1:
            return F.binary_cross_entropy_with_logits(logits[:, 0], labels.to(logits.dtype),
                                                      reduction=self.reduction)
        return F.cross_entropy(logits, labels, reduction=self.reduction)


def predict(logits: torch.Tensor) -> torch.Tensor:
    """Class ids: argmax over C logits, or the sign of a single logit."""
    if logits.shape[-1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(1)


def evaluate(model: nn.Module, features: torch.Tensor | object, labels: torch.Tensor | None = None,
             device: torch.device | None = None) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` on a data set (an ArrayDataset, or features and labels)."""
    if labels is None:  # an ArrayDataset
        features, labels = torch.as_tensor(features.features), torch.as_tensor(features.labels)  # type: ignore
    device = device or torch.device("cpu")
    model = model.to(device).eval()
    x, y = torch.as_tensor(features, device=device), torch.as_tensor(labels, device=device)
    with torch.no_grad():
        logits = model(x)
        loss = ClassificationLoss()(logits, y).item()
        accuracy = (predict(logits) == y).float().mean().item()
    return loss, accuracy


def check_model(spec: ModelSpec, *, private: bool, seed: int | None = None) -> nn.Module:
    """Build ``spec``'s model and check it fits its data before anything trains it.

    Raises ModelMismatchError when its output is neither ``num_classes`` logits nor one
    logit for a binary task, or when it rejects ``num_features`` inputs; and
    ModelNotPrivatizableError when DP-SGD cannot train it.
    """
    try:
        model = spec.build(seed=seed)
    except (ValueError, TypeError, ImportError, AttributeError) as err:
        raise ModelMismatchError(f"model {spec.name!r} cannot be built for {spec.num_features} inputs and "
                                 f"{spec.num_classes} classes: {err}") from None
    try:
        with torch.no_grad():
            logits = model.eval()(torch.zeros(2, spec.num_features))
    except Exception as err:  # noqa: BLE001 - any failure here means the model does not take these inputs
        raise ModelMismatchError(f"model {spec.name!r} does not accept {spec.num_features} input features: "
                                 f"{type(err).__name__}: {err}") from None
    width = tuple(logits.shape)
    if not (len(width) == 2 and width[0] == 2 and (width[1] == spec.num_classes or
                                                   (width[1] == 1 and spec.num_classes == 2))):
        raise ModelMismatchError(
            f"model {spec.name!r} outputs shape {list(width[1:])} per example; the data has {spec.num_classes} "
            f"classes, so it must output {spec.num_classes} logits" + (" (or 1 for a binary task)"
                                                                       if spec.num_classes == 2 else ""))
    model.train()
    if private:
        ensure_privatizable(model)
    return model


__all__ = ["ClassificationLoss", "ModelMismatchError", "ModelNotPrivatizableError", "check_model", "evaluate",
           "predict"]
