"""Anchors: the coordinator's signed record of each owner head it accepted.

An owner's hash chain proves that nothing inside it was altered, but not that its tail
is all there: a truncated chain, an older copy of the file, or a history the owner
rewrote and re-signed with its own key are all valid chains.  So each owner's head is
anchored outside the owner (DESIGN principle 5): for every receipt it accepts, the
coordinator writes an :class:`Anchor` — experiment, round, owner, the owner's entry
sequence and hash, what became of the round — into a chain of its own, signed with
the coordinator's Ed25519 key in the same ``SignedEntry`` envelope as owner entries
(with its own signing context, so neither key's signature can stand for the other).

Two chains hold anchors: the experiment's federation ledger, beside the receipts it
anchors, and the coordinator's registry across all experiments
(:mod:`privfl.privacy.ledger.registry`).  Within a chain, each owner's anchors carry
positions 1, 2, 3, ...: a receipt pruned from the middle leaves a gap.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.message import DecodeError

from privfl.privacy.keys import fingerprint
from privfl.privacy.ledger.chain import HASH_SIZE, entry_hash
from privfl.privacy.ledger.errors import LedgerError
from privfl.protos import ledger_pb2

ANCHOR_SIGNING_CONTEXT = b"privfl.ledger.v1.AnchorEntry\x00"

AGGREGATED = "aggregated"
REFUSED = "refused"
UPDATE_DROPPED = "update-dropped"
CHARGED = "charged"  # an owner-level round's charge before the draw
OUTCOME_TO_PROTO = {AGGREGATED: ledger_pb2.ANCHOR_OUTCOME_AGGREGATED, REFUSED: ledger_pb2.ANCHOR_OUTCOME_REFUSED,
                    UPDATE_DROPPED: ledger_pb2.ANCHOR_OUTCOME_UPDATE_DROPPED, CHARGED: ledger_pb2.ANCHOR_OUTCOME_CHARGED}
OUTCOME_FROM_PROTO = {v: k for k, v in OUTCOME_TO_PROTO.items()}

COORDINATOR = "@coordinator"  # the keys-table name of the coordinator's key (no owner id starts with '@')


@dataclass(frozen=True)
class Anchor:
    sequence: int
    previous_hash: bytes
    experiment_id: str
    round: int
    owner_id: str
    owner_sequence: int
    owner_entry_hash: bytes
    owner_position: int
    outcome: str
    timestamp_unix_nanos: int
    entry_bytes: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    key_fingerprint: str = ""

    @property
    def hash(self) -> bytes:
        return entry_hash(self.entry_bytes)

    @property
    def head(self) -> tuple[int, bytes]:
        """The owner head this anchors: (sequence, sha256 of the owner's entry)."""
        return self.owner_sequence, self.owner_entry_hash

    def same_release(self, other: Anchor) -> bool:
        """The same owner entry for the same round (two chains anchor one receipt each)."""
        return (self.experiment_id, self.round, self.owner_id, self.owner_sequence, self.owner_entry_hash,
                self.outcome) == (other.experiment_id, other.round, other.owner_id, other.owner_sequence,
                                  other.owner_entry_hash, other.outcome)

    def describe(self) -> str:
        return (f"owner {self.owner_id} entry {self.owner_sequence} ({self.owner_entry_hash.hex()[:16]}...), "
                f"experiment {self.experiment_id} round {self.round}, {self.outcome}")


def encode_anchor(*, sequence: int, previous_hash: bytes, experiment_id: str, round: int, owner_id: str,
                  owner_sequence: int, owner_entry_hash: bytes, owner_position: int, outcome: str,
                  timestamp_unix_nanos: int | None = None) -> bytes:
    if len(previous_hash) != HASH_SIZE or len(owner_entry_hash) != HASH_SIZE:
        raise ValueError(f"anchor hashes must have {HASH_SIZE} bytes")
    return ledger_pb2.AnchorEntry(
        sequence=sequence, previous_hash=previous_hash, experiment_id=experiment_id, round=round, owner_id=owner_id,
        owner_sequence=owner_sequence, owner_entry_hash=owner_entry_hash, owner_position=owner_position,
        outcome=OUTCOME_TO_PROTO[outcome],
        timestamp_unix_nanos=time.time_ns() if timestamp_unix_nanos is None else timestamp_unix_nanos,
    ).SerializeToString()


def decode_anchor(entry_bytes: bytes, signature: bytes = b"", key_fingerprint: str = "") -> Anchor:
    try:
        message = ledger_pb2.AnchorEntry.FromString(entry_bytes)
    except DecodeError as err:
        raise LedgerError(f"the anchor bytes are not an AnchorEntry ({err})") from None
    if len(message.previous_hash) != HASH_SIZE or len(message.owner_entry_hash) != HASH_SIZE:
        raise LedgerError("an anchor hash does not have 32 bytes")
    if message.outcome not in OUTCOME_FROM_PROTO:
        raise LedgerError(f"anchor outcome {message.outcome} is not one privfl writes")
    return Anchor(
        sequence=message.sequence, previous_hash=message.previous_hash, experiment_id=message.experiment_id,
        round=message.round, owner_id=message.owner_id, owner_sequence=message.owner_sequence,
        owner_entry_hash=message.owner_entry_hash, owner_position=message.owner_position,
        outcome=OUTCOME_FROM_PROTO[message.outcome], timestamp_unix_nanos=message.timestamp_unix_nanos,
        entry_bytes=bytes(entry_bytes), signature=bytes(signature), key_fingerprint=key_fingerprint,
    )


def sign_anchor(entry_bytes: bytes, key: Ed25519PrivateKey) -> tuple[bytes, str]:
    return key.sign(ANCHOR_SIGNING_CONTEXT + entry_bytes), fingerprint(key)


def anchor_signature_problem(entry_bytes: bytes, signature: bytes, key_fingerprint: str,
                             key: Ed25519PublicKey) -> str | None:
    expected = fingerprint(key)
    if key_fingerprint != expected:
        return (f"anchor signed by key {key_fingerprint[:16] or '(none)'}..., expected the coordinator's key "
                f"{expected[:16]}...")
    try:
        key.verify(signature, ANCHOR_SIGNING_CONTEXT + entry_bytes)
    except InvalidSignature:
        return "the anchor's signature does not match its bytes (anchor or signature altered)"
    return None
