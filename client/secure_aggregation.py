"""The owner's side of secure aggregation: Flower's SecAgg+ in front of privfl's train handler.

:func:`privfl_secagg_mod` is a ClientApp mod for the train function::

    @app.train(mods=[privfl_secagg_mod])
    def train(msg, context): ...

A train message that carries SecAgg+ stage configs (Flower's ``"secaggplus_configs"``
ConfigRecord, sent by :func:`privfl.server.secure_aggregation.secure_sum`) runs through
Flower's own ``secaggplus_mod`` (key agreement, Shamir shares, masking: Flower's
cryptography, none written here).  Any other message (privfl's ordinary train requests)
goes to the handler untouched.

Only the masked-vectors stage calls the handler.  It sees the request exactly as
``secure_sum`` was given it (Flower's and privfl's SecAgg+ records removed), and must
reply with::

    RecordDict({
        "arrays": ArrayRecord(delta),            # local model - global model; same names and
                                                 # shapes as the request's "arrays"
        "metrics": MetricRecord({"num-examples": 1, "unclipped": 0 or 1, ...}),
        "privacy": ConfigRecord(receipt),        # any other records travel back as they are
    })

or, to refuse, without ``"arrays"`` (e.g. only ``"privacy"``): the owner then masks a
zero vector, so the round goes on and its refusal receipt still reaches the coordinator.

:class:`_PayloadAdapter` turns that reply into what Flower's mod masks: the delta, its
weight fixed to 1 (owner-level DP: ``num-examples`` is ignored for weighting), clipped
to the round's L2 norm C when the coordinator sent one (a delta already clipped by the
handler is unchanged), followed, when the coordinator counts unclipped updates
(adaptive clipping), by the owner's bit "norm <= C" scaled to the quantization range.
That bit is the handler's ``metrics["unclipped"]`` when present (the handler clipped
itself: it knows the norm before clipping), else ``||delta|| <= C`` of the delta it
returned (the handler returned the raw delta and the adapter clips it); a returned
delta above C counts as clipped whatever the handler says.  The bit is
taken out of the clear metrics: it leaves only masked.  The delta itself leaves only
masked: Flower's mod empties every ArrayRecord of the reply, and the adapter keeps no
other ArrayRecord.  The other records (receipt, remaining metrics) travel in the clear.

Dropping out.  Any exception in a SecAgg+ stage (the handler's included) becomes an error
reply, as Flower's runtime does for a ClientApp that raises; the coordinator counts the
owner as dropped and SecAgg+ recovers the others' sum.
"""

from __future__ import annotations

import copy
import traceback
from contextvars import ContextVar
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.client.mod.secure_aggregation.secaggplus_mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.differential_privacy import get_norm

from privfl.logs import get_logger
from privfl.protocol import SECAGG_CLIP_NORM as CLIP_NORM
from privfl.protocol import SECAGG_CLIPPING_RANGE as CLIPPING_RANGE
from privfl.protocol import SECAGG_COUNT_UNCLIPPED as COUNT_UNCLIPPED
from privfl.protocol import SECAGG_HAS_UPDATE as HAS_UPDATE
from privfl.protocol import SECAGG_PAYLOAD_KEY as PAYLOAD_KEY
from privfl.protocol import SECAGG_RECORD, UNCLIPPED_METRIC

log = get_logger("client")

# Set by this process's own adapter, and only while Flower's SecAgg+ mod runs the handler
# in its masked-vectors stage: how many owners' masks the handler's release is summed with.
# A ContextVar, not a record in the message: nothing the coordinator sends can set it.
_MASKED_COHORT: ContextVar[int | None] = ContextVar("privfl_secagg_masked_cohort", default=None)


def masked_cohort() -> int | None:
    """How many owners (this one included) the release being built now is securely summed with.

    None unless the caller runs inside the masked-vectors stage of SecAgg+ in this very
    process (:class:`_PayloadAdapter`), where what the handler returns leaves only as a
    masked vector.  An owner that requires secure aggregation, or is told its round is
    securely aggregated, asks this before it releases (:mod:`privfl.client.owner_level`):
    a plain train message that merely *claims* SecAgg+ answers None here.
    """
    return _MASKED_COHORT.get()


def privfl_secagg_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Run Flower's SecAgg+ for messages that carry SecAgg+ stage configs; pass the rest through."""
    if msg.metadata.message_type != MessageType.TRAIN or msg.has_error() \
            or RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, ctxt)
    own = _own_copy(msg)
    try:
        return secaggplus_mod(own, ctxt, _PayloadAdapter(call_next))
    except Exception as err:  # noqa: BLE001 - reply with an error, as Flower's runtime would
        log.error("node %s: secure aggregation stage failed: %s: %s", ctxt.node_id, type(err).__name__, err)
        reason = f"privfl SecAgg+: {type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}"
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=own)


def _own_copy(msg: Message) -> Message:
    """The message with its own RecordDict and its own copy of the SecAgg+ configs.

    Flower's mod pops the stage from the configs record and the adapter removes records;
    a message whose content is shared (one RecordDict sent to every node, as in an
    in-process grid with no serialisation) must not be altered for the other nodes.
    """
    content = RecordDict(dict(msg.content.items()))
    content[RECORD_KEY_CONFIGS] = ConfigRecord(dict(msg.content.config_records[RECORD_KEY_CONFIGS]))
    return Message(content=content, metadata=copy.copy(msg.metadata))


class _PayloadAdapter:
    """The handler seen by Flower's secaggplus_mod: privfl's reply as a FitRes of weight 1."""

    def __init__(self, call_next: ClientAppCallable) -> None:
        self.call_next = call_next

    def __call__(self, msg: Message, ctxt: Context) -> Message:
        content = msg.content
        if SECAGG_RECORD not in content.config_records:
            raise ValueError(f"the SecAgg+ request carries no '{SECAGG_RECORD}' record: it was not sent by "
                             "privfl's secure_sum, so this owner does not know what to mask")
        spec = content.config_records[SECAGG_RECORD]
        payload_key = str(spec[PAYLOAD_KEY])
        clip_norm = float(spec[CLIP_NORM])
        count_unclipped = bool(spec[COUNT_UNCLIPPED])
        clipping_range = float(spec[CLIPPING_RANGE])
        if payload_key not in content.array_records:
            raise ValueError(f"the SecAgg+ request carries no ArrayRecord '{payload_key}' to shape the update on")
        template = content.array_records[payload_key]
        names = list(template.keys())
        shapes = {name: tuple(template[name].shape) for name in names}
        # Only Flower's mod calls the adapter, in the masked-vectors stage; the owners whose key
        # shares reached this one are the others whose pairwise masks hide its vector.
        sources = content.config_records[RECORD_KEY_CONFIGS].get(Key.SOURCE_LIST, [])
        cohort = 1 + len(sources) if isinstance(sources, list) else 1
        # The handler sees the request as the coordinator's strategy built it.
        del content[RECORD_KEY_CONFIGS]
        del content[SECAGG_RECORD]

        token = _MASKED_COHORT.set(cohort)
        try:
            reply = self.call_next(msg, ctxt)
        finally:
            _MASKED_COHORT.reset(token)
        if reply.has_error():
            raise RuntimeError(f"the train handler replied with an error: {reply.error.reason}")
        out = reply.content
        bit = _pop_unclipped_bit(out)
        if payload_key in out.array_records and len(out.array_records[payload_key]) > 0:
            delta = _delta(out.array_records[payload_key], names, shapes)
            norm = get_norm(list(delta.values()))
            if clip_norm > 0 and (bit is None or norm > clip_norm * (1 + 1e-6)):
                bit = int(norm <= clip_norm)  # the handler returned the raw delta (or an unclipped one)
            if clip_norm > 0 and norm > clip_norm:
                scale = clip_norm / norm
                delta = {name: value * scale for name, value in delta.items()}
            has_update = True
        else:
            delta = {name: np.zeros(shapes[name], np.float64) for name in names}
            bit, has_update = 0, False
        payload = [delta[name] for name in names]
        if count_unclipped:
            if bit is None:
                raise ValueError("the coordinator counts unclipped updates (adaptive clipping) but the handler "
                                 f"gave no metrics['{UNCLIPPED_METRIC}'] and the round names no clip norm")
            payload.append(np.array([float(bit) * clipping_range]))

        fitres = FitRes(status=Status(Code.OK, ""), parameters=ndarrays_to_parameters(payload), num_examples=1,
                        metrics={})
        masked = compat.fitres_to_recorddict(fitres, keep_input=False)
        for key, record in out.items():
            if key in out.array_records:
                continue  # the delta leaves only masked; no other array leaves at all
            masked[key] = record
        masked[SECAGG_RECORD] = ConfigRecord({HAS_UPDATE: has_update})
        return Message(masked, reply_to=msg)


def _pop_unclipped_bit(content: RecordDict) -> int | None:
    """The handler's "norm <= C" bit, removed from every MetricRecord of its reply (it leaves only masked)."""
    bit = None
    for record in content.metric_records.values():
        if UNCLIPPED_METRIC in record:
            value = record.pop(UNCLIPPED_METRIC)
            if value not in (0, 1):
                raise ValueError(f"metrics['{UNCLIPPED_METRIC}'] must be 0 or 1, got {value!r}")
            bit = int(value)
    return bit


def _delta(record: Any, names: list[str], shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """The handler's update as float64 arrays in the request's order; refuses another shape or NaN/inf."""
    got = list(record.keys())
    if sorted(got) != sorted(names):
        raise ValueError(f"the update's arrays {sorted(got)} are not the global model's {sorted(names)}")
    delta = {}
    for name in names:
        value = record[name].numpy().astype(np.float64)
        if value.shape != shapes[name]:
            raise ValueError(f"the update's {name!r} has shape {list(value.shape)}, the global model's "
                             f"{list(shapes[name])}")
        if not np.isfinite(value).all():
            raise ValueError(f"the update's {name!r} holds NaN or infinite values")
        delta[name] = value
    return delta


__all__ = ["CLIPPING_RANGE", "CLIP_NORM", "COUNT_UNCLIPPED", "HAS_UPDATE", "PAYLOAD_KEY", "SECAGG_RECORD",
           "UNCLIPPED_METRIC", "masked_cohort", "privfl_secagg_mod"]
