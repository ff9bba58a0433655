"""Plain ClientApp: load the global weights, run SGD (or Opacus DP-SGD), send the weights back;
evaluate the global model on the owner's share of the test split when asked."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from plainfl.task import build_model, evaluate, owner, owner_evaluation, train_local

app = ClientApp()


def _owner_args(context: Context) -> tuple[int, int, int, str]:
    cfg = context.run_config
    return (int(context.node_config["partition-id"]), int(context.node_config["num-partitions"]),
            int(cfg["seed"]), str(cfg.get("data-dir", "")))


def _model(msg: Message, context: Context, x):
    model = build_model(str(context.run_config["model"]), features=x.shape[1],
                        classes=int(context.run_config.get("num-classes", 10)))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return model


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = context.run_config
    x, y = owner(*_owner_args(context))
    model = _model(msg, context, x)
    train_local(model, x, y, epochs=int(cfg["local-epochs"]), batch_size=int(cfg["batch-size"]),
                lr=float(cfg["learning-rate"]), dp=bool(cfg["dp"]),
                noise_multiplier=float(cfg["noise-multiplier"]), max_grad_norm=float(cfg["max-grad-norm"]))
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"num-examples": len(y)})})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_round(msg: Message, context: Context) -> Message:
    held = owner_evaluation(*_owner_args(context))
    if held is None:
        metrics = {"num-examples": 0, "loss": 0.0, "accuracy": 0.0}
    else:
        x, y = held
        loss, accuracy = evaluate(_model(msg, context, x), x, y)
        metrics = {"num-examples": len(y), "loss": loss, "accuracy": accuracy}
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
