"""Ledger entries: built from Python values, decoded from their canonical bytes.

An :class:`Entry` is a read-only view of one ``SignedEntry``: the decoded fields for
convenience, and the exact bytes that were hashed and signed (``entry_bytes``,
``signature``), which are what is stored, sent and verified.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError

from privfl.privacy.events import DpEvent, Gaussian, NonPrivateRelease, PoissonSubsampledGaussian
from privfl.privacy.ledger.chain import HASH_SIZE, entry_hash
from privfl.privacy.ledger.errors import LedgerError
from privfl.protos import ledger_pb2

CHARGE = "charge"
REFUSAL = "refusal"
RECORD = "record"
OWNER = "owner"

KIND_TO_PROTO = {CHARGE: ledger_pb2.ENTRY_KIND_CHARGE, REFUSAL: ledger_pb2.ENTRY_KIND_REFUSAL}
KIND_FROM_PROTO = {v: k for k, v in KIND_TO_PROTO.items()}
UNIT_TO_PROTO = {RECORD: ledger_pb2.PRIVACY_UNIT_RECORD, OWNER: ledger_pb2.PRIVACY_UNIT_OWNER}
UNIT_FROM_PROTO = {v: k for k, v in UNIT_TO_PROTO.items()}


@dataclass(frozen=True)
class Entry:
    sequence: int
    previous_hash: bytes
    run_id: str
    round: int
    owner_id: str
    kind: str  # CHARGE or REFUSAL
    event: DpEvent | None  # None: no event, or a mechanism this version does not know
    mechanism: str  # the oneof field name ("poisson_subsampled_gaussian", ...) or "" / "unknown"
    clipping_norm: float
    privacy_unit: str  # RECORD or OWNER ("unspecified" if absent)
    delta: float
    accountant: str
    cumulative_epsilon: float
    epsilon_budget: float
    purpose: str
    timestamp_unix_nanos: int
    update_hash: bytes
    refusal_reason: str
    # The signed form, verbatim.
    entry_bytes: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    key_fingerprint: str = ""
    federation: str = ""  # the federation the owner's node served (its own policy); "" in simulations

    @property
    def hash(self) -> bytes:
        """sha256 of the canonical bytes: the next entry's previous_hash."""
        return entry_hash(self.entry_bytes)

    @property
    def is_charge(self) -> bool:
        return self.kind == CHARGE

    def signed_entry(self) -> ledger_pb2.SignedEntry:
        return ledger_pb2.SignedEntry(entry=self.entry_bytes, signature=self.signature,
                                      key_fingerprint=self.key_fingerprint)

    def signed_bytes(self) -> bytes:
        """The serialized SignedEntry: the receipt a client sends with its update."""
        return self.signed_entry().SerializeToString()

    @classmethod
    def from_signed(cls, signed: ledger_pb2.SignedEntry | bytes) -> Entry:
        """Decode a SignedEntry (message or bytes). Does NOT check the signature."""
        if isinstance(signed, (bytes, bytearray, memoryview)):
            try:
                signed = ledger_pb2.SignedEntry.FromString(bytes(signed))
            except DecodeError as err:
                raise LedgerError(f"not a serialized SignedEntry ({err})") from None
        return decode_entry(signed.entry, signed.signature, signed.key_fingerprint)


def unit_of(entry: Entry) -> str:
    """The entry's privacy unit; one written before units were recorded is record-level (DP-SGD)."""
    return entry.privacy_unit if entry.privacy_unit in (RECORD, OWNER) else RECORD


def event_to_proto(event: DpEvent | None, message: ledger_pb2.LedgerEntry) -> None:
    from privfl.privacy.events import SampledWithoutReplacementGaussian

    if event is None:
        return
    if isinstance(event, PoissonSubsampledGaussian):
        message.poisson_subsampled_gaussian.CopyFrom(ledger_pb2.PoissonSubsampledGaussian(
            noise_multiplier=event.noise_multiplier, sample_rate=event.sample_rate, steps=event.steps))
    elif isinstance(event, Gaussian):
        message.gaussian.CopyFrom(ledger_pb2.Gaussian(noise_multiplier=event.noise_multiplier))
    elif isinstance(event, NonPrivateRelease):
        message.non_private_release.CopyFrom(ledger_pb2.NonPrivateRelease(steps=event.steps))
    elif isinstance(event, SampledWithoutReplacementGaussian):
        message.sampled_without_replacement_gaussian.CopyFrom(ledger_pb2.SampledWithoutReplacementGaussian(
            noise_multiplier=event.noise_multiplier, sample_size=event.sample_size,
            population_size=event.population_size, steps=event.steps))
    else:
        raise TypeError(f"the ledger has no message type for the DP event {type(event).__name__}")


def event_from_proto(message: ledger_pb2.LedgerEntry) -> tuple[DpEvent | None, str]:
    from privfl.privacy.events import SampledWithoutReplacementGaussian

    which = message.WhichOneof("event")
    if which == "poisson_subsampled_gaussian":
        e = message.poisson_subsampled_gaussian
        return PoissonSubsampledGaussian(e.noise_multiplier, e.sample_rate, int(e.steps)), which
    if which == "gaussian":
        return Gaussian(message.gaussian.noise_multiplier), which
    if which == "sampled_without_replacement_gaussian":
        e = message.sampled_without_replacement_gaussian
        return SampledWithoutReplacementGaussian(e.noise_multiplier, int(e.sample_size), int(e.population_size),
                                                 int(e.steps)), which
    if which == "non_private_release":
        return NonPrivateRelease(int(message.non_private_release.steps)), which
    if which is None and len(unknown_fields.UnknownFieldSet(message)):
        # Written by a newer privfl: possibly a mechanism added since. Keep the entry
        # readable; accounting refuses it (principle 3).
        return None, "unknown"
    return None, which or ""


def encode_entry(
    *,
    sequence: int,
    previous_hash: bytes,
    run_id: str,
    round: int,
    owner_id: str,
    kind: str,
    event: DpEvent | None,
    clipping_norm: float,
    privacy_unit: str,
    delta: float,
    accountant: str,
    cumulative_epsilon: float,
    epsilon_budget: float,
    purpose: str,
    update_hash: bytes,
    refusal_reason: str,
    timestamp_unix_nanos: int | None = None,
    federation: str = "",
) -> bytes:
    """The canonical bytes of a new entry (serialized once, then stored verbatim)."""
    if len(previous_hash) != HASH_SIZE:
        raise ValueError(f"previous_hash must have {HASH_SIZE} bytes")
    message = ledger_pb2.LedgerEntry(
        sequence=sequence,
        previous_hash=previous_hash,
        run_id=run_id,
        round=round,
        owner_id=owner_id,
        kind=KIND_TO_PROTO[kind],
        clipping_norm=clipping_norm,
        privacy_unit=UNIT_TO_PROTO[privacy_unit],
        delta=delta,
        accountant=accountant,
        cumulative_epsilon=cumulative_epsilon,
        epsilon_budget=epsilon_budget,
        purpose=purpose,
        timestamp_unix_nanos=time.time_ns() if timestamp_unix_nanos is None else timestamp_unix_nanos,
        update_hash=update_hash,
        refusal_reason=refusal_reason,
        federation=federation,
    )
    event_to_proto(event, message)
    return message.SerializeToString()


def decode_entry(entry_bytes: bytes, signature: bytes = b"", key_fingerprint: str = "") -> Entry:
    """Parse canonical bytes into an :class:`Entry`; raises LedgerError if they are not one."""
    try:
        message = ledger_pb2.LedgerEntry.FromString(entry_bytes)
    except DecodeError as err:
        raise LedgerError(f"the entry bytes are not a LedgerEntry ({err})") from None
    if message.kind not in KIND_FROM_PROTO:
        raise LedgerError(f"entry kind {message.kind} is neither CHARGE nor REFUSAL")
    if len(message.previous_hash) != HASH_SIZE:
        raise LedgerError(f"previous_hash has {len(message.previous_hash)} bytes, not {HASH_SIZE}")
    try:
        event, mechanism = event_from_proto(message)
    except ValueError as err:  # the event's own validation (e.g. a negative noise multiplier)
        raise LedgerError(f"the entry's DP event is invalid: {err}") from None
    return Entry(
        sequence=message.sequence,
        previous_hash=message.previous_hash,
        run_id=message.run_id,
        round=message.round,
        owner_id=message.owner_id,
        kind=KIND_FROM_PROTO[message.kind],
        event=event,
        mechanism=mechanism,
        clipping_norm=message.clipping_norm,
        privacy_unit=UNIT_FROM_PROTO.get(message.privacy_unit, "unspecified"),
        delta=message.delta,
        accountant=message.accountant,
        cumulative_epsilon=message.cumulative_epsilon,
        epsilon_budget=message.epsilon_budget,
        purpose=message.purpose,
        timestamp_unix_nanos=message.timestamp_unix_nanos,
        update_hash=message.update_hash,
        refusal_reason=message.refusal_reason,
        entry_bytes=bytes(entry_bytes),
        signature=bytes(signature),
        key_fingerprint=key_fingerprint,
        federation=message.federation,
    )
