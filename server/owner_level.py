"""Owner-level DP rounds (DP-FedAvg): charge every owner, draw, clip, sum (securely, if asked), noise.

Each round, inside Flower's ordinary loop (``configure_train`` / ``aggregate_train``):

1. the population is every identified owner that has not refused; each is told the
   round's mechanism (noise, sampling, clip, population size) and charges its event,
   or refuses (:mod:`privfl.client.owner_level`); the charges are kept and anchored;
2. the sample is drawn from the owners that charged (Poisson: each with the announced
   probability, from the OS's randomness; fixed-size: the announced m, scaled down if
   owners refused so that no owner's chance to be drawn exceeds the announced m/N);
3. the drawn owners train and send their update as a difference from the global model,
   clipped to C: in the clear, or summed by SecAgg+ (Flower's protocol) so the
   coordinator never sees one update;
4. :class:`~privfl.server.owner_dp.OwnerLevelDP` adds Gaussian noise to the sum, divides
   by the expected cohort and moves the global model (and the clip, when adaptive).

The mechanism's parameters live in the run config; the event every owner is charged is
built from them in one place (:meth:`privfl.protocol.OwnerRound.event`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid

from privfl import protocol
from privfl.config import ExperimentConfig
from privfl.logs import get_logger
from privfl.privacy.ledger import ReceiptRejected
from privfl.privacy.ledger.anchor import AGGREGATED, CHARGED, REFUSED, UPDATE_DROPPED
from privfl.protocol import OWNER_CHARGE_STAGE, OwnerRound
from privfl.server.owner_dp import OwnerLevelDP, OwnerSampling, noise_rng, sum_clipped_updates
from privfl.server.receipts import Accepted, ReleaseMismatch
from privfl.server.strategy import MALFORMED, BudgetAwareFedAvg, _short

log = get_logger("server")


def owner_level_dp(config: ExperimentConfig) -> OwnerLevelDP:
    """The round mechanism the config describes (validated when checked against a population)."""
    sampling = OwnerSampling("poisson", rate=config.owner_sample_rate) if config.owner_sampling == "poisson" \
        else OwnerSampling("fixed", size=config.owners_per_round)
    return OwnerLevelDP(noise_multiplier=config.owner_noise_multiplier, clipping_norm=config.owner_clipping_norm,
                        sampling=sampling, adaptive=config.adaptive_clipping, target_quantile=config.target_quantile,
                        clip_learning_rate=config.clip_learning_rate,
                        clipped_count_stddev=config.clipped_count_stddev or None)


def secagg_parameters(config: ExperimentConfig, cohort: int) -> tuple[int, int]:
    """(shares, threshold) for a cohort: the config's, or every owner and just over half of them."""
    shares = config.secagg_shares or cohort
    threshold = config.secagg_threshold or shares // 2 + 1
    return shares, threshold


class OwnerLevelFedAvg(BudgetAwareFedAvg):
    def __init__(self, *, config: ExperimentConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.dp = owner_level_dp(config)
        self._round: dict[str, Any] = {}

    def state(self) -> dict:
        return {**super().state(), "owner_dp": self.dp.state()}

    def restore(self, completed_rounds: int, state: dict) -> None:
        super().restore(completed_rounds, state)
        if state.get("owner_dp"):
            self.dp.restore(state["owner_dp"])

    # -- step 1 and the draw -------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.round_offset
        self._global = arrays
        population = self._eligible_nodes(grid, server_round)
        record = self.history.round(server_round)
        terms = self._terms(len(population))
        self._round = {"terms": terms, "population": len(population), "nodes": population, "secure_sum": None}
        charged = self._charge(grid, server_round, population, terms)
        self._round["charged"] = charged
        sampled = self._draw(charged, len(population))
        record.owner_level = {"population": len(population), "charged": len(charged), "sampled": len(sampled),
                              "aggregated": 0, "clipping_norm": self.dp.clipping_norm,
                              "noise_stddev": self.dp.noise_stddev(max(len(population), 1)),
                              "secure": terms.secure}
        log.info("round %d: %d of %d owners charged the owner-level event, %d drawn", server_round, len(charged),
                 len(population), len(sampled))
        self._round["sampled"] = sampled
        if not sampled:
            return []
        messages = self._messages(server_round, arrays, sampled, MessageType.TRAIN, privacy_unit="owner",
                                  owner_round=terms)
        if not terms.secure:
            return messages
        from privfl.server.secure_aggregation import SecureAggregationError, secure_sum

        shares, threshold = secagg_parameters(self.config, len(sampled))
        try:
            result = secure_sum(grid, sampled, {m.metadata.dst_node_id: m.content for m in messages},
                                num_shares=min(shares, len(sampled)), reconstruction_threshold=threshold,
                                clipping_range=terms.clipping_norm, clip_norm=terms.clipping_norm,
                                count_unclipped=self.dp.adaptive, timeout=self.timeout, server_round=server_round)
        except SecureAggregationError as err:
            log.error("round %d: secure aggregation failed: %s; the round releases noise only", server_round, err)
            result = None
        self._round["secure_sum"] = result
        return []

    def _terms(self, population: int) -> OwnerRound:
        dp = self.dp
        return OwnerRound(noise_multiplier=dp.noise_multiplier, sampling=dp.sampling.kind,
                          sample_rate=dp.sampling.rate, sample_size=dp.sampling.size, population=max(population, 1),
                          clipping_norm=float(dp.clipping_norm), secure=self.config.secure_aggregation)

    def _charge(self, grid: Grid, server_round: int, population: list[int], terms: OwnerRound) -> list[int]:
        """Step 1: every owner in the population charges the round's event (or refuses)."""
        if not population:
            return []
        messages = self._messages(server_round, ArrayRecord(), population, MessageType.TRAIN, privacy_unit="owner",
                                  owner_round=terms, stage=OWNER_CHARGE_STAGE)
        record = self.history.round(server_round)
        kept, charged = [], []
        for reply in grid.send_and_receive(messages, timeout=self.timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                self._fail(record, server_round, node, f"owner-level charge failed: {reply.error.reason}")
                continue
            try:
                accepted = self.receipts.accept(reply, server_round, owner_round=terms, stage=OWNER_CHARGE_STAGE)
            except (ReceiptRejected, *MALFORMED) as err:
                self._fail(record, server_round, node, f"owner-level charge rejected: {_short(err)}")
                continue
            if node not in population:  # only the nodes asked to charge may be drawn
                self._fail(record, server_round, node, "answered an owner-level charge it was not asked for")
                continue
            self.history.record_receipt(server_round, accepted.receipt)
            if accepted.receipt.status == protocol.REFUSED:
                kept.append((accepted, REFUSED))
                self._refuse(node, accepted.receipt.reason, signed=accepted.receipt.signed)
                log.warning("round %d: owner %s refused the owner-level round: %s", server_round,
                            accepted.receipt.owner_id, accepted.receipt.reason)
                continue
            kept.append((accepted, CHARGED))
            charged.append(node)
        self.receipts.commit(server_round, kept)
        return sorted(charged)

    def _draw(self, charged: list[int], population: int) -> list[int]:
        sampling = self.dp.sampling
        if not charged:  # every owner refused: nobody to draw (drawing from nobody raised, crashing the run)
            return []
        if sampling.kind == "fixed":  # never raise an owner's chance above the announced m / N
            size = (sampling.size * len(charged)) // max(population, 1)
            return sorted(OwnerSampling("fixed", size=size).draw(charged)) if size else []
        return sorted(sampling.draw(charged))

    # -- steps 3 and 4 -------------------------------------------------------------------

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        record = self.history.round(server_round)
        terms: OwnerRound = self._round["terms"]
        if not self._round.get("charged"):  # nobody could be drawn: no owner's data is at stake, nothing is released
            record.aggregated = 0
            return None, None
        secure = self._round.get("secure_sum")
        if secure is not None:
            replies = list(secure.messages.values())
        kept: list[tuple[Accepted, str]] = []
        updates: list[ArrayRecord] = []
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                self._fail(record, server_round, node, f"failed: {reply.error.reason}")
                continue
            try:
                accepted = self.receipts.accept(reply, server_round, owner_round=terms)
            except ReleaseMismatch as err:
                kept.append((err.accepted, UPDATE_DROPPED))
                self._fail(record, server_round, node, f"update dropped: {err} (its charge stands)")
                continue
            except (ReceiptRejected, *MALFORMED) as err:
                self._fail(record, server_round, node, f"rejected: {_short(err)}")
                continue
            receipt = accepted.receipt
            if receipt.privacy_unit == "record":  # both units: the DP-SGD charge of this release
                self.history.record_receipt(server_round, receipt)
            if receipt.status == protocol.REFUSED:
                kept.append((accepted, REFUSED))
                record.refused[receipt.owner_id] = receipt.reason
                continue
            if secure is None:
                try:
                    problem = self._update_problem(reply, accepted)
                except MALFORMED as err:
                    problem = f"malformed update: {_short(err)}"
                if problem:
                    kept.append((accepted, UPDATE_DROPPED))
                    record.rejected_updates[receipt.owner_id] = problem
                    self._fail(record, server_round, node, f"update from owner {receipt.owner_id} dropped: {problem}")
                    continue
                updates.append(reply.content[protocol.ARRAYS])
            if receipt.privacy_unit == "record":
                kept.append((accepted, AGGREGATED))
            self.history.record_participant(server_round, receipt.owner_id)
        self.receipts.commit(server_round, kept)
        global_arrays = {k: v.numpy() for k, v in self._global.items()}
        if secure is not None:
            clipped_sum, unclipped = secure.sum, secure.unclipped_count
            aggregated = len(secure.nodes)
        else:
            clipped_sum, unclipped = sum_clipped_updates(updates, self.dp.clipping_norm) if updates else (None, 0)
            aggregated = len(updates)
        new_global = self.dp.aggregate(global_arrays, clipped_sum, unclipped, self._round["population"],
                                       rng=noise_rng())
        record.aggregated = aggregated
        record.owner_level["aggregated"] = aggregated
        record.owner_level["next_clipping_norm"] = self.dp.clipping_norm
        arrays = ArrayRecord(OrderedDict((k, torch.from_numpy(np.ascontiguousarray(new_global[k],
                                                                                   dtype=global_arrays[k].dtype)))
                                         for k in global_arrays))
        return arrays, MetricRecord({"owners-aggregated": aggregated})

    def _norm_problem(self, update: ArrayRecord, reference: ArrayRecord | None, examples: int,
                      noise: float | None = None) -> str | None:
        return None  # an owner-level update is a difference clipped to C, and is clipped again when summed
