"""FedAvg that knows about privacy budgets.

Flower's FedAvg averages whatever comes back and samples any connected node.  Here:
- every reply's receipt is verified (signature, run, round, parameters, update
  hash) and kept in the federation ledger; an update without a valid receipt is dropped;
- refusals (an owner whose budget would be crossed) are logged, kept out of the
  average, and the owner is not sampled again;
- each owner's privacy receipt goes to the run history as it is, not averaged;
- when no owner has budget left, training stops (the remaining rounds are skipped).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from privfl.logs import get_logger
from privfl import protocol
from privfl.privacy.ledger import ReceiptRejected
from privfl.server.history import RunHistory
from privfl.server.receipts import ReceiptCheck

log = get_logger("server")


class BudgetAwareFedAvg(FedAvg):
    def __init__(
        self, *, fraction_train: float, min_owners: int, history: RunHistory, receipts: ReceiptCheck,
        seed: int,
    ) -> None:
        """``min_owners``: how many owners must be connected before a round starts."""
        super().__init__(
            fraction_train=fraction_train, fraction_evaluate=0.0, min_available_nodes=min_owners,
            arrayrecord_key=protocol.ARRAYS, configrecord_key=protocol.TRAIN_CONFIG,
        )
        self.history = history
        self.receipts = receipts
        self.exhausted: set[int] = set()  # node ids whose owners refused for lack of budget
        self._rng = random.Random(seed)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        nodes = self._wait_for_nodes(grid)
        eligible = sorted(n for n in nodes if n not in self.exhausted)
        if not eligible:
            log.warning("round %d: every owner's budget is spent; no training", server_round)
            return []
        size = max(1, round(len(eligible) * self.fraction_train))
        sampled = self._rng.sample(eligible, size)
        log.info("round %d: sampled %d of %d owners with budget left", server_round, size, len(eligible))
        config["server-round"] = server_round
        content = RecordDict({protocol.ARRAYS: arrays, protocol.TRAIN_CONFIG: config})
        return [Message(content=content, message_type=MessageType.TRAIN, dst_node_id=n) for n in sampled]

    def _wait_for_nodes(self, grid: Grid) -> list[int]:
        while len(nodes := list(grid.get_node_ids())) < self.min_available_nodes:
            log.info("waiting for owners: %d of %d connected", len(nodes), self.min_available_nodes)
            time.sleep(1)
        return nodes

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        record = self.history.round(server_round)
        updates: list[Message] = []
        for reply in replies:
            if reply.has_error():
                record.failures.append(f"node {reply.metadata.src_node_id}: {reply.error.reason}")
                log.error("round %d: node %d failed: %s", server_round, reply.metadata.src_node_id,
                          reply.error.reason)
                continue
            try:
                receipt = self.receipts.accept(reply, server_round)
            except ReceiptRejected as err:
                record.failures.append(f"node {reply.metadata.src_node_id}: {err}")
                log.error("round %d: update from node %d rejected: %s", server_round,
                          reply.metadata.src_node_id, err)
                continue
            self.history.record_receipt(server_round, receipt)
            if receipt.status == protocol.REFUSED:
                self.exhausted.add(reply.metadata.src_node_id)
                log.warning("round %d: owner %s refused: %s", server_round, receipt.owner_id, receipt.reason)
                continue
            # FedAvg averages the single ArrayRecord and MetricRecord; the receipt is a
            # ConfigRecord, which it leaves alone.
            updates.append(reply)
        if not updates:
            return None, None
        arrays, metrics = super().aggregate_train(server_round, updates)
        if metrics is not None and "train-loss" in metrics:
            record.train_loss = float(metrics["train-loss"])
        return arrays, metrics
