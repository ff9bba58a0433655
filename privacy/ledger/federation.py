"""The coordinator's federation ledger of one experiment: the owners' receipts, anchored.

Each owner's ``SignedEntry`` is stored exactly as received, after checking it against
the owner's registered public key, so every entry still verifies against its owner's
key and links into the owner's own chain.  It is a *view* (DESIGN principle 1): an
owner's ledger outlives runs and federations, so here an owner's entries usually start
past sequence 1.  Beside each receipt the owner sends the entries it wrote since the
head the coordinator last anchored (the bridge), so from its first entry here an
owner's chain is contiguous.

The coordinator signs its own chain of anchors in the same file, one per accepted
receipt (:mod:`privfl.privacy.ledger.anchor`), with contiguous per-owner positions: a
receipt pruned from the file leaves a dangling anchor or a broken link.

Server use, per round::

    checked = ledger.check_received(receipt_bytes, bridge=bridge, anchored=registry.head(owner))
    ...  # compare the entry's event, experiment and round with what was asked; decide the outcome
    ledger.record_round([(checked, outcome)], coordinator_key, experiment_id, round)   # one transaction
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.message import DecodeError

from privfl.privacy.events import LEAST_NOISE, NonPrivateRelease, below_least_noise
from privfl.privacy.keys import check_owner_id, fingerprint, public_key_bytes, public_key_from_bytes
from privfl.privacy.ledger.bridge import ElidedEntry
from privfl.privacy.ledger.chain import entry_hash
from privfl.privacy.ledger.epsilon import stated_epsilon_holds
from privfl.privacy.ledger.entry import CHARGE, KIND_TO_PROTO, Entry, decode_entry, unit_of
from privfl.privacy.ledger.errors import LedgerError, LedgerKeyMismatch, ReceiptRejected, UnsupportedEvent
from privfl.privacy.ledger.owner import compute_epsilon
from privfl.privacy.ledger.registry import AnchorRecord, append_anchors, record_coordinator_key
from privfl.privacy.ledger.signing import signature_problem
from privfl.privacy.ledger.store import FEDERATION_LEDGER, LedgerFile, LedgerStore, StoredRow
from privfl.protos import ledger_pb2

# What this coordinator composes, whoever signed it: beyond these an accountant's work grows without bound
# (PRV and PLD take minutes and GBs for 10^5-10^6 steps or a noise multiplier of 0.005, measured here), and an
# event beyond them protects nothing (epsilon in the hundreds per step) or fits no training round.
MAX_SEQUENCE = 2**53 - 1  # exact in JSON and floats; SQLite's integers end at 2^63 - 1
MAX_BRIDGE_ENTRIES = 100_000
MAX_EVENT_STEPS = 10_000


def event_bound_problem(event: object) -> str | None:
    """Why this coordinator will not compose ``event`` (None: it will); cheap, so it runs before any accountant."""
    if event is None:
        return None
    noise = getattr(event, "noise_multiplier", None)
    if isinstance(noise, (int, float)) and below_least_noise(noise) and not isinstance(event, NonPrivateRelease):
        return (f"its noise multiplier {noise:g} is below {LEAST_NOISE:g}, the least this coordinator composes "
                "(such a release protects nothing)")
    steps = getattr(event, "steps", 1)
    if isinstance(steps, int) and steps > MAX_EVENT_STEPS:
        return f"it takes {steps} steps, more than the {MAX_EVENT_STEPS} this coordinator composes for one release"
    return None


@dataclass
class _Held:
    """What this ledger holds of one owner's chain, kept in memory so a receipt's check does not
    re-read and re-decode the owner's whole history."""

    sequences: set[int]
    charges: dict[str, list]  # privacy unit -> charge events, in chain order


class FederationLedger(LedgerFile):
    def __init__(self, store: LedgerStore) -> None:
        self._store = store
        self._held: dict[str, _Held] = {}

    @classmethod
    def open(cls, path: str | Path, coordinator_key: Ed25519PublicKey | None = None) -> FederationLedger:
        """Open or create; with ``coordinator_key`` the file records (or must already record) it."""
        store = LedgerStore.open_for_writing(path, FEDERATION_LEDGER, {})
        if coordinator_key is not None:
            try:
                with store.write():
                    record_coordinator_key(store, coordinator_key)
            except BaseException:
                store.close()
                raise
        return cls(store)

    @classmethod
    def open_readonly(cls, path: str | Path) -> FederationLedger:
        store = LedgerStore.open_readonly_kind(path, FEDERATION_LEDGER, "a federation ledger")
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

    def check_received(self, signed_entry: ledger_pb2.SignedEntry | bytes, *,
                       bridge: Sequence[ledger_pb2.SignedEntry | bytes] = (),
                       anchored: tuple[int, bytes] | None = None, check_epsilon: bool = True,
                       elided: Sequence[bytes] = ()) -> Checked:
        """Verify a receipt (and its bridge) against the owner's registered key and anchored head; write nothing.

        ``anchored`` is the owner's last head the coordinator accepted (its registry):
        the bridge must start right after it and lead to the receipt, entry by entry,
        each signed by the owner.  A receipt behind the anchored head is a rollback or a
        truncated ledger; one that does not link to it is a rewritten history.
        ``elided``: the bridge's entries of other experiments, as hashes alone
        (:mod:`privfl.privacy.ledger.bridge`); the hashes must link like the entries.
        Raises ReceiptRejected saying which.
        """
        if len(bridge) + len(elided) > MAX_BRIDGE_ENTRIES:
            raise ReceiptRejected(f"receipt rejected: its bridge holds {len(bridge) + len(elided)} entries, more "
                                  f"than the {MAX_BRIDGE_ENTRIES} this coordinator reads")
        signed = _parse(signed_entry)
        chain = [_parse(b) for b in bridge] + [signed]
        entries = []
        for item in chain:
            try:
                entries.append(decode_entry(item.entry, item.signature, item.key_fingerprint))
            except LedgerError as err:
                raise ReceiptRejected(f"receipt rejected: {err}") from None
        claimed = entries[-1]
        owner = claimed.owner_id
        try:
            check_owner_id(owner)
        except ValueError as err:
            raise ReceiptRejected(f"receipt rejected: {err}") from None
        key = self._owner_key(owner)
        if key is None:
            raise ReceiptRejected(f"receipt rejected: owner {owner} has no registered public key")
        for item, entry in zip(chain, entries):
            if entry.owner_id != owner:
                raise ReceiptRejected(f"receipt rejected: the bridge holds an entry of {entry.owner_id}, not {owner}")
            problem = signature_problem(item, key)
            if problem:
                raise ReceiptRejected(f"receipt rejected: owner {owner}, entry {entry.sequence}: {problem}")
        links = sorted([*entries, *(ElidedEntry.from_bytes(owner, raw) for raw in elided)], key=lambda e: e.sequence)
        if not 1 <= links[0].sequence <= links[-1].sequence <= MAX_SEQUENCE:
            raise ReceiptRejected(f"receipt rejected: owner {owner}'s entry sequences are outside 1..{MAX_SEQUENCE}")
        if links[-1] is not claimed:
            raise ReceiptRejected(f"receipt rejected: owner {owner}'s bridge reaches past its receipt")
        if anchored is not None:
            _check_against_anchor(owner, links, anchored)  # raises AnchorMismatch: signatures already hold
        for previous, entry in zip(links, links[1:]):
            if entry.sequence != previous.sequence + 1 or entry.previous_hash != previous.hash:
                raise ReceiptRejected(f"receipt rejected: owner {owner}'s bridge is not a chain at entry "
                                      f"{entry.sequence}")
        existing = self._store.at_sequence(owner, claimed.sequence)
        if existing is not None:
            if existing.entry == signed.entry:
                return Checked(claimed, (), duplicate=True)
            raise ReceiptRejected(
                f"receipt rejected: owner {owner} already has a different entry {claimed.sequence} here "
                "(the owner's chain forked)")
        self._check_extends_chain(links[0])
        checked = Checked(claimed, tuple(e for e in entries[:-1] if self._store.at_sequence(owner, e.sequence) is None))
        if check_epsilon:
            self.check_stated_epsilon(checked)
        return checked

    def check_stated_epsilon(self, checked: Checked) -> None:
        """The receipt's stated epsilon against the charges this ledger holds and the bridge brings.

        The costly step of :meth:`check_received` (an accountant composes the owner's charges), so
        a caller that first compares the receipt with what it asked for may run it after
        (``check_received(..., check_epsilon=False)``).  Every event is bounded first (:func:`event_bound_problem`).
        """
        if checked.duplicate or not checked.entry.is_charge:
            return
        self._check_epsilon(checked.entry, checked.bridge)

    def record_round(self, accepted: Sequence[tuple[Checked, str]], coordinator_key: Ed25519PrivateKey,
                     experiment_id: str, server_round: int) -> list[AnchorRecord]:
        """Store a round's checked receipts (and bridges) and anchor each, in one transaction."""
        records = []
        try:
            self._record_round(accepted, coordinator_key, experiment_id, server_round, records)
        except BaseException:
            self._held.clear()  # the transaction rolled back: what is held is read again
            raise
        return records

    def _record_round(self, accepted, coordinator_key, experiment_id, server_round, records) -> None:
        with self._store.write():
            for checked, outcome in accepted:
                for entry in (*checked.bridge, checked.entry):
                    if self._store.at_sequence(entry.owner_id, entry.sequence) is None:
                        self._insert(entry)
                records.append(AnchorRecord(experiment_id, server_round, checked.entry.owner_id,
                                            checked.entry.sequence, checked.entry.hash, outcome))
            append_anchors(self._store, coordinator_key, records)

    def append_received(
        self,
        signed_entry: ledger_pb2.SignedEntry | bytes,
        public_key: Ed25519PublicKey | None = None,
        *,
        check_epsilon: bool = True,
    ) -> Entry:
        """Verify one receipt and store it verbatim, without an anchor (tools and tests); return it decoded.

        ``public_key`` registers the owner if it is new and must match if not.
        Receiving the same receipt again returns it without writing.
        """
        signed = _parse(signed_entry)
        try:
            owner = decode_entry(signed.entry).owner_id
        except LedgerError as err:
            raise ReceiptRejected(f"receipt rejected: {err}") from None
        registered = self._owner_key(owner)
        if public_key is not None:
            if registered is not None and fingerprint(registered) != fingerprint(public_key):
                raise ReceiptRejected(
                    f"receipt rejected: owner {owner} is registered with another key ({fingerprint(registered)[:16]}...)")
            if registered is None:
                problem = signature_problem(signed, public_key)
                if problem:
                    raise ReceiptRejected(f"receipt rejected: owner {owner}: {problem}")
                self.register_owner(owner, public_key)
        checked = self.check_received(signed, check_epsilon=check_epsilon)
        if not checked.duplicate:
            with self._store.write():
                self._insert(checked.entry)
        return checked.entry

    def _insert(self, entry: Entry) -> None:
        try:
            self._store.insert(owner_id=entry.owner_id, sequence=entry.sequence, run_id=entry.run_id,
                               round=entry.round, kind=KIND_TO_PROTO[entry.kind], entry=entry.entry_bytes,
                               signature=entry.signature, key_fingerprint=entry.key_fingerprint)
        except Exception as err:  # sqlite3.IntegrityError: a second charge for one release
            raise ReceiptRejected(
                f"receipt rejected: owner {entry.owner_id}, run {entry.run_id!r}, round {entry.round}: "
                f"a {entry.kind} for this release is already recorded ({err})") from None
        held = self._held.get(entry.owner_id)
        if held is not None:
            held.sequences.add(entry.sequence)
            if entry.is_charge:
                held.charges.setdefault(unit_of(entry), []).append(entry.event)

    def _held_of(self, owner_id: str) -> _Held:
        if owner_id not in self._held:
            held = _Held(set(), {})
            for row in self._store.rows(owner_id):
                held.sequences.add(row.sequence)
                if row.kind == KIND_TO_PROTO[CHARGE]:
                    entry = decode_entry(row.entry)
                    held.charges.setdefault(unit_of(entry), []).append(entry.event)
            self._held[owner_id] = held
        return self._held[owner_id]

    def _check_extends_chain(self, entry: Entry | ElidedEntry) -> None:
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

    def _check_epsilon(self, entry: Entry, bridge: Sequence[Entry] = ()) -> None:
        held = self._held_of(entry.owner_id)
        new = [e for e in bridge if e.sequence not in held.sequences]
        events = [*held.charges.get(unit_of(entry), []),
                  *(e.event for e in new if e.is_charge and unit_of(e) == unit_of(entry))]
        for event in (*events, entry.event):
            problem = event_bound_problem(event)
            if problem:
                raise ReceiptRejected(f"receipt rejected: owner {entry.owner_id}, entry {entry.sequence}: a charge "
                                      f"in its chain is not composed here: {problem}")
        try:
            recomputed = compute_epsilon(entry.accountant, [*events, entry.event], entry.delta)
        except (UnsupportedEvent, ValueError) as err:
            raise ReceiptRejected(f"receipt rejected: owner {entry.owner_id}, entry {entry.sequence}: {err}") from None
        sequences = held.sequences | {e.sequence for e in new} | {entry.sequence}
        complete = min(sequences) == 1 and len(sequences) == max(sequences)  # distinct positive integers 1..max
        stored = entry.cumulative_epsilon
        if complete and not stated_epsilon_holds(stored, recomputed, complete=True):
            raise ReceiptRejected(
                f"receipt rejected: owner {entry.owner_id}, entry {entry.sequence} states epsilon {stored!r}; "
                f"its charges compose to {recomputed!r} ({entry.accountant})")
        if not complete and not stated_epsilon_holds(stored, recomputed, complete=False):
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


@dataclass(frozen=True)
class Checked:
    """A verified receipt, the bridge entries this ledger does not hold yet, and whether it is a repeat."""

    entry: Entry
    bridge: tuple[Entry, ...]
    duplicate: bool = False


class AnchorMismatch(ReceiptRejected):
    """A genuinely signed receipt whose chain does not continue the owner's anchored head."""


def _check_against_anchor(owner: str, entries: list[Entry | ElidedEntry], anchored: tuple[int, bytes]) -> None:
    """The chain sent (bridge + receipt) must continue the owner's anchored head."""
    sequence, head_hash = anchored
    first, last = entries[0], entries[-1]
    if len(entries) == 1 and last.sequence == sequence and last.hash == head_hash:
        return  # the anchored entry itself, sent again (a retried or resumed round)
    if last.sequence <= sequence:
        raise AnchorMismatch(
            f"receipt rejected: owner {owner}'s ledger is behind the head this coordinator accepted: it sent entry "
            f"{last.sequence}, but entry {sequence} was anchored (the ledger was truncated or restored from an "
            "older copy)")
    if first.sequence != sequence + 1 or first.previous_hash != head_hash:
        raise AnchorMismatch(
            f"receipt rejected: owner {owner}'s entries do not continue the head this coordinator accepted "
            f"(entry {sequence}, {head_hash.hex()[:16]}...): its ledger was rolled back or rewritten")

