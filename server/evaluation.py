"""Central evaluation of the global model on the experiment's test set, when it names one."""

from __future__ import annotations

from collections.abc import Callable

import torch
from flwr.app import ArrayRecord, MetricRecord

from privfl.models import ModelSpec
from privfl.simulations.datasets import ArrayDataset
from privfl.task import evaluate


def make_evaluate_fn(
    spec: ModelSpec, test: ArrayDataset, device: torch.device, on_result: Callable[[int, float, float], None]
) -> Callable[[int, ArrayRecord], MetricRecord]:
    """The ``evaluate_fn`` Flower's strategy calls before round 1 and after every round."""

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model = spec.build()
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = evaluate(model, test, device=device)
        on_result(server_round, loss, accuracy)
        return MetricRecord({"test-loss": loss, "test-accuracy": accuracy})

    return evaluate_fn
