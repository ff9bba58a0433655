"""privfl's ClientApp: train and evaluate on the owner's own data, within the owner's policy.

Thin on purpose: the steps live in :mod:`privfl.client.round` (training) and
:mod:`privfl.client.evaluation` (evaluation, and the query that tells the coordinator
which owner a node serves); this module only adapts Flower's messages to them.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from privfl.client.evaluation import run_evaluate_round, run_query
from privfl.client.round import run_train_round
from privfl.client.secure_aggregation import privfl_secagg_mod

app = ClientApp()


@app.train(mods=[privfl_secagg_mod])  # SecAgg+ stages of owner-level rounds; other messages pass untouched
def train(msg: Message, context: Context) -> Message:
    return Message(content=run_train_round(msg, context), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return Message(content=run_evaluate_round(msg, context), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    return Message(content=run_query(msg, context), reply_to=msg)
