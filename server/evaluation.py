"""Centralised evaluation of the global model on the held-out test set."""

from __future__ import annotations

from collections.abc import Callable

import torch
from flwr.app import ArrayRecord, MetricRecord
from torch import nn

from privfl.models import ModelSpec
from privfl.simulations.datasets import ArrayDataset


def evaluate(model: nn.Module, data: ArrayDataset, device: torch.device) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on ``data``."""
    model = model.to(device).eval()
    features = torch.as_tensor(data.features, device=device)
    labels = torch.as_tensor(data.labels, device=device)
    with torch.no_grad():
        logits = model(features)
        loss = nn.functional.cross_entropy(logits, labels).item()
        accuracy = (logits.argmax(1) == labels).float().mean().item()
    return loss, accuracy


def make_evaluate_fn(
    spec: ModelSpec, test: ArrayDataset, device: torch.device, on_result: Callable[[int, float, float], None]
) -> Callable[[int, ArrayRecord], MetricRecord]:
    """The ``evaluate_fn`` Flower's strategy calls before round 1 and after every round."""

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model = spec.build()
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = evaluate(model, test, device)
        on_result(server_round, loss, accuracy)
        return MetricRecord({"test-loss": loss, "test-accuracy": accuracy})

    return evaluate_fn
