"""Secure aggregation of owners' clipped updates: Flower's SecAgg+ under privfl's Message API.

:func:`secure_sum` runs SecAgg+ (Bell et al. 2020) among the sampled owners and returns
the *unweighted sum* of their clipped deltas, which is all the coordinator learns of
them; the coordinator then adds the DP noise to that sum
(:meth:`privfl.server.owner_dp.OwnerLevelDP.aggregate`).  The owners' side is
:func:`privfl.client.secure_aggregation.privfl_secagg_mod`.

How it is driven.  Flower 1.42 has SecAgg+ only in its legacy workflow.  secure_sum runs
Flower's ``SecAggPlusWorkflow`` itself (``workflow(grid, legacy_context)``), with a
``LegacyContext`` built here around a throwaway Context and a minimal legacy strategy
(:class:`_SumStrategy`) whose ``configure_fit`` names exactly ``nodes`` and whose
``aggregate_fit`` keeps the unmasked result.  A thin subclass of the workflow changes
three things only: the masked-vectors request carries privfl's own records (``content``,
as the caller built it, plus a ``"privfl-secagg"`` ConfigRecord saying what to mask) in
place of a legacy FitIns; the weight of every owner is 1 (``max_weight=1``, the adapter
reports ``num_examples=1``), so Flower's weighted average is the plain mean, which is
multiplied back by the number of contributors to give the sum; and it remembers which
owners' masked vectors went into the sum.  All cryptography (ECDH on P-384 with HKDF,
Fernet for the shares in transit, Shamir secret sharing, the masks) is Flower's.

A Grid wrapper (:class:`_GuardedGrid`) sits between the workflow and the caller's grid:
it drops replies that are malformed for their stage (they would otherwise crash
Flower's stage code, e.g. a masked vector of the wrong shape) so such an owner counts as
dropped, records why each owner dropped, and keeps the records each owner returned with
its masked vector (privfl's ``"privacy"`` receipt, its metrics) for the caller, untouched.

Quantization and precision.  SecAgg+ sums integers modulo ``modulus_range`` (M, 2^32).
Each owner's values are first clipped per coordinate to [-c, c] (``clipping_range``, c)
and mapped to integers in [0, Q] (``quantization_range``, Q, default 2^22) by stochastic
rounding, step ``2c / Q``.  An owner's update clipped to L2 norm C has every coordinate
within C, so with ``c >= C`` the per-coordinate clipping never changes it: secure_sum
refuses ``clipping_range < clip_norm``; ``c = C`` gives the finest step.  The rounding is
unbiased; the error of one coordinate of the sum of k owners is below ``k * 2c / Q`` and
its standard deviation at most ``sqrt(k) * c / Q`` (c = C = 1, Q = 2^22, k = 10: at most
4.8e-6, typically below 1e-6, far under DP noise of z C).  The sum of k values in [0, Q]
must stay below M: k (Q + 1) < M, i.e. at most 1023 owners per round with the defaults
(:func:`check_secagg` refuses more; lower Q for larger cohorts, at a coarser step).

Threat model and limits (Flower's SecAgg+ as shipped in 1.42).  Semi-honest: the
coordinator sees only the sum of the masked updates of the owners that reached the
masked-vectors stage, while fewer than ``reconstruction_threshold`` owners collude with
it; :func:`check_secagg` requires ``2 t > num_shares`` so that a coordinator that lies
about who dropped cannot gather both kinds of shares of one owner.  There is no
signature on the owners' messages (no defence against a coordinator that impersonates
owners, SecAgg's "active" variant).  Flower's mask generator expands the agreed secret
with NumPy's Mersenne Twister seeded by 32 bits folded out of it
(``flwr.common.secure_aggregation.secaggplus_utils.pseudo_rand_gen``): weaker than the
256-bit secret it comes from, and not a cryptographic PRG; it is used as it is, since
privfl writes no cryptography of its own.  The DP noise is central: the coordinator sees
the exact sum of clipped deltas before adding noise.  Nothing checks what an owner masks:
an owner that runs modified code can put any value in its share of the sum (poisoning;
range proofs are not part of SecAgg+).  That harms the model, not the other owners'
privacy: each honest owner's own mod clips its update to C, which is what the noise
protects.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import FitIns, Parameters, bytes_to_ndarray, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    Key,
    Stage,
)
from flwr.server import LegacyContext
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid
from privfl.protocol import SECAGG_CLIP_NORM as CLIP_NORM
from privfl.protocol import SECAGG_CLIPPING_RANGE as CLIPPING_RANGE
from privfl.protocol import SECAGG_COUNT_UNCLIPPED as COUNT_UNCLIPPED
from privfl.protocol import SECAGG_HAS_UPDATE as HAS_UPDATE
from privfl.protocol import SECAGG_PAYLOAD_KEY as PAYLOAD_KEY
from privfl.protocol import SECAGG_RECORD

from privfl.logs import get_logger

log = get_logger("server")

DEFAULT_QUANTIZATION_RANGE = 2**22
DEFAULT_MODULUS_RANGE = 2**32
_FITRES_KEYS = ("fitres.parameters", "fitres.num_examples", "fitres.metrics", "fitres.status")


class SecAggConfigError(ValueError):
    """SecAgg+ settings that cannot work for this cohort; the message says what to change."""


class SecureAggregationError(RuntimeError):
    """A SecAgg+ round could not produce a sum (too many owners dropped, or none answered)."""

    def __init__(self, message: str, failures: dict[int, str]) -> None:
        super().__init__(message)
        self.failures = failures


@dataclass
class SecureSumResult:
    """What one SecAgg+ round gives the coordinator.

    ``sum``: the unweighted sum of the contributors' payloads (their clipped deltas),
    float64 arrays named as the request's payload ArrayRecord.  ``nodes``: owners whose
    update is in the sum.  ``no_update``: owners that took part but returned no update
    (e.g. a refusal; they masked a zero vector).  ``dropped``: owners whose payload is not
    in the sum, with ``failures[node]`` saying why.  ``replies[node]``: the other records
    each owner in ``nodes`` or ``no_update`` returned with its masked vector (privfl's
    ``"privacy"`` receipt, its metrics), untouched; ``messages[node]``: the same records as
    a reply Message from that node (its metadata as received), for code that reads
    replies (e.g. ``ReceiptCheck.accept``).  ``unclipped_count``: how many contributors had
    norm <= C (only with ``count_unclipped``; exact, it was summed masked).
    """

    sum: dict[str, np.ndarray]
    nodes: list[int]
    no_update: list[int]
    dropped: list[int]
    replies: dict[int, RecordDict]
    unclipped_count: int | None = None
    failures: dict[int, str] = field(default_factory=dict)
    messages: dict[int, Message] = field(default_factory=dict)


def check_secagg(num_shares: int, reconstruction_threshold: int, cohort_size: int, *,
                 quantization_range: int = DEFAULT_QUANTIZATION_RANGE,
                 modulus_range: int = DEFAULT_MODULUS_RANGE) -> None:
    """Raise :class:`SecAggConfigError` unless SecAgg+ can run among ``cohort_size`` owners.

    - ``num_shares`` (each owner's secrets are split among this many owners, itself
      included): an integer, 3 <= num_shares <= cohort_size, and odd unless it equals the
      cohort (Flower 1.42 mishandles an even number below the cohort);
    - ``reconstruction_threshold`` t (shares needed to rebuild a secret): an integer,
      2 <= t < num_shares (Flower refuses t = num_shares), and 2 t > num_shares (else a
      coordinator that claims an owner dropped to some owners and not to others can
      gather enough shares to unmask it);
    - each owner's neighbourhood tolerates ``num_shares - t`` dropped owners;
    - cohort_size (quantization_range + 1) < modulus_range (the sum must not wrap);
      modulus_range a power of two <= 2^32.
    """
    for name, value in (("num_shares", num_shares), ("reconstruction_threshold", reconstruction_threshold),
                        ("cohort_size", cohort_size), ("quantization_range", quantization_range),
                        ("modulus_range", modulus_range)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SecAggConfigError(f"{name} must be an integer, got {value!r}")
    if cohort_size < 3:
        raise SecAggConfigError(f"SecAgg+ needs at least 3 owners in the round, got {cohort_size}: sample more owners "
                                "(or aggregate this round without secure aggregation, if the owners' policy allows)")
    if num_shares < 3:
        raise SecAggConfigError(f"num_shares must be >= 3, got {num_shares}")
    if num_shares > cohort_size:
        raise SecAggConfigError(f"num_shares ({num_shares}) cannot exceed the number of owners in the round "
                                f"({cohort_size}): each share goes to a different owner")
    if num_shares % 2 == 0 and num_shares != cohort_size:
        raise SecAggConfigError(f"num_shares ({num_shares}) must be odd when it is below the number of owners "
                                f"({cohort_size}): use {num_shares - 1} or {num_shares + 1}")
    if reconstruction_threshold < 2:
        raise SecAggConfigError(f"reconstruction_threshold must be >= 2, got {reconstruction_threshold}")
    if reconstruction_threshold > num_shares:
        raise SecAggConfigError(f"reconstruction_threshold ({reconstruction_threshold}) cannot exceed num_shares "
                                f"({num_shares}): there would never be enough shares to rebuild a secret")
    if reconstruction_threshold == num_shares:
        raise SecAggConfigError(f"reconstruction_threshold ({reconstruction_threshold}) must be below num_shares "
                                f"({num_shares}): with t = num_shares no owner may drop out")
    if 2 * reconstruction_threshold <= num_shares:
        raise SecAggConfigError(
            f"reconstruction_threshold ({reconstruction_threshold}) must be more than half of num_shares "
            f"({num_shares}), e.g. {num_shares // 2 + 1}: otherwise a coordinator that tells some owners that an owner "
            "dropped and others that it did not can collect enough shares of both its secrets to unmask its update")
    if quantization_range < 2:
        raise SecAggConfigError(f"quantization_range must be >= 2, got {quantization_range}")
    if modulus_range > 2**32 or modulus_range & (modulus_range - 1):
        raise SecAggConfigError(f"modulus_range must be a power of two <= 2^32, got {modulus_range}")
    if cohort_size * (quantization_range + 1) >= modulus_range:
        raise SecAggConfigError(
            f"{cohort_size} owners x quantization_range {quantization_range} would wrap around modulus_range "
            f"{modulus_range}: at most {(modulus_range - 1) // (quantization_range + 1)} owners a round, or a "
            "smaller quantization_range (coarser precision)")


def secure_sum(grid: Grid, nodes: Sequence[int], content: RecordDict | Mapping[int, RecordDict], *, num_shares: int,
               reconstruction_threshold: int, clipping_range: float,
               quantization_range: int = DEFAULT_QUANTIZATION_RANGE, modulus_range: int = DEFAULT_MODULUS_RANGE,
               timeout: float, clip_norm: float | None = None, count_unclipped: bool = False,
               payload_key: str = "arrays", server_round: int = 0) -> SecureSumResult:
    """Run SecAgg+ among ``nodes`` on ``content`` and return the unweighted sum of their updates.

    ``content``: the train request each owner's handler receives in the masked-vectors
    stage, as privfl's strategy builds it (e.g. ``"arrays"``: the global model,
    ``"config"``: the RoundRequest); every record reaches the handler unchanged.  One
    RecordDict for all owners, or a mapping node -> RecordDict (privfl's requests name each
    owner's anchored head).  Each must hold an ArrayRecord ``payload_key`` with the same
    names and shapes: the owners' updates have them.
    ``clipping_range`` (c): SecAgg+'s per-coordinate range, >= ``clip_norm``.
    ``clip_norm`` (C): when given, each owner's mod clips its update to L2 norm C (a no-op
    for an update the handler already clipped).  ``count_unclipped``: also sum, masked,
    each owner's bit "norm <= C" (adaptive clipping); see
    :mod:`privfl.client.secure_aggregation` for where the bit comes from.  ``timeout``:
    seconds to wait for the owners at each of the four stages.

    Raises :class:`SecAggConfigError` before any message for impossible settings, and
    :class:`SecureAggregationError` when too many owners drop out for the sum to be
    recovered (every owner needs ``reconstruction_threshold`` live neighbours).
    """
    nodes = list(nodes)
    if len(set(nodes)) != len(nodes) or any(isinstance(n, bool) or not isinstance(n, int) for n in nodes):
        raise SecAggConfigError(f"nodes must be distinct node ids, got {nodes}")
    check_secagg(num_shares, reconstruction_threshold, len(nodes), quantization_range=quantization_range,
                 modulus_range=modulus_range)
    if not (isinstance(clipping_range, (int, float)) and math.isfinite(clipping_range) and clipping_range > 0):
        raise SecAggConfigError(f"clipping_range must be finite and > 0, got {clipping_range!r}")
    if clip_norm is not None:
        if not (isinstance(clip_norm, (int, float)) and math.isfinite(clip_norm) and clip_norm > 0):
            raise SecAggConfigError(f"clip_norm must be finite and > 0, got {clip_norm!r}")
        if clipping_range < clip_norm:
            raise SecAggConfigError(
                f"clipping_range ({clipping_range:g}) is below the L2 clip norm ({clip_norm:g}): SecAgg+ would also "
                "clip single coordinates, biasing the sum; an update of L2 norm <= C has every coordinate within C, "
                f"so use clipping_range >= {clip_norm:g} (equal gives the finest quantization step)")
    if count_unclipped and clip_norm is None:
        raise SecAggConfigError("count_unclipped needs the round's clip_norm")
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise SecAggConfigError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    contents = _per_node(content, nodes)
    names, shapes = _payload_layout(contents, payload_key)
    spec = ConfigRecord({
        PAYLOAD_KEY: payload_key, CLIP_NORM: float(clip_norm or 0.0), COUNT_UNCLIPPED: bool(count_unclipped),
        CLIPPING_RANGE: float(clipping_range),
    })
    # One RecordDict per owner (Flower's stage adds the owner's own SecAgg+ configs to it);
    # the records in it are the caller's, shared and unchanged.
    requests = {node: RecordDict({**dict(contents[node].items()), SECAGG_RECORD: spec}) for node in nodes}
    payload_shapes = [(1,)] + shapes + ([(1,)] if count_unclipped else [])  # Flower prepends the weight
    guarded = _GuardedGrid(grid, nodes, payload_shapes)
    strategy = _SumStrategy(nodes, guarded)
    workflow = _PrivflSecAggPlus(requests, num_shares, reconstruction_threshold, clipping_range=float(clipping_range),
                                 quantization_range=quantization_range, modulus_range=modulus_range,
                                 timeout=float(timeout))
    state = RecordDict({MAIN_CONFIGS_RECORD: ConfigRecord({WorkflowKey.CURRENT_ROUND: int(server_round)}),
                        MAIN_PARAMS_RECORD: ArrayRecord()})
    scratch = Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=state, run_config={})
    flwr_log = logging.getLogger("flwr")
    flwr_log.addFilter(_quiet_workflow)
    try:
        workflow(guarded, LegacyContext(scratch, strategy=strategy))
    finally:
        flwr_log.removeFilter(_quiet_workflow)

    in_sum = sorted(workflow.in_sum)
    failures = {node: guarded.failures.get(node, "no answer") for node in nodes if node not in in_sum}
    if strategy.mean is None:
        stage = guarded.last_stage or "setup"
        raise SecureAggregationError(
            f"secure aggregation among {len(nodes)} owners stopped at stage '{stage}': too few owners left to "
            f"recover the sum (each needs {reconstruction_threshold} live neighbours of {num_shares}); "
            f"{len(failures)} dropped: " + "; ".join(f"node {n}: {why}" for n, why in sorted(failures.items())),
            failures)
    summed = [np.asarray(arr, dtype=np.float64) * len(in_sum) for arr in strategy.mean]
    unclipped = None
    if count_unclipped:
        unclipped = round(float(summed[-1].reshape(-1)[0]) / clipping_range)
        summed = summed[:-1]
    total = {name: arr.reshape(shape) for name, arr, shape in zip(names, summed, shapes, strict=True)}
    contributed = [n for n in in_sum if guarded.has_update.get(n, False)]
    empty = [n for n in in_sum if not guarded.has_update.get(n, False)]
    return SecureSumResult(sum=total, nodes=contributed, no_update=empty,
                           dropped=sorted(n for n in nodes if n not in in_sum),
                           replies={n: guarded.extras[n] for n in in_sum}, unclipped_count=unclipped,
                           failures=failures,
                           messages={n: Message(content=guarded.extras[n], metadata=copy.copy(guarded.metadata[n]))
                                     for n in in_sum})


def _per_node(content: RecordDict | Mapping[int, RecordDict], nodes: list[int]) -> dict[int, RecordDict]:
    if isinstance(content, RecordDict):
        return dict.fromkeys(nodes, content)
    if not isinstance(content, Mapping) or set(content) != set(nodes) \
            or not all(isinstance(c, RecordDict) for c in content.values()):
        raise SecAggConfigError("content must be one RecordDict, or a mapping from each of the nodes (and no other) "
                                "to its RecordDict")
    return {node: content[node] for node in nodes}


def _payload_layout(contents: dict[int, RecordDict], payload_key: str) -> tuple[list[str], list[tuple[int, ...]]]:
    """Names and shapes of the summed arrays: the ArrayRecord ``payload_key`` every request holds."""
    layout = None
    for node, content in contents.items():
        if payload_key not in content.array_records or len(content.array_records[payload_key]) == 0:
            raise SecAggConfigError(f"the request for node {node} holds no (non-empty) ArrayRecord '{payload_key}' "
                                    "(the global model): the owners' updates are summed with its names and shapes")
        record = content.array_records[payload_key]
        here = (list(record.keys()), [tuple(record[name].shape) for name in record])
        if layout is None:
            layout = here
        elif here != layout:
            raise SecAggConfigError(f"the request for node {node} has another '{payload_key}' layout than the others: "
                                    "every owner's update must have the same names and shapes")
    assert layout is not None
    return layout


def _quiet_workflow(record: logging.LogRecord) -> bool:
    """Drop the workflow's INFO lines (legacy wording, e.g. "sampled 10 clients (out of 0)"); keep its warnings."""
    return record.levelno >= logging.WARNING or not record.pathname.endswith("secaggplus_workflow.py")


class _PrivflSecAggPlus(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow with privfl's request in the masked-vectors stage and weight 1."""

    def __init__(self, requests: dict[int, RecordDict], num_shares: int, reconstruction_threshold: int,
                 **kwargs: Any) -> None:
        super().__init__(num_shares, reconstruction_threshold, max_weight=1.0, **kwargs)
        self.requests = requests
        self.in_sum: set[int] = set()

    def collect_masked_vectors_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        state.nid_to_fitins = {nid: self.requests[nid] for nid in state.nid_to_fitins}
        ok = super().collect_masked_vectors_stage(grid, context, state)
        self.in_sum = set(state.active_node_ids)
        return ok


class _SumStrategy(Strategy):
    """The legacy strategy the workflow asks: it samples exactly ``nodes`` and keeps the unmasked mean."""

    def __init__(self, nodes: list[int], grid: Grid) -> None:
        self.nodes = nodes
        self.grid = grid
        self.mean: list[np.ndarray] | None = None

    def initialize_parameters(self, client_manager: Any) -> Parameters | None:
        return None

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> list[tuple[Any, FitIns]]:
        run_id = self.grid.run.run_id
        return [(GridClientProxy(node, self.grid, run_id), FitIns(parameters, {})) for node in self.nodes]

    def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple[Parameters | None, dict]:
        if results:
            self.mean = parameters_to_ndarrays(results[0][1].parameters)
        return None, {}  # nothing for the workflow's legacy history

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: Any) -> list:
        return []

    def aggregate_evaluate(self, server_round: int, results: list, failures: list) -> tuple[None, dict]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> None:
        return None


class _GuardedGrid(Grid):
    """The caller's grid, minus replies that would break Flower's stage code; keeps the owners' records."""

    def __init__(self, grid: Grid, nodes: list[int], payload_shapes: list[tuple[int, ...]]) -> None:
        self.grid = grid
        self.nodes = set(nodes)
        self.payload_shapes = payload_shapes
        self.failures: dict[int, str] = {}
        self.extras: dict[int, RecordDict] = {}
        self.has_update: dict[int, bool] = {}
        self.metadata: dict[int, Any] = {}
        self.last_stage = ""

    # -- delegated -------------------------------------------------------------------

    @property
    def run(self) -> Any:
        return self.grid.run

    def set_run(self, run_id: int) -> None:
        self.grid.set_run(run_id)

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    # -- checked ---------------------------------------------------------------------

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        asked = [m.metadata.dst_node_id for m in messages]
        # Read the stage before sending: an in-process grid hands these very objects to the owners.
        stage = str(messages[0].content.config_records[RECORD_KEY_CONFIGS][Key.STAGE]) if messages else ""
        self.last_stage = stage
        replies = list(self.grid.send_and_receive(messages, timeout=timeout)) if messages else []
        kept, answered = [], set()
        for reply in replies:
            node = reply.metadata.src_node_id
            if node not in asked or node in answered:
                log.warning("secure aggregation: ignoring an unexpected reply from node %s at stage %s", node, stage)
                continue
            answered.add(node)
            if reply.has_error():
                self.failures[node] = f"{stage}: {reply.error.reason}".strip()
                kept.append(reply)
                continue
            problem = self._problem(stage, reply)
            if problem:
                self.failures[node] = f"{stage}: {problem}"
                log.error("secure aggregation: node %s dropped at stage %s: %s", node, stage, problem)
                continue
            if stage == Stage.COLLECT_MASKED_VECTORS:
                self.extras[node] = RecordDict({k: v for k, v in reply.content.items()
                                                if k not in (RECORD_KEY_CONFIGS, SECAGG_RECORD, *_FITRES_KEYS)})
                marker = reply.content.config_records.get(SECAGG_RECORD, {})
                self.has_update[node] = bool(marker.get(HAS_UPDATE, False))
                self.metadata[node] = reply.metadata
            kept.append(reply)
        for node in asked:
            if node not in answered:
                self.failures[node] = f"{stage}: no answer within {timeout} s"
        return kept

    def _problem(self, stage: str, reply: Message) -> str | None:
        """Why a reply cannot be used at ``stage`` (None: it can)."""
        content = reply.content
        if RECORD_KEY_CONFIGS not in content.config_records:
            return "the reply carries no SecAgg+ record"
        got = content.config_records[RECORD_KEY_CONFIGS]
        if stage == Stage.SETUP:
            if not all(isinstance(got.get(k), bytes) for k in (Key.PUBLIC_KEY_1, Key.PUBLIC_KEY_2)):
                return "no public keys"
        elif stage == Stage.SHARE_KEYS:
            dsts, ctxts = got.get(Key.DESTINATION_LIST), got.get(Key.CIPHERTEXT_LIST)
            if not (isinstance(dsts, list) and isinstance(ctxts, list) and len(dsts) == len(ctxts)
                    and all(isinstance(d, int) for d in dsts) and all(isinstance(c, bytes) for c in ctxts)):
                return "malformed key shares"
        elif stage == Stage.COLLECT_MASKED_VECTORS:
            if not all(k in content for k in _FITRES_KEYS):
                return "the reply is not in the shape privfl_secagg_mod gives it"
            vectors = got.get(Key.MASKED_PARAMETERS)
            if not isinstance(vectors, list) or len(vectors) != len(self.payload_shapes):
                return "the masked vector has the wrong number of arrays"
            for raw, shape in zip(vectors, self.payload_shapes, strict=True):
                try:
                    array = bytes_to_ndarray(raw) if isinstance(raw, bytes) else None
                except ValueError:
                    array = None
                if array is None or tuple(array.shape) != shape or not np.issubdtype(array.dtype, np.integer):
                    return "the masked vector does not have the global model's shape"
        elif stage == Stage.UNMASK:
            nids, shares = got.get(Key.NODE_ID_LIST), got.get(Key.SHARE_LIST)
            if not (isinstance(nids, list) and isinstance(shares, list) and len(nids) == len(shares)
                    and all(isinstance(n, int) and n in self.nodes for n in nids)
                    and all(isinstance(s, bytes) for s in shares)):
                return "malformed key shares"
        return None


__all__ = ["DEFAULT_MODULUS_RANGE", "DEFAULT_QUANTIZATION_RANGE", "SecAggConfigError", "SecureAggregationError",
           "SecureSumResult", "check_secagg", "secure_sum"]
