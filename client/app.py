"""privfl's ClientApp: train on the owner's own data, within the owner's budget.

Thin on purpose: the steps live in :mod:`privfl.client.round`, this module only
adapts Flower's message to them.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from privfl.client.round import run_train_round

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    return Message(content=run_train_round(msg, context), reply_to=msg)
