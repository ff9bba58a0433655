"""FedAvg that knows about owners' policies, budgets and receipts.

Flower's FedAvg averages whatever comes back and samples any connected node.  Here:
- before a node first trains, it is asked which owner it serves (a query); every
  request then names the head the coordinator last anchored for that owner;
- every reply's receipt is verified (signature, anchored head, experiment, round,
  parameters, update hash) and, at the end of the round, kept in the federation
  ledger and anchored in the registry; an update without a valid receipt, or whose
  arrays do not fit the global model or are not finite, is dropped with its reason
  while the round goes on;
- refusals (an owner's budget would be crossed, or the request is below its policy)
  are logged and kept out of the average, and the owner is not asked again;
- each owner's privacy receipt goes to the run history as it is, never averaged;
- the global model is evaluated at the owners (federated evaluation, weighted by
  their examples) in the last round or every round, per-owner figures kept;
- when no owner has budget left, training stops (the remaining rounds are skipped).
"""

from __future__ import annotations

import dataclasses
import math
import random
import secrets
import statistics
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from privfl import protocol
from privfl.logs import get_logger
from privfl.privacy.ledger import ReceiptRejected
from privfl.privacy.ledger.anchor import AGGREGATED, REFUSED, UPDATE_DROPPED
from privfl.privacy.ledger.identity import NONCE_BYTES
from privfl.protocol import PrivacyReceipt, RoundRequest
from privfl.server.history import RunHistory
from privfl.server.receipts import Accepted, ReceiptCheck, ReleaseMismatch

log = get_logger("server")

# What a malformed reply raises when its content is read (a missing key, a value of the wrong type or size):
# that reply is its node's failure, recorded in the round, never the run's.
MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError, ZeroDivisionError)
MAX_CLAIMED_EXAMPLES = 2**31  # a count an owner states without a DP event to bound it (non-private, evaluation)


class EveryOwnerRefused(Exception):
    """Every connected owner has refused: no later round can train, so the run ends now (server/app.py).

    Both strategies find their owners through ``_eligible_nodes``, so both stop here,
    instead of running (and waiting out) every remaining round with nobody to ask.
    """

    def __init__(self, server_round: int, reasons: dict[str, str]) -> None:
        self.server_round, self.reasons = server_round, dict(reasons)
        first = next(iter(sorted(self.reasons.items())), ("", ""))
        super().__init__(f"every owner refused before round {server_round} ({len(self.reasons)} owner(s); "
                         f"{first[0]}: {first[1]})")


class BudgetAwareFedAvg(FedAvg):
    def __init__(
        self, *, request: Callable[[int], RoundRequest], fraction_train: float, min_owners: int,
        history: RunHistory, receipts: ReceiptCheck, seed: int, evaluate_rounds: Callable[[int], bool],
        on_round_end: Callable[[int, ArrayRecord], None] = lambda *_: None,
        on_evaluated: Callable[[int], None] = lambda _: None,
    ) -> None:
        """``request(round)``: what to ask the owners; ``min_owners``: owners connected before round 1."""
        super().__init__(
            fraction_train=fraction_train, fraction_evaluate=1.0, min_available_nodes=min_owners,
            arrayrecord_key=protocol.ARRAYS, configrecord_key=protocol.TRAIN_CONFIG,
        )
        self.request = request
        self.timeout = 600.0  # seconds to wait for owners' answers; set from the run's round timeout
        self.history = history
        self.receipts = receipts
        self.evaluate_rounds = evaluate_rounds
        self.on_round_end = on_round_end
        self.on_evaluated = on_evaluated  # the owners' evaluation of a round is in
        self.refusing: dict[int, str] = {}  # node id -> why its owner will not train again
        self.not_evaluating: dict[int, str] = {}  # node id -> why its owner does not evaluate
        self.refused_owners: dict[str, str] = {}  # the same by owner: node ids change when a run is resumed
        self.round_offset = 0  # rounds completed before this Flower run (a resumed experiment)
        self._rng = random.Random(seed)
        self._global: ArrayRecord | None = None

    # -- a resumed experiment: Flower counts this run's rounds from 1 -------------------

    def state(self) -> dict:
        return {"rng_state": _jsonable(self._rng.getstate()), "refused_owners": dict(self.refused_owners)}

    def restore(self, completed_rounds: int, state: dict) -> None:
        """Go on after ``completed_rounds`` with the state :meth:`state` gave at that point."""
        self.round_offset = completed_rounds
        self._rng.setstate(_tupled(state["rng_state"]))
        self.refused_owners = dict(state["refused_owners"])

    def _refuse(self, node: int, reason: str, signed: bool = True) -> None:
        """The node will not be asked to train again; its owner neither, if the owner signed the refusal."""
        self.refusing[node] = reason
        owner = self.receipts.owner_of(node)
        if owner and signed:  # an unsigned word marks only the node that said it
            self.refused_owners[owner] = reason

    # -- training ----------------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.round_offset
        self._global = arrays
        eligible = self._eligible_nodes(grid, server_round)
        if not eligible:
            log.warning("round %d: no owner can train (every one refused or has spent its budget)", server_round)
            return []
        size = max(1, round(len(eligible) * self.fraction_train))
        sampled = self._rng.sample(eligible, size)
        log.info("round %d: sampled %d of %d owners that can train", server_round, size, len(eligible))
        return self._messages(server_round, arrays, sampled, MessageType.TRAIN)

    def _messages(self, server_round: int, arrays: ArrayRecord, nodes: list[int], kind: str,
                  **changes: Any) -> list[Message]:
        """One message per node: the round's request (with ``changes``), naming the node's owner's anchored head."""
        request = self.request(server_round)
        if changes:
            request = dataclasses.replace(request, **changes)
        messages = []
        for node in nodes:
            owner = self.receipts.owner_of(node)
            asked = request.for_owner(self.receipts.anchored_head(owner) if owner else None)
            content = RecordDict({protocol.ARRAYS: arrays, protocol.TRAIN_CONFIG: asked.to_record()})
            messages.append(Message(content=content, message_type=kind, dst_node_id=node))
        return messages

    def _eligible_nodes(self, grid: Grid, server_round: int) -> list[int]:
        """The connected nodes that may be asked to train: bound to an owner, not refusing.

        Nodes not yet bound to an owner are asked who they are first (one query each).
        """
        nodes = self._wait_for_nodes(grid)
        self._identify(grid, server_round, [n for n in nodes if self.receipts.owner_of(n) is None
                                             and n not in self.refusing])
        eligible = sorted(n for n in nodes if n not in self.refusing and self.receipts.owner_of(n) is not None)
        if not eligible and nodes and all(n in self.refusing for n in nodes):
            raise EveryOwnerRefused(server_round, {self.receipts.owner_of(n) or f"node-{n}": self.refusing[n]
                                                   for n in nodes})
        return eligible

    def _identify(self, grid: Grid, server_round: int, nodes: list[int]) -> None:
        """Ask nodes not yet known which owner each serves, so its request can name its anchored head."""
        if not nodes:
            return
        request = self.request(server_round)
        nonces = {n: secrets.token_hex(NONCE_BYTES) for n in nodes}  # the owner signs its answer over it

        def question(node: int) -> Message:
            config = request.to_record()
            config[protocol.QUERY_NONCE] = nonces[node]
            return Message(content=RecordDict({protocol.TRAIN_CONFIG: config}), message_type=MessageType.QUERY,
                           dst_node_id=node)

        for reply in grid.send_and_receive([question(n) for n in nodes], timeout=self.timeout):
            node = reply.metadata.src_node_id
            try:
                self._identified(server_round, node, reply, nonces.get(node))
            except (ReceiptRejected, *MALFORMED) as err:
                self._fail(self.history.round(server_round), server_round, node,
                           f"is bound to no owner: {_short(err)}")

    def _identified(self, server_round: int, node: int, reply: Message, nonce: str | None) -> None:
        """One answer to the query: the node is bound to an owner only if that owner's key signed it."""
        if reply.has_error():
            log.error("node %d did not say which owner it serves: %s", node, reply.error.reason)
            return
        if nonce is None:
            raise ReceiptRejected("it answered a query it was not asked")
        content = reply.content
        if protocol.OWNER not in content.config_records:
            refusal = content.config_records.get(protocol.PRIVACY)
            reason = self.receipts.unsigned_reason(node, refusal) if refusal is not None else "no answer"
            self._refuse(node, reason, signed=False)
            self.history.record_receipt(server_round, PrivacyReceipt.unsigned_refusal(self.receipts.label(node),
                                                                                      reason))
            log.warning("node %d cannot act as an owner (unsigned): %s", node, reason)
            return
        owner, held = self.receipts.bind_answer(node, content[protocol.OWNER], self.request(server_round).experiment_id,
                                                nonce)
        if owner in self.refused_owners:  # it refused before this experiment was resumed
            self.refusing[node] = self.refused_owners[owner]
        anchored = self.receipts.anchored_head(owner)
        if anchored is not None and held < anchored[0]:
            log.error("owner %s's ledger is at entry %d, behind entry %d that this coordinator accepted: it was "
                      "truncated or restored from an older copy", owner, held, anchored[0])

    def _wait_for_nodes(self, grid: Grid) -> list[int]:
        while len(nodes := list(grid.get_node_ids())) < self.min_available_nodes:
            log.info("waiting for owners: %d of %d connected", len(nodes), self.min_available_nodes)
            time.sleep(1)
        return nodes

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        record = self.history.round(server_round)
        updates: list[tuple[RecordDict, Accepted]] = []
        kept: list[tuple[Accepted, str]] = []  # receipts to keep and anchor, with what became of each
        for reply in replies:
            node = reply.metadata.src_node_id
            try:
                update = self._settle_train_reply(record, server_round, node, reply, kept)
            except MALFORMED as err:
                self._fail(record, server_round, node, f"malformed reply: {_short(err)}")
                continue
            if update is not None:
                updates.append(update)
        self.receipts.commit(server_round, kept)  # durable before the round's model exists
        record.aggregated = len(updates)
        if not updates:
            return None, None
        return self._average(record, updates)

    def _settle_train_reply(self, record: Any, server_round: int, node: int, reply: Message,
                            kept: list[tuple[Accepted, str]]) -> tuple[RecordDict, Accepted] | None:
        """One training reply: its receipt kept (with what became of it) and, if it can be averaged, what is averaged:
        its arrays, weighted by the records its signed DP event implies, never by the count it claims."""
        if reply.has_error():
            self._fail(record, server_round, node, f"failed: {reply.error.reason}")
            return None
        try:
            accepted = self.receipts.accept(reply, server_round)
        except ReleaseMismatch as err:
            kept.append((err.accepted, UPDATE_DROPPED))
            self.history.record_receipt(server_round, err.accepted.receipt)
            record.rejected_updates[err.accepted.receipt.owner_id] = str(err)
            self._fail(record, server_round, node, f"update dropped: {err} (its charge stands)")
            return None
        except ReceiptRejected as err:
            self._fail(record, server_round, node, f"rejected: {err}")
            return None
        receipt = accepted.receipt
        self.history.record_receipt(server_round, receipt)
        if receipt.status == protocol.REFUSED:
            kept.append((accepted, REFUSED))
            self._refuse(node, receipt.reason, signed=receipt.signed)
            log.warning("round %d: owner %s refused%s: %s", server_round, receipt.owner_id or f"of node {node}",
                        "" if receipt.signed else " (unsigned)", receipt.reason)
            return None
        try:
            problem = self._update_problem(reply, accepted)
        except MALFORMED as err:  # its receipt is genuine: kept, with its update dropped
            problem = f"malformed update: {_short(err)}"
        if problem:
            kept.append((accepted, UPDATE_DROPPED))
            record.rejected_updates[receipt.owner_id] = problem
            self._fail(record, server_round, node, f"update from owner {receipt.owner_id} dropped: {problem} "
                       "(its charge stands: the owner released it)")
            return None
        kept.append((accepted, AGGREGATED))
        metrics = {"num-examples": self._examples(reply.content, accepted)}  # no training loss: owners keep it
        content = RecordDict({protocol.ARRAYS: reply.content[protocol.ARRAYS], protocol.METRICS: MetricRecord(metrics)})
        return content, accepted

    def _average(self, record: Any,
                 checked: list[tuple[RecordDict, Accepted]]) -> tuple[ArrayRecord, MetricRecord]:
        """FedAvg (Flower's aggregation) of the checked updates, each first brought within the round's bound."""
        updates = self._bounded(record.round, checked)
        arrays = aggregate_arrayrecords(updates, self.weighted_by_key)
        return arrays, self.train_metrics_aggr_fn(updates, self.weighted_by_key)

    def _bounded(self, server_round: int, checked: list[tuple[RecordDict, Accepted]]) -> list[RecordDict]:
        """Every DP-SGD update's distance from the global model, scaled down to the round's bound.

        Each update's own bound comes from its signed event (:meth:`TrainingPlan.update_norm_bound`);
        the round's bound is the lower median of them, so no one owner raises it, by its
        count, its steps or its noise: however much it weighs in FedAvg, one owner moves the
        global model no farther than the median owner's DP-SGD could (scaling a DP release
        is post-processing: it costs no privacy).
        """
        plan, reference = self.request(0).plan, self._global
        signed = [(content, accepted.checked.entry.event) for content, accepted in checked
                  if accepted.records is not None and accepted.checked is not None]
        if not plan.dp or reference is None or not signed:
            return [content for content, _ in checked]
        size = sum(int(np.prod(reference[k].shape)) for k in reference.keys())
        bound = statistics.median_low([plan.update_norm_bound(event, size) for _, event in signed])
        for content, _ in signed:
            update = content[protocol.ARRAYS]
            origin = {k: reference[k].numpy() for k in reference.keys()}
            delta = {k: update[k].numpy().astype(np.float64) - origin[k] for k in origin}
            norm = math.sqrt(sum(float((d * d).sum()) for d in delta.values()))
            if norm > bound:
                log.warning("round %d: an update %.4g from the global model is scaled to the round's bound %.4g",
                            server_round, norm, bound)
                content[protocol.ARRAYS] = ArrayRecord(OrderedDict(
                    (k, torch.from_numpy(np.ascontiguousarray(origin[k] + delta[k] * (bound / norm),
                                                              dtype=origin[k].dtype))) for k in origin))
        return [content for content, _ in checked]

    def _fail(self, record: Any, server_round: int, node: int, what: str) -> None:
        record.failures.append(f"node {node}: {what}")
        log.error("round %d: node %d %s", server_round, node, what)

    def _examples(self, content: RecordDict, accepted: Accepted | None) -> int | str:
        """The update's FedAvg weight: the records its signed DP-SGD event implies; without one (a non-private
        update), the count the owner states, if it is one.  A string says why there is none."""
        if accepted is not None and accepted.records is not None:
            return accepted.records
        metrics = content.metric_records.get(protocol.METRICS)
        examples = metrics.get("num-examples") if metrics is not None else None
        if not (isinstance(examples, (int, float)) and not isinstance(examples, bool) and math.isfinite(examples)
                and 0 < examples <= MAX_CLAIMED_EXAMPLES):
            return f"num-examples {examples!r:.40} is not a positive number up to {MAX_CLAIMED_EXAMPLES}"
        return int(examples)

    def _update_problem(self, reply: Message, accepted: Accepted | None = None) -> str | None:
        """Why an update cannot be averaged into the global model (None: it can)."""
        content = reply.content
        if len(content.array_records) != 1 or protocol.ARRAYS not in content.array_records:
            return "the reply does not carry exactly one update"
        if len(content.metric_records) > 1 or \
                (content.metric_records and protocol.METRICS not in content.metric_records):
            return "the reply carries other metrics than its one metric record"
        examples = self._examples(content, accepted)
        if isinstance(examples, str):
            return examples
        update, reference = content[protocol.ARRAYS], self._global
        if reference is not None:
            if list(update.keys()) != list(reference.keys()):
                return f"its tensors {sorted(update.keys())[:20]} are not the global model's " \
                       f"{sorted(reference.keys())}"
            for name in reference.keys():
                got, want = update[name], reference[name]
                if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
                    return f"tensor {name} has shape {list(got.shape)} {got.dtype}, the global model's " \
                           f"{list(want.shape)} {want.dtype}"
        for name in update.keys():
            if not np.isfinite(update[name].numpy()).all():
                return f"tensor {name} holds NaN or Inf values"
        noise = accepted.receipt.noise_multiplier if accepted is not None and accepted.records is not None else None
        return self._norm_problem(update, reference, examples, noise)

    def _norm_problem(self, update: ArrayRecord, reference: ArrayRecord | None, examples: int,
                      noise: float | None = None) -> str | None:
        """A DP-SGD update far beyond what its plan can produce was not trained as charged.

        ``examples`` is the records the owner's signed event implies (not a count it claims);
        ``noise`` the event's noise multiplier (an owner-planned run's own noise).
        """
        plan = self.request(0).plan
        if reference is None or not plan.dp:
            return None
        if plan.owner_planned:
            if noise is None:
                return None
            plan = dataclasses.replace(plan, noise_multiplier=noise)
        delta = [update[k].numpy().astype(np.float64) - reference[k].numpy() for k in reference.keys()]
        norm = math.sqrt(sum(float((d * d).sum()) for d in delta))
        bound = plan.max_update_norm(examples, sum(d.size for d in delta))
        if norm > bound:
            return f"its distance from the global model, {norm:.4g}, exceeds {bound:.4g}, the most DP-SGD with " \
                   f"this plan can move it"
        return None

    # -- federated evaluation ----------------------------------------------------------

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.round_offset
        try:
            if not self.evaluate_rounds(server_round):
                return []
            # only nodes an owner's key vouched for: what a node says is kept under the owner it is bound to
            nodes = sorted(n for n in grid.get_node_ids()
                           if n not in self.not_evaluating and self.receipts.owner_of(n) is not None)
            if nodes:
                log.info("round %d: asking %d owners to evaluate the global model on their own data",
                         server_round, len(nodes))
            return self._messages(server_round, arrays, nodes, MessageType.EVALUATE)
        finally:
            self.on_round_end(server_round, arrays)  # training is settled: checkpoint the round

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        server_round += self.round_offset
        record = self.history.round(server_round)
        answers: list[RecordDict] = []
        for reply in replies:
            node = reply.metadata.src_node_id
            try:
                answer = self._evaluation_answer(server_round, node, reply)
            except MALFORMED as err:
                answer = f"malformed evaluation reply: {_short(err)}"
            if isinstance(answer, str):
                self._fail(record, server_round, node, answer)
            elif answer is not None:
                answers.append(answer)
        if not answers:
            return None
        aggregated = self.evaluate_metrics_aggr_fn(answers, self.weighted_by_key)
        self.history.record_federated_evaluation(server_round, float(aggregated["loss"]), float(aggregated["accuracy"]))
        self.on_evaluated(server_round)
        return aggregated

    def _evaluation_answer(self, server_round: int, node: int, reply: Message) -> RecordDict | str | None:
        """One evaluation reply, kept under the owner the node is bound to: its checked figures to average, None
        (an error or a refusal, logged), or why it is the node's failure."""
        if reply.has_error():
            log.error("round %d: evaluation at node %d failed: %s", server_round, node, reply.error.reason)
            return None
        owner = self.receipts.owner_of(node)
        if owner is None:
            return "answered an evaluation request, but no owner's key vouched for it: its answer is not kept"
        content = reply.content
        refusal = content.config_records.get(protocol.PRIVACY)
        if refusal is not None:  # the owner declined
            reason = str(refusal.get(protocol.UNSIGNED_REFUSAL, "declined"))[:2000]
            self.not_evaluating[node] = reason
            self.history.record_evaluation_refusal(server_round, owner, reason)
            log.info("round %d: owner %s does not evaluate: %s", server_round, owner, reason)
            return None
        said = content.config_records.get(protocol.OWNER)
        named = said.get(protocol.OWNER_ID) if said is not None else None
        if named is not None and named != owner:
            return f"its evaluation reply names owner {str(named)[:200]!r}, but the node speaks for owner {owner}"
        metrics = content.metric_records.get(protocol.METRICS)
        if metrics is None or len(content.metric_records) != 1:
            return f"the evaluation reply of owner {owner} carries no single metric record"
        loss, accuracy = _finite_metric(content, "loss"), _finite_metric(content, "accuracy")
        examples = metrics.get("num-examples")
        if loss is None or accuracy is None or not 0 <= accuracy <= 1 or not isinstance(examples, (int, float)) \
                or isinstance(examples, bool) or not 0 < examples <= MAX_CLAIMED_EXAMPLES:
            return (f"the evaluation reply of owner {owner} carries no finite loss, accuracy in [0, 1] and "
                    f"num-examples from 1 to {MAX_CLAIMED_EXAMPLES}")
        counted = examples if metrics.get(protocol.EXAMPLES_PUBLIC, 1) else None  # None: the owner kept its count
        self.history.record_evaluation(server_round, owner, loss, accuracy, counted)
        return RecordDict({protocol.METRICS: MetricRecord({"loss": loss, "accuracy": accuracy,
                                                           "num-examples": examples})})


def _finite_metric(content: RecordDict, key: str) -> float | None:
    """A number a reply's metric record holds under ``key``, if it is one and finite (else None)."""
    metrics = content.metric_records.get(protocol.METRICS)
    value = metrics.get(key) if metrics is not None else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _short(err: BaseException) -> str:
    """An exception as one bounded line for the history (a malformed reply chooses its contents)."""
    return f"{type(err).__name__}: {str(err)[:300]}"


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tupled(value: Any) -> Any:
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value
