"""Plain ClientApp: load the global weights, run SGD (or Opacus DP-SGD), send the weights back."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from plainfl.task import build_model, owner, train_local

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = context.run_config
    x, y = owner(int(context.node_config["partition-id"]), int(context.node_config["num-partitions"]),
                 int(cfg["seed"]))
    model = build_model(str(cfg["model"]))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    train_local(model, x, y, epochs=int(cfg["local-epochs"]), batch_size=int(cfg["batch-size"]),
                lr=float(cfg["learning-rate"]), dp=bool(cfg["dp"]),
                noise_multiplier=float(cfg["noise-multiplier"]), max_grad_norm=float(cfg["max-grad-norm"]))
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"num-examples": len(y)})})
    return Message(content=content, reply_to=msg)
