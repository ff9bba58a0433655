"""The server's federation ledger: the owners' signed receipts, kept verbatim.

The server does not sign anything here: it stores each owner's ``SignedEntry``
exactly as received, after checking it against the owner's registered public key, so
every entry still verifies against its owner's key and links into the owner's own
chain.  It is a *view* (DESIGN principle 1): an owner's ledger outlives runs and
federations, so here an owner's entries usually start past sequence 1 and may skip
entries the owner wrote for other federations.  Where entries are consecutive, their
hash links are checked; the stored epsilon is checked exactly when the server holds
all of the owner's charges (its entries start at sequence 1 with no gap), else as a
lower bound.

Server use, per received update::

    ledger.register_owner(owner_id, public_key)       # once, from the owner's .pub file
    entry = ledger.append_received(receipt_bytes)     # raises ReceiptRejected
    ...  # then compare entry's event/run/round with what the server asked for
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from privfl.privacy.keys import check_owner_id, fingerprint, public_key_bytes, public_key_from_bytes
from privfl.privacy.ledger.chain import entry_hash
from privfl.privacy.ledger.epsilon import EPSILON_REL_TOL, epsilon_matches
from privfl.privacy.ledger.entry import CHARGE, KIND_TO_PROTO, Entry, decode_entry, unit_of
from privfl.privacy.ledger.errors import LedgerError, LedgerKeyMismatch, ReceiptRejected, UnsupportedEvent
from privfl.privacy.ledger.owner import compute_epsilon
from privfl.privacy.ledger.signing import signature_problem
from privfl.privacy.ledger.store import FEDERATION_LEDGER, LedgerFile, LedgerStore, StoredRow
from privfl.protos import ledger_pb2

class FederationLedger(LedgerFile):
    def __init__(self, store: LedgerStore) -> None:
        self._store = store

    @classmethod
    def open(cls, path: str | Path) -> FederationLedger:
        return cls(LedgerStore.open_for_writing(path, FEDERATION_LEDGER, {}))

    @classmethod
    def open_readonly(cls, path: str | Path) -> FederationLedger:
        store = LedgerStore.open_readonly(path)
        if store.meta().get("ledger_kind") != FEDERATION_LEDGER:
            store.close()
            raise LedgerError(f"{path} is not a federation ledger")
        return cls(store)

    # -- owners and keys -------------------------------------------------------

    def register_owner(self, owner_id: str, public_key: Ed25519PublicKey) -> None:
        """Record the owner's public key; idempotent; a different key for a known owner is refused."""
        check_owner_id(owner_id)
        key_fp = fingerprint(public_key)
        with self._store.write():
            known = self._owner_key(owner_id)
            if known is None:
                self._store.add_key(owner_id, key_fp, public_key_bytes(public_key))
            elif fingerprint(known) != key_fp:
                raise LedgerKeyMismatch(
                    f"owner {owner_id} is registered with key {fingerprint(known)[:16]}..., not {key_fp[:16]}...")

    def public_key(self, owner_id: str) -> Ed25519PublicKey | None:
        return self._owner_key(owner_id)

    def owner_ids(self) -> list[str]:
        return sorted({k[1] for k in self._store.keys()} | set(self._store.owner_ids()))

    def _owner_key(self, owner_id: str) -> Ed25519PublicKey | None:
        for _, owner, raw in self._store.keys():
            if owner == owner_id:
                return public_key_from_bytes(raw)
        return None

    # -- receiving -------------------------------------------------------------

    def append_received(
        self,
        signed_entry: ledger_pb2.SignedEntry | bytes,
        public_key: Ed25519PublicKey | None = None,
        *,
        check_epsilon: bool = True,
    ) -> Entry:
        """Verify a receipt and store it verbatim; return it decoded.

        The signature is checked first, against ``public_key`` or else the key
        registered for the entry's owner (a given key is registered if the owner is
        new, and must match if not).  Then the entry must extend what this ledger
        holds of the owner's chain: a higher sequence, and the right previous hash
        where it directly follows the last one held.  Receiving the same receipt
        again returns it without writing.  Anything else raises ReceiptRejected.
        """
        signed = _parse(signed_entry)
        try:
            claimed = decode_entry(signed.entry, signed.signature, signed.key_fingerprint)
        except LedgerError as err:
            raise ReceiptRejected(f"receipt rejected: {err}") from None
        owner = claimed.owner_id
        try:
            check_owner_id(owner)
        except ValueError as err:
            raise ReceiptRejected(f"receipt rejected: {err}") from None
        with self._store.write():
            registered = self._owner_key(owner)
            key = public_key or registered
            if key is None:
                raise ReceiptRejected(f"receipt rejected: owner {owner} has no registered public key")
            if registered is not None and public_key is not None and fingerprint(registered) != fingerprint(public_key):
                raise ReceiptRejected(
                    f"receipt rejected: owner {owner} is registered with another key ({fingerprint(registered)[:16]}...)")
            problem = signature_problem(signed, key)
            if problem:
                raise ReceiptRejected(f"receipt rejected: owner {owner}, entry {claimed.sequence}: {problem}")
            if registered is None:
                self._store.add_key(owner, fingerprint(key), public_key_bytes(key))
            existing = self._store.at_sequence(owner, claimed.sequence)
            if existing is not None:
                if existing.entry == signed.entry:
                    return decode_entry(existing.entry, existing.signature, existing.key_fingerprint)
                raise ReceiptRejected(
                    f"receipt rejected: owner {owner} already has a different entry {claimed.sequence} here "
                    "(the owner's chain forked)")
            self._check_extends_chain(claimed)
            if check_epsilon and claimed.is_charge:
                self._check_epsilon(claimed)
            try:
                self._store.insert(owner_id=owner, sequence=claimed.sequence, run_id=claimed.run_id,
                                   round=claimed.round, kind=KIND_TO_PROTO[claimed.kind], entry=signed.entry,
                                   signature=signed.signature, key_fingerprint=signed.key_fingerprint)
            except Exception as err:  # sqlite3.IntegrityError: a second charge for one release
                raise ReceiptRejected(
                    f"receipt rejected: owner {owner}, run {claimed.run_id!r}, round {claimed.round}: "
                    f"a {claimed.kind} for this release is already recorded ({err})") from None
        return claimed

    def _check_extends_chain(self, entry: Entry) -> None:
        head = self._store.head(entry.owner_id)
        if head is None:
            return
        if entry.sequence < head.sequence:
            raise ReceiptRejected(
                f"receipt rejected: owner {entry.owner_id}, entry {entry.sequence} is older than the "
                f"latest held ({head.sequence})")
        if entry.sequence == head.sequence + 1 and entry.previous_hash != entry_hash(head.entry):
            raise ReceiptRejected(
                f"receipt rejected: owner {entry.owner_id}, entry {entry.sequence} does not link to entry "
                f"{head.sequence} (previous hash differs: the owner's chain forked)")

    def _check_epsilon(self, entry: Entry) -> None:
        rows = list(self._store.rows(entry.owner_id))
        held = [decode_entry(r.entry) for r in rows if r.kind == KIND_TO_PROTO[CHARGE]]
        events = [e.event for e in held if unit_of(e) == unit_of(entry)]
        try:
            recomputed = compute_epsilon(entry.accountant, [*events, entry.event], entry.delta)
        except (UnsupportedEvent, ValueError) as err:
            raise ReceiptRejected(f"receipt rejected: owner {entry.owner_id}, entry {entry.sequence}: {err}") from None
        complete = _holds_whole_chain(rows, entry)
        stored = entry.cumulative_epsilon
        if complete and not epsilon_matches(stored, recomputed):
            raise ReceiptRejected(
                f"receipt rejected: owner {entry.owner_id}, entry {entry.sequence} states epsilon {stored!r}; "
                f"its charges compose to {recomputed!r} ({entry.accountant})")
        if not complete and stored < recomputed * (1 - EPSILON_REL_TOL):
            raise ReceiptRejected(
                f"receipt rejected: owner {entry.owner_id}, entry {entry.sequence} states epsilon {stored!r}, "
                f"less than the {recomputed!r} of the charges this server has seen alone")

    # -- reading ---------------------------------------------------------------

    def entries(self, owner_id: str | None = None) -> list[Entry]:
        return [_decode(row) for row in self._store.rows(owner_id)]

    def last_entry(self, owner_id: str) -> Entry | None:
        row = self._store.head(owner_id)
        return _decode(row) if row else None

    def latest_epsilon(self, owner_id: str) -> float | None:
        """The owner's cumulative epsilon as its latest receipt states it (signed by the owner)."""
        last = self.last_entry(owner_id)
        return None if last is None else last.cumulative_epsilon


def _parse(signed_entry: ledger_pb2.SignedEntry | bytes) -> ledger_pb2.SignedEntry:
    if isinstance(signed_entry, ledger_pb2.SignedEntry):
        return signed_entry
    try:
        return ledger_pb2.SignedEntry.FromString(bytes(signed_entry))
    except (DecodeError, TypeError) as err:
        raise ReceiptRejected(f"receipt rejected: not a serialized SignedEntry ({err})") from None


def _decode(row: StoredRow) -> Entry:
    return decode_entry(row.entry, row.signature, row.key_fingerprint)


def _holds_whole_chain(rows: list[StoredRow], entry: Entry) -> bool:
    sequences = [r.sequence for r in rows] + [entry.sequence]
    return sequences == list(range(1, len(sequences) + 1))

