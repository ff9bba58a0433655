"""Plain ServerApp: Flower's FedAvg, central evaluation every round, evaluation at the owners in
the last round (as privfl's ``federated-evaluation = "last"``), progress written to a file."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from plainfl.task import build_model, evaluate, test_set

app = ServerApp()


class LastRoundEvaluation(FedAvg):
    """FedAvg that asks the owners to evaluate only in the last round."""

    def __init__(self, num_rounds: int, at_owners: bool, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_rounds, self.at_owners = num_rounds, at_owners

    def configure_evaluate(self, server_round, arrays, config, grid):
        return super().configure_evaluate(server_round, arrays, config, grid) \
            if self.at_owners and server_round == self.num_rounds else []


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    progress_file = Path(str(cfg["progress-file"]))
    progress: dict = {"status": "running", "rounds": []}
    data_dir = str(cfg.get("data-dir", ""))
    test = test_set(int(cfg["seed"]), data_dir)
    x_test, y_test = (torch.from_numpy(test[0]), torch.from_numpy(test[1])) if test is not None else (None, None)
    features = int(cfg.get("num-features", 64))
    classes = int(cfg.get("num-classes", 10))

    def save() -> None:
        tmp = progress_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(progress))
        os.replace(tmp, progress_file)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model = build_model(str(cfg["model"]), features=features, classes=classes)
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = evaluate(model, x_test, y_test) if x_test is not None else (0.0, 0.0)
        progress["rounds"].append({"round": server_round, "test_accuracy": accuracy, "time": time.time()})
        save()
        return MetricRecord({"test-loss": loss, "test-accuracy": accuracy})

    num_rounds = int(cfg["num-rounds"])
    # Owners evaluate on their share of the test split, as privfl's do; there is none for owners of a
    # synthetic folder, nor when there are more owners than test records (privfl's owners then refuse).
    at_owners = not data_dir and y_test is not None and len(y_test) >= len(list(grid.get_node_ids()))
    strategy = LastRoundEvaluation(num_rounds, at_owners, fraction_train=1.0, fraction_evaluate=1.0, min_available_nodes=2,
                                   weighted_by_key="num-examples")
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(build_model(str(cfg["model"]), seed=int(cfg["seed"]), features=features,
                                               classes=classes).state_dict()),
        num_rounds=num_rounds,
        train_config=ConfigRecord({"lr": float(cfg["learning-rate"])}),
        evaluate_fn=evaluate_fn,
    )
    progress["status"] = "finished"
    progress["final_test_accuracy"] = progress["rounds"][-1]["test_accuracy"]
    federated = result.evaluate_metrics_clientapp.get(num_rounds) if result.evaluate_metrics_clientapp else None
    progress["federated_accuracy"] = federated.get("accuracy") if federated else None
    save()
