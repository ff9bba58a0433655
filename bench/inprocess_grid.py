"""Run a Flower ServerApp and ClientApp together in one process, with no Flower runtime.

:class:`InProcessGrid` is a Flower ``Grid`` whose ``send_and_receive`` hands each
message straight to the ClientApp, with one persistent ``Context`` per simulated node
(``partition-id`` / ``num-partitions``, as Flower's simulation gives them).  No
SuperLink, no Ray, no serialisation, one thread.  Running privfl's real ServerApp and
ClientApp this way measures what privfl's own layers cost (config, owner data, ledgers,
signed receipts, receipt checks, history, evaluation) apart from Flower's runtime;
running the plain app the same way gives the matching figure without privfl.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable
from typing import Any
from uuid import uuid4

from flwr.app import Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp.grid import Grid
from flwr.supercore.run import Run


class InProcessGrid(Grid):
    def __init__(self, client_app: Any, num_nodes: int, run_config: dict[str, Any], run_id: int = 1) -> None:
        self.client_app = client_app
        self._run = Run.create_empty(run_id)
        self.contexts = {
            i + 1: Context(run_id=run_id, node_id=i + 1,
                           node_config={"partition-id": i, "num-partitions": num_nodes},
                           state=RecordDict(), run_config=dict(run_config))
            for i in range(num_nodes)
        }
        self.client_seconds = 0.0
        self.messages = 0

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("InProcessGrid only answers send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("InProcessGrid only answers send_and_receive")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        from flwr.supercore.task_identity import TaskIdentity

        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            message.metadata.__dict__["_run_id"] = self._run.run_id
            message.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
            node = message.metadata.dst_node_id
            TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = self._run.run_id, node, 1
            started = time.perf_counter()
            replies.append(self.client_app(message, self.contexts[node]))
            self.client_seconds += time.perf_counter() - started
            self.messages += 1
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = self._run.run_id, 0, 1
        return replies


def run_apps(server_app: Any, client_app: Any, num_nodes: int, run_config: dict[str, Any]) -> dict[str, Any]:
    """Run ``server_app`` to the end against ``client_app`` in this process; seconds spent where."""
    from flwr.supercore.task_identity import TaskIdentity

    import logging

    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    flwr_logger.setLevel(logging.WARNING)  # the strategy's per-round INFO lines
    grid = InProcessGrid(client_app, num_nodes, run_config)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=dict(run_config))
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server_app(grid, context)
    finally:
        flwr_logger.setLevel(level)
    total = time.perf_counter() - started
    return {"wall_s": total, "client_s": grid.client_seconds, "server_s": total - grid.client_seconds,
            "messages": grid.messages}
