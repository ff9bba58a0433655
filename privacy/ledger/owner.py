"""An owner's own ledger: the record that counts (DESIGN principle 1).

Kept by the institution next to its data, in one SQLite file per owner, signed with
the owner's Ed25519 key.  It outlives runs: every charge of every run composes into
the owner's lifetime epsilon.

Typical use at a client, per round (charge before release, principle 2)::

    ledger = OwnerLedger.open(path, owner_id, signing_key)
    if ledger.charge_for(run_id, rnd) is None:            # not charged yet
        decision = decide_next_release(ledger.events(), planned, budget, accountant)
        if not decision.allowed:
            receipt = ledger.refuse(run_id, rnd, decision.reason, ...)
            ...  # send the refusal receipt; do not train
    update = train(...)
    entry = ledger.charge(run_id, rnd, event, ..., update_hash=sha256(update_bytes))
    ...  # only now release the update, with entry.signed_bytes() as its receipt

``charge`` recomputes the cumulative epsilon itself from every stored charge plus the
new event and, by default, raises :class:`BudgetExceeded` (writing nothing) when it
would pass the budget, so a concurrent charge can never push the owner over it.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from privfl.privacy.budget import check_delta, fits_budget
from privfl.privacy.accountants import get_accountant
from privfl.privacy.events import DpEvent, NonPrivateRelease, PoissonSubsampledGaussian, is_event
from privfl.privacy.keys import check_owner_id, fingerprint, public_key_bytes, public_key_from_bytes
from privfl.privacy.ledger.chain import HASH_SIZE, expected_previous_hash
from privfl.privacy.ledger.entry import (
    CHARGE, KIND_TO_PROTO, OWNER, RECORD, REFUSAL, Entry, decode_entry, encode_entry, unit_of,
)
from privfl.privacy.ledger.errors import (
    BudgetExceeded, ChargeConflict, LedgerError, LedgerKeyMismatch, UnsupportedEvent,
)
from privfl.privacy.ledger.signing import sign_entry
from privfl.privacy.ledger.store import LedgerFile, LedgerStore, OWNER_LEDGER, StoredRow


def compute_epsilon(accountant: str, events: Sequence[DpEvent], delta: float) -> float:
    """Epsilon of ``events`` under the named accountant; refuses events it does not know."""
    try:
        return get_accountant(accountant).epsilon(list(events), delta)
    except TypeError as err:  # merge_repeats: a mechanism no accountant here composes
        raise UnsupportedEvent(f"accountant '{accountant}' cannot compose these events: {err}") from None


@dataclass(frozen=True)
class _EventCache:
    """Charge events read so far, valid while the chain head is unchanged."""

    head_sequence: int
    events: tuple[tuple[str, DpEvent], ...]  # (privacy unit, event) of each charge


class OwnerLedger(LedgerFile):
    """One owner's append-only, hash-chained, signed ledger."""

    def __init__(self, store: LedgerStore, owner_id: str, signing_key: Ed25519PrivateKey | None,
                 public_key: Ed25519PublicKey) -> None:
        self._store = store
        self.owner_id = owner_id
        self._signing_key = signing_key
        self.public_key = public_key
        self.key_fingerprint = fingerprint(public_key)
        self._cache = _EventCache(0, ())

    # -- opening ---------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, owner_id: str, signing_key: Ed25519PrivateKey, *,
             create: bool = True) -> OwnerLedger:
        """Open (or, with ``create``, create) the owner's ledger for appending.

        A new ledger records ``owner_id`` and the key's public half; an existing one
        must belong to the same owner and key.  ``create=False`` (an owner's node)
        raises MissingLedger when there is no ledger at ``path``.
        """
        check_owner_id(owner_id)
        if not isinstance(signing_key, Ed25519PrivateKey):
            raise TypeError("signing_key must be an Ed25519PrivateKey (privfl.privacy.keys.load_private_key)")
        store = LedgerStore.open_for_writing(path, OWNER_LEDGER, {"owner_id": owner_id}, create=create)
        try:
            key_fp = fingerprint(signing_key)
            with store.write():
                recorded = [k for k in store.keys() if k[1] == owner_id]
                if not recorded:
                    store.add_key(owner_id, key_fp, public_key_bytes(signing_key))
                elif recorded[0][0] != key_fp:
                    raise LedgerKeyMismatch(
                        f"{path} is signed with key {recorded[0][0][:16]}..., not with the key given "
                        f"({key_fp[:16]}...); load the owner's own key")
        except BaseException:
            store.close()
            raise
        return cls(store, owner_id, signing_key, signing_key.public_key())

    @classmethod
    def open_readonly(cls, path: str | Path) -> OwnerLedger:
        """Open an owner's ledger for reading only (no key needed; cannot append)."""
        store = LedgerStore.open_readonly(path)
        try:
            meta = store.meta()
            if meta.get("ledger_kind") != OWNER_LEDGER:
                raise LedgerError(f"{path} is a {meta.get('ledger_kind')} ledger, not an owner's ledger")
            owner_id = meta["owner_id"]
            keys = [k for k in store.keys() if k[1] == owner_id]
            if not keys:
                raise LedgerError(f"{path} records no public key for owner {owner_id}")
            public = public_key_from_bytes(keys[0][2])
        except BaseException:
            store.close()
            raise
        return cls(store, owner_id, None, public)

    # -- reading ---------------------------------------------------------------

    def entries(self) -> list[Entry]:
        return [_decode(row) for row in self._store.rows(self.owner_id)]

    def events(self, unit: str = RECORD) -> list[DpEvent]:
        """The DP events of every charge of one privacy unit, in chain order (refusals never count).

        Record-level and owner-level guarantees are different promises (DESIGN principle 4):
        each is composed from its own unit's charges and stated on its own.
        """
        return _of_unit(self._charge_events(self._store.head(self.owner_id)), unit)

    def events_outside(self, run_id: str, unit: str = RECORD) -> list[DpEvent]:
        """The charge events of ``unit`` made for other experiments (what this one's plan starts from)."""
        return [e.event for e in self.entries() if e.is_charge and e.run_id != run_id and unit_of(e) == unit]

    def entry(self, sequence: int) -> Entry | None:
        """The entry at ``sequence`` (None past the head)."""
        row = self._store.at_sequence(self.owner_id, sequence)
        return _decode(row) if row else None

    def entries_between(self, after: int, before: int) -> list[Entry]:
        """Entries with ``after < sequence < before``, in chain order (a bridge between two heads)."""
        return [_decode(row) for row in self._store.rows(self.owner_id, after_sequence=after) if row.sequence < before]

    def charge_for(self, run_id: str, round: int, unit: str | None = None) -> Entry | None:
        """The charge for this release, if there is one (of privacy ``unit``, when one is named).

        A charge of another unit under the same key is not this release's charge: record-level
        and owner-level charges are different promises (principle 4), so a caller that names
        the unit it means never takes one for the other, whatever the key.
        """
        row = self._store.find(self.owner_id, run_id, round, KIND_TO_PROTO[CHARGE])
        entry = _decode(row) if row else None
        if entry is not None and unit is not None and unit_of(entry) != unit:
            return None
        return entry

    def federation_of(self, run_id: str) -> str | None:
        """The federation ``run_id`` belongs to at this owner: that of its first entry (None: never used)."""
        row = self._store.first_of_run(self.owner_id, run_id)
        return None if row is None else _decode(row).federation

    def is_charged(self, run_id: str, round: int) -> bool:
        return self._store.find(self.owner_id, run_id, round, KIND_TO_PROTO[CHARGE]) is not None

    def spent_epsilon(self, accountant: str, delta: float | None = None, unit: str = RECORD) -> float:
        """Epsilon of all charges of ``unit`` under ``accountant`` (recomputed, never read from an entry).

        Spent per unit has one definition (:func:`privfl.privacy.budget.unit_spend`): ``delta`` defaults to the
        delta of the unit's latest entry; 0.0 when the unit has no entry.
        """
        from privfl.privacy.budget import unit_spend

        spend = unit_spend(self.entries(), unit, accountant, delta=delta)
        return 0.0 if spend is None else spend.epsilon

    def head(self) -> tuple[int, bytes]:
        """(sequence, sha256) of the latest entry; (0, 32 zero bytes) for an empty ledger.

        An auditor who notes the head can later detect a truncated ledger.
        """
        row = self._store.head(self.owner_id)
        return (0, bytes(HASH_SIZE)) if row is None else (row.sequence, _decode(row).hash)

    def __len__(self) -> int:
        return self._store.count(self.owner_id)

    # -- appending -------------------------------------------------------------

    def charge(
        self,
        run_id: str,
        round: int,
        event: DpEvent,
        *,
        clipping_norm: float,
        delta: float,
        epsilon_budget: float,
        accountant: str,
        purpose: str = "",
        update_hash: bytes = b"",
        privacy_unit: str | None = None,
        enforce_budget: bool = True,
        federation: str = "",
    ) -> Entry:
        """Durably record a release before it happens; returns the signed entry (its receipt).

        Idempotent: if (run_id, round) is already charged, the existing entry is
        returned and nothing is written (if its event differs, ChargeConflict).  The
        cumulative epsilon is computed here from all stored charges plus ``event``;
        with ``enforce_budget`` a charge that would exceed ``epsilon_budget`` raises
        BudgetExceeded and writes nothing (record a refusal instead).
        """
        self._require_key()
        round = _check_release(run_id, round, delta, epsilon_budget)
        if not is_event(event):
            raise TypeError(f"event must be a privfl DP event, got {type(event).__name__}")
        if len(update_hash) not in (0, HASH_SIZE):
            raise ValueError(f"update_hash must be a sha256 digest ({HASH_SIZE} bytes), got {len(update_hash)}")
        unclipped = isinstance(event, NonPrivateRelease) and clipping_norm == 0  # nothing is clipped without DP
        if not unclipped and not (math.isfinite(clipping_norm) and clipping_norm > 0):
            raise ValueError(f"clipping_norm must be finite and > 0, got {clipping_norm}")
        unit = _privacy_unit(privacy_unit, event)
        get_accountant(accountant)  # unknown name: ValueError before taking the lock
        with self._store.write():
            existing = self._store.find(self.owner_id, run_id, round, KIND_TO_PROTO[CHARGE])
            if existing is not None:
                entry = _decode(existing)
                if unit_of(entry) != unit:
                    raise ChargeConflict(
                        f"owner {self.owner_id}, run {run_id!r}, round {round} is already charged at the "
                        f"{unit_of(entry)} level; refusing to take it for a {unit}-level charge")
                if entry.event != event:
                    raise ChargeConflict(
                        f"owner {self.owner_id}, run {run_id!r}, round {round} is already charged with "
                        f"{entry.event}; refusing to charge it again with {event}")
                return entry
            head = self._store.head(self.owner_id)
            cumulative = compute_epsilon(accountant, [*_of_unit(self._charge_events(head), unit), event], delta)
            if enforce_budget and not fits_budget(cumulative, epsilon_budget):
                raise BudgetExceeded(
                    f"owner {self.owner_id}: this release would bring epsilon to {cumulative:.4g} > budget "
                    f"{epsilon_budget:g} at delta={delta:g} ({accountant}); nothing was charged",
                    projected_epsilon=cumulative, epsilon_budget=epsilon_budget)
            entry = self._append(head, CHARGE, run_id=run_id, round=round, event=event,
                                 clipping_norm=clipping_norm, privacy_unit=unit, delta=delta,
                                 accountant=accountant, cumulative_epsilon=cumulative,
                                 epsilon_budget=epsilon_budget, purpose=purpose,
                                 update_hash=update_hash, refusal_reason="", federation=federation)
        self._cache = _EventCache(entry.sequence, (*self._cache.events, (unit, event))) \
            if self._cache.head_sequence == entry.sequence - 1 else self._cache
        return entry

    def refuse(
        self,
        run_id: str,
        round: int,
        reason: str,
        *,
        delta: float,
        epsilon_budget: float,
        accountant: str,
        event: DpEvent | None = None,
        clipping_norm: float = 0.0,
        purpose: str = "",
        privacy_unit: str | None = None,
        federation: str = "",
    ) -> Entry:
        """Record that the owner refused a release (nothing is charged).

        ``event`` may name the release that was asked for; it never counts towards
        epsilon.  The entry's cumulative epsilon is what was spent before.  Idempotent
        per (run_id, round): a repeated refusal returns the first.
        """
        self._require_key()
        round = _check_release(run_id, round, delta, epsilon_budget)
        if not reason:
            raise ValueError("a refusal needs a reason")
        unit = _privacy_unit(privacy_unit, event)
        with self._store.write():
            existing = self._store.find(self.owner_id, run_id, round, KIND_TO_PROTO[REFUSAL])
            if existing is not None:
                return _decode(existing)
            head = self._store.head(self.owner_id)
            spent = compute_epsilon(accountant, _of_unit(self._charge_events(head), unit), delta)
            return self._append(head, REFUSAL, run_id=run_id, round=round, event=event,
                                clipping_norm=clipping_norm, privacy_unit=unit, delta=delta,
                                accountant=accountant, cumulative_epsilon=spent,
                                epsilon_budget=epsilon_budget, purpose=purpose, update_hash=b"",
                                refusal_reason=reason, federation=federation)

    # -- internals -------------------------------------------------------------

    def _require_key(self) -> None:
        if self._signing_key is None:
            raise LedgerError(f"{self.path} is open read-only; open it with the owner's key to append")

    def _append(self, head: StoredRow | None, kind: str, **fields) -> Entry:
        sequence = 1 if head is None else head.sequence + 1
        entry_bytes = encode_entry(sequence=sequence,
                                   previous_hash=expected_previous_hash(head.entry if head else None),
                                   owner_id=self.owner_id, kind=kind, **fields)
        signed = sign_entry(entry_bytes, self._signing_key)
        self._store.insert(owner_id=self.owner_id, sequence=sequence, run_id=fields["run_id"],
                           round=fields["round"], kind=KIND_TO_PROTO[kind], entry=entry_bytes,
                           signature=signed.signature, key_fingerprint=signed.key_fingerprint)
        return decode_entry(entry_bytes, signed.signature, signed.key_fingerprint)

    def _charge_events(self, head: StoredRow | None) -> tuple[tuple[str, DpEvent], ...]:
        """(privacy unit, event) of every charge up to ``head``; reads only entries appended since the last call."""
        head_sequence = 0 if head is None else head.sequence
        cache = self._cache
        if cache.head_sequence > head_sequence:  # cannot happen in an append-only file
            cache = _EventCache(0, ())
        if cache.head_sequence < head_sequence:
            new = []
            for row in self._store.rows(self.owner_id, after_sequence=cache.head_sequence,
                                        kind=KIND_TO_PROTO[CHARGE]):
                if row.sequence > head_sequence:
                    break
                entry = _decode(row)
                if entry.event is None:
                    raise UnsupportedEvent(
                        f"{self.path}: charge {row.sequence} records a mechanism this privfl does not know "
                        f"({entry.mechanism or 'none'}); upgrade privfl to account for it")
                new.append((unit_of(entry), entry.event))
            cache = _EventCache(head_sequence, (*cache.events, *new))
        self._cache = cache
        return cache.events


def _of_unit(charges: tuple[tuple[str, DpEvent], ...], unit: str) -> list[DpEvent]:
    """The events of one unit (each charge's unit as :func:`~privfl.privacy.ledger.entry.unit_of` reads it)."""
    return [event for charge_unit, event in charges if charge_unit == unit]


def _decode(row: StoredRow) -> Entry:
    return decode_entry(row.entry, row.signature, row.key_fingerprint)


def _privacy_unit(given: str | None, event: DpEvent | None) -> str:
    """DP-SGD protects a record; DP over clipped updates protects the owner (principle 4)."""
    record_level = (PoissonSubsampledGaussian, NonPrivateRelease)  # DP-SGD, or a release without DP at all
    unit = given or (RECORD if isinstance(event, record_level) or event is None else OWNER)
    if unit not in (RECORD, OWNER):
        raise ValueError(f"privacy_unit must be '{RECORD}' or '{OWNER}', got {unit!r}")
    return unit


def _check_release(run_id: str, round: int, delta: float, epsilon_budget: float) -> int:
    """Validate a release's identity and budget; returns the round as a plain int."""
    if not isinstance(run_id, str) or not run_id:
        raise ValueError("run_id must be a non-empty string")
    try:
        round = operator.index(round)
    except TypeError:
        raise ValueError(f"round must be an integer, got {round!r}") from None
    if round < 0:
        raise ValueError(f"round must be >= 0, got {round}")
    check_delta(delta)
    if not (math.isfinite(epsilon_budget) and epsilon_budget > 0):
        raise ValueError(f"epsilon_budget must be finite and > 0, got {epsilon_budget}")
    return round
