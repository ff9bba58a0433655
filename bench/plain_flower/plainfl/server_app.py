"""Plain ServerApp: Flower's FedAvg, central evaluation every round, progress written to a file."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from plainfl.task import build_model, digits

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    progress_file = Path(str(cfg["progress-file"]))
    progress: dict = {"status": "running", "rounds": []}
    _, _, x_test, y_test = digits(int(cfg["seed"]))
    x_test, y_test = torch.from_numpy(x_test), torch.from_numpy(y_test)

    def save() -> None:
        tmp = progress_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(progress))
        os.replace(tmp, progress_file)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model = build_model(str(cfg["model"]))
        model.load_state_dict(arrays.to_torch_state_dict())
        model.eval()
        with torch.no_grad():
            logits = model(x_test)
            loss = torch.nn.functional.cross_entropy(logits, y_test).item()
            accuracy = (logits.argmax(1) == y_test).float().mean().item()
        progress["rounds"].append({"round": server_round, "test_accuracy": accuracy, "time": time.time()})
        save()
        return MetricRecord({"test-loss": loss, "test-accuracy": accuracy})

    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=2)
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(build_model(str(cfg["model"]), seed=int(cfg["seed"])).state_dict()),
        num_rounds=int(cfg["num-rounds"]),
        train_config=ConfigRecord({"lr": float(cfg["learning-rate"])}),
        evaluate_fn=evaluate_fn,
    )
    progress["status"] = "finished"
    progress["final_test_accuracy"] = progress["rounds"][-1]["test_accuracy"]
    save()
