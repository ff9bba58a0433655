"""The coordinator's registry: every owner head it ever accepted, across experiments.

It is the outside anchor of each owner's ledger (DESIGN principle 5).  A coordinator
opens it before round 1 of every experiment and, for each receipt it accepts, appends
an anchor (:mod:`privfl.privacy.ledger.anchor`) in the same transaction as the
round's federation-ledger writes.  Before an owner trains, the coordinator tells it
the last head it anchored; the owner must show that head is still in its ledger and
send the entries written since (the bridge).  So an owner whose ledger was truncated,
restored from an older copy, or rewritten under its own key is refused with the
reason instead of starting over with a fresh budget; and an auditor can check any
owner ledger against the registry (``privfl ledger verify --registry``).

The registry also records each owner's registered public key on first sight and the
coordinator's own key; a different key for a known owner is refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from privfl.privacy.keys import check_owner_id, fingerprint, public_key_bytes, public_key_from_bytes
from privfl.privacy.ledger.anchor import (
    COORDINATOR, Anchor, decode_anchor, encode_anchor, sign_anchor,
)
from privfl.privacy.ledger.chain import GENESIS_HASH, entry_hash
from privfl.privacy.ledger.errors import LedgerError, LedgerKeyMismatch
from privfl.privacy.ledger.store import REGISTRY, LedgerFile, LedgerStore, StoredAnchor


@dataclass(frozen=True)
class AnchorRecord:
    """What the coordinator anchors for one accepted receipt (before it is signed into a chain)."""

    experiment_id: str
    round: int
    owner_id: str
    owner_sequence: int
    owner_entry_hash: bytes
    outcome: str


def append_anchors(store: LedgerStore, key: Ed25519PrivateKey, records: Iterable[AnchorRecord]) -> list[Anchor]:
    """Sign ``records`` into ``store``'s anchor chain; call inside ``store.write()``."""
    written = []
    last = store.last_anchor()
    sequence, previous = (0, GENESIS_HASH) if last is None else (last.sequence, entry_hash(last.entry))
    positions: dict[str, int] = {}
    for record in records:
        if record.owner_id not in positions:
            positions[record.owner_id] = store.anchor_count(record.owner_id)
        positions[record.owner_id] += 1
        sequence += 1
        entry = encode_anchor(sequence=sequence, previous_hash=previous, experiment_id=record.experiment_id,
                              round=record.round, owner_id=record.owner_id, owner_sequence=record.owner_sequence,
                              owner_entry_hash=record.owner_entry_hash, owner_position=positions[record.owner_id],
                              outcome=record.outcome)
        signature, key_fp = sign_anchor(entry, key)
        store.insert_anchor(sequence=sequence, owner_id=record.owner_id, owner_sequence=record.owner_sequence,
                            experiment_id=record.experiment_id, round=record.round, entry=entry,
                            signature=signature, key_fingerprint=key_fp)
        previous = entry_hash(entry)
        written.append(decode_anchor(entry, signature, key_fp))
    return written


def decode_stored(row: StoredAnchor) -> Anchor:
    return decode_anchor(row.entry, row.signature, row.key_fingerprint)


def record_coordinator_key(store: LedgerStore, key: Ed25519PublicKey) -> None:
    """Record the coordinator's key in the file (inside ``store.write()``); a different one is refused."""
    known = [k for k in store.keys() if k[1] == COORDINATOR]
    if not known:
        store.add_key(COORDINATOR, fingerprint(key), public_key_bytes(key))
    elif known[0][0] != fingerprint(key):
        raise LedgerKeyMismatch(f"{store.path} is signed by coordinator key {known[0][0][:16]}..., not "
                                f"{fingerprint(key)[:16]}...; open it with the coordinator's own key")


class CoordinatorRegistry(LedgerFile):
    def __init__(self, store: LedgerStore, key: Ed25519PrivateKey | None) -> None:
        self._store = store
        self._key = key

    @classmethod
    def open(cls, path: str | Path, key: Ed25519PrivateKey) -> CoordinatorRegistry:
        store = LedgerStore.open_for_writing(path, REGISTRY, {})
        try:
            with store.write():
                record_coordinator_key(store, key.public_key())
        except BaseException:
            store.close()
            raise
        return cls(store, key)

    @classmethod
    def open_readonly(cls, path: str | Path) -> CoordinatorRegistry:
        store = LedgerStore.open_readonly_kind(path, REGISTRY, "a coordinator registry")
        return cls(store, None)

    # -- owners ------------------------------------------------------------------------

    def register_owner(self, owner_id: str, public_key: Ed25519PublicKey) -> None:
        """Record an owner's ledger key on first sight; a different key for a known owner is refused."""
        check_owner_id(owner_id)
        with self._store.write():
            known = self.owner_key(owner_id)
            if known is None:
                self._store.add_key(owner_id, fingerprint(public_key), public_key_bytes(public_key))
            elif fingerprint(known) != fingerprint(public_key):
                raise LedgerKeyMismatch(
                    f"owner {owner_id} is registered with key {fingerprint(known)[:16]}..., not "
                    f"{fingerprint(public_key)[:16]}... (an owner's key changes only by a documented rotation)")

    def owner_key(self, owner_id: str) -> Ed25519PublicKey | None:
        for _, owner, raw in self._store.keys():
            if owner == owner_id:
                return public_key_from_bytes(raw)
        return None

    def coordinator_key(self) -> Ed25519PublicKey | None:
        return self.owner_key(COORDINATOR)

    # -- anchors -----------------------------------------------------------------------

    def head(self, owner_id: str) -> tuple[int, bytes] | None:
        """The last head of ``owner_id`` the coordinator accepted: (sequence, sha256 of that entry)."""
        row = self._store.last_anchor(owner_id)
        return None if row is None else decode_stored(row).head

    def anchors(self, owner_id: str | None = None, experiment_id: str | None = None) -> list[Anchor]:
        return [decode_stored(r) for r in self._store.anchors(owner_id, experiment_id)]

    def record(self, records: Iterable[AnchorRecord]) -> list[Anchor]:
        """Anchor one round's accepted receipts, in one transaction."""
        if self._key is None:
            raise LedgerError(f"{self.path} is open read-only; open it with the coordinator's key to anchor")
        records = list(records)
        if not records:
            return []
        with self._store.write():
            return append_anchors(self._store, self._key, records)
