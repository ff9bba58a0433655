"""``verify``: is this ledger file exactly what its owners signed, and are its epsilons right?

Walks every owner's chain in sequence order and stops at the first bad entry:

1. the file is a readable privfl ledger: SQLite integrity check, and the schema
   (tables, unique indexes, append-only triggers) is exactly privfl's;
2. each entry's signature verifies against the owner's key (given by the caller,
   or else the key the ledger file records, which the report then says);
3. the stored bytes decode, and the row's indexed columns agree with them;
4. sequence numbers run 1, 2, 3, ... without gaps (owner ledger) and each entry's
   previous_hash is the sha256 of the entry before it;
5. each stated cumulative epsilon equals the epsilon recomputed from the charges up
   to it, with the entry's own accountant and delta (``epsilon_check="all"``; or
   only each owner's last entry, or none).

What one file cannot show: that entries were removed from its *end* (a truncated
chain is still a valid chain), that it is an older copy, or that it was rewritten and
re-signed (by its owner, or under another key).  Those need something from outside
the file: the owner's public key (``public_key``), the heads the coordinator anchored
(``anchored``, from its registry: each must still be in the ledger, byte for byte),
or the receipts another ledger holds (``anchors``).  A ``-wal`` file whose frames
fail their checksums is reported too: SQLite silently drops those transactions.

Federation ledgers and the coordinator's registry also hold the coordinator's chain
of anchors (schema 2): each is signed by the coordinator's key, links to the one
before, carries contiguous per-owner positions and, in a federation ledger, names a
receipt the file holds.

A federation ledger holds only part of each owner's chain (entries the owner wrote
for other federations are not there), so there gaps are expected: links are
checked where entries are consecutive, and epsilon exactly only while the chain held
is complete from sequence 1, else as a lower bound.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from privfl.privacy.budget import fits_budget
from privfl.privacy.keys import fingerprint, public_key_from_bytes
from privfl.privacy.ledger.chain import GENESIS_HASH, entry_hash
from privfl.privacy.ledger.entry import CHARGE, KIND_TO_PROTO, Entry, decode_entry, unit_of
from privfl.privacy.ledger.epsilon import PrefixEpsilons, stated_epsilon_holds
from privfl.privacy.ledger.errors import LedgerError, NotALedgerError, UnsupportedEvent
from privfl.privacy.ledger.owner import compute_epsilon
from privfl.privacy.ledger.signing import signature_problem
from privfl.privacy.ledger.anchor import COORDINATOR, Anchor, anchor_signature_problem, decode_anchor
from privfl.privacy.ledger.store import (
    FEDERATION_LEDGER, LEDGER_KINDS, OWNER_LEDGER, REGISTRY, SCHEMAS, LedgerStore, StoredRow,
)
from privfl.privacy.ledger.wal import wal_problem
from privfl.protos import ledger_pb2

EPSILON_CHECKS = ("all", "last", "none")


@dataclass(frozen=True)
class Problem:
    reason: str
    owner_id: str = ""
    sequence: int | None = None  # None: not about one entry (the file, its schema, a key)

    def __str__(self) -> str:
        where = []
        if self.owner_id:
            where.append(f"owner {self.owner_id}")
        if self.sequence is not None:
            where.append(f"entry {self.sequence}")
        return f"{', '.join(where)}: {self.reason}" if where else self.reason


@dataclass
class VerificationReport:
    path: str
    ok: bool = True
    ledger_kind: str = ""
    problem: Problem | None = None  # the first bad entry (or file-level fault)
    entries_checked: int = 0
    epsilons_checked: int = 0
    epsilon_check: str = "all"
    keys_independently_supplied: bool = False
    key_fingerprints: dict[str, str] = field(default_factory=dict)
    anchors_checked: int = 0
    heads: dict[str, tuple[int, str]] = field(default_factory=dict)  # owner -> (sequence, sha256 hex)
    notes: list[str] = field(default_factory=list)

    def fail(self, reason: str, owner_id: str = "", sequence: int | None = None) -> VerificationReport:
        self.ok, self.problem = False, Problem(reason, owner_id, sequence)
        return self

    def summary(self) -> str:
        lines = [f"{self.path}: {'INTACT' if self.ok else 'NOT INTACT'}"
                 + (f" ({self.ledger_kind} ledger)" if self.ledger_kind else "")]
        if self.problem:
            lines.append(f"first bad entry: {self.problem}")
        lines.append(f"entries checked: {self.entries_checked}; epsilons recomputed: {self.epsilons_checked} "
                     f"(--epsilon {self.epsilon_check})")
        for owner, fp in sorted(self.key_fingerprints.items()):
            head = self.heads.get(owner)
            head_text = f", head {head[0]} {head[1][:16]}..." if head else ""
            lines.append(f"owner {owner}: key {fp[:16]}...{head_text}")
        if not self.keys_independently_supplied:
            lines.append("note: keys were read from the ledger file itself, not supplied independently; a ledger "
                         "rewritten wholesale under another key would also pass (use --public-key)")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["problem"] = None if self.problem is None else {**asdict(self.problem), "text": str(self.problem)}
        data["heads"] = {o: {"sequence": s, "hash": h} for o, (s, h) in self.heads.items()}
        return data


PublicKeys = Ed25519PublicKey | Mapping[str, Ed25519PublicKey] | None


def verify(
    path: str | Path,
    public_key: PublicKeys = None,
    *,
    epsilon_check: str = "all",
    anchors: Iterable[ledger_pb2.SignedEntry | Entry] = (),
    anchors_source: str = "the anchors",
    anchored: Iterable[Anchor | tuple[str, int, bytes]] = (),
    anchored_source: str = "the coordinator's registry",
    coordinator_key: Ed25519PublicKey | None = None,
) -> VerificationReport:
    """Check a ledger file; the report names the first bad entry (``report.problem``).

    ``public_key``: the owner's key (owner ledger) or a mapping owner id -> key
    (federation ledger). ``anchors``: signed entries known from elsewhere that the
    ledger must contain verbatim. ``anchored``: owner heads (owner, sequence, sha256)
    the coordinator accepted, which the ledger must still hold (detects truncation,
    an older copy, a rewritten history). ``coordinator_key``: the key the coordinator
    chain must be signed with (else the key the file records, which the report notes).
    """
    if epsilon_check not in EPSILON_CHECKS:
        raise ValueError(f"epsilon_check must be one of {', '.join(EPSILON_CHECKS)}")
    report = VerificationReport(path=str(path), epsilon_check=epsilon_check)
    damaged = wal_problem(path) if Path(path).is_file() else None
    if damaged:
        return report.fail(f"the ledger is not whole: {damaged}")
    try:
        store = LedgerStore.open_readonly(path)
    except NotALedgerError as err:
        return report.fail(str(err))
    try:
        report = _verify_open(store, report, public_key, epsilon_check, list(anchors), anchors_source,
                              coordinator_key)
        if report.ok:
            _check_anchored_heads(store, report, list(anchored), anchored_source)
        return report
    except sqlite3.DatabaseError as err:  # corruption met while reading rows
        return report.fail(f"the file is damaged: SQLite reports {err}")
    except (ValueError, TypeError, UnicodeDecodeError, OverflowError) as err:
        # Data no privfl version writes (e.g. a column whose type was changed): fail closed.
        return report.fail(f"the file holds data privfl never writes ({type(err).__name__}: {err})")
    finally:
        store.close()


def _verify_open(store: LedgerStore, report: VerificationReport, public_key: PublicKeys,
                 epsilon_check: str, anchors: list, anchors_source: str,
                 coordinator_key: Ed25519PublicKey | None) -> VerificationReport:
    problems = store.integrity_problems()
    if problems:
        return report.fail(f"SQLite integrity check failed: {'; '.join(problems[:3])}")
    version = store.pragma("user_version")
    schema_problem = _schema_problem(store, version)
    if schema_problem:
        return report.fail(schema_problem)
    meta = store.meta()
    report.ledger_kind = kind = meta.get("ledger_kind", "")
    if kind not in LEDGER_KINDS or (kind == REGISTRY and version < 2):
        return report.fail(f"unknown ledger kind {kind!r} in the metadata")
    if meta.get("schema_version") != str(version):
        return report.fail(f"schema version {version} (user_version) differs from the metadata's "
                           f"{meta.get('schema_version')!r}")
    expected_meta = {"ledger_kind", "schema_version"} | ({"owner_id"} if kind == OWNER_LEDGER else set())
    if set(meta) != expected_meta:
        return report.fail(f"the metadata keys are {sorted(meta)}, expected {sorted(expected_meta)}")

    recorded: dict[str, list[tuple[str, bytes]]] = {}
    for fp, owner, raw in store.keys():
        try:
            consistent = fingerprint(public_key_from_bytes(raw)) == fp
        except (LedgerError, ValueError, TypeError):
            consistent = False
        if not consistent:
            return report.fail("the keys table's public key does not match its recorded fingerprint "
                               "(keys table altered)", str(owner))
        recorded.setdefault(owner, []).append((fp, raw))
    coordinator_keys = recorded.pop(COORDINATOR, [])
    if kind == OWNER_LEDGER and coordinator_keys:
        return report.fail("an owner's ledger records a coordinator key (keys table altered)")
    owners = sorted(set(recorded) | set(store.owner_ids()))
    if kind == REGISTRY and store.count():
        return report.fail("a coordinator registry holds owner entries (it holds anchors only)")
    if kind == OWNER_LEDGER:
        owner_id = meta.get("owner_id", "")
        strangers = [o for o in owners if o != owner_id]
        if strangers:
            row = next(store.rows(strangers[0]), None)
            return report.fail(f"the owner's ledger of {owner_id!r} holds an entry or key of {strangers[0]!r}",
                               strangers[0], row.sequence if row else None)
        owners = [owner_id]
        if isinstance(public_key, Ed25519PublicKey):
            public_key = {owner_id: public_key}
    elif isinstance(public_key, Ed25519PublicKey):
        raise ValueError("a federation ledger holds many owners: pass a mapping owner id -> public key")
    supplied: Mapping[str, Ed25519PublicKey] = public_key or {}
    if kind == REGISTRY:
        owners = [o for o in owners if o in supplied or o in recorded]

    keys: dict[str, Ed25519PublicKey] = {}
    report.keys_independently_supplied = bool(owners) and all(o in supplied for o in owners)
    for owner in owners:
        if owner in supplied:
            keys[owner] = supplied[owner]
            continue
        stored = recorded.get(owner, [])
        if len(stored) != 1:
            return report.fail(f"the ledger records {len(stored)} keys for this owner (expected exactly 1)", owner)
        fp, raw = stored[0]
        try:
            key = public_key_from_bytes(raw)
        except (LedgerError, ValueError) as err:
            return report.fail(f"the recorded public key is not usable: {err}", owner)
        if fingerprint(key) != fp:
            return report.fail("the recorded public key does not match its recorded fingerprint", owner)
        keys[owner] = key
    report.key_fingerprints = {o: fingerprint(k) for o, k in keys.items()}

    if kind != REGISTRY:
        for owner in owners:
            if not _walk_owner(store, report, owner, keys[owner], kind, epsilon_check):
                return report
    for owner in owners:  # entries verified under supplied keys: the file must record those same keys
        stored = recorded.get(owner, [])
        if owner in supplied and [fp for fp, _ in stored] != [fingerprint(supplied[owner])]:
            return report.fail(f"the entries verify under the supplied key, but the ledger records "
                               f"{[fp[:16] + '...' for fp, _ in stored]} for this owner (keys table altered)", owner)
    if kind != OWNER_LEDGER and store.has_anchors():
        if not _walk_anchors(store, report, kind, coordinator_key, coordinator_keys):
            return report
    _check_anchors(store, report, anchors, anchors_source, set(owners))
    return report


def _walk_anchors(store: LedgerStore, report: VerificationReport, kind: str,
                  supplied: Ed25519PublicKey | None, recorded: list[tuple[str, bytes]]) -> bool:
    """The coordinator's chain: signed, linked, contiguous per owner, naming receipts the file holds."""
    rows = list(store.anchors())
    if not rows and not recorded:
        return True
    if supplied is not None:
        key = supplied
        if [fp for fp, _ in recorded] not in ([], [fingerprint(supplied)]):
            return not report.fail("the anchors verify under the supplied coordinator key, but the file records "
                                   f"{[fp[:16] + '...' for fp, _ in recorded]} (keys table altered)", "@coordinator")
    else:
        if len(recorded) != 1:
            return not report.fail(f"the file records {len(recorded)} coordinator keys (expected exactly 1)",
                                   "@coordinator")
        key = public_key_from_bytes(recorded[0][1])
        report.notes.append("the coordinator's anchors were checked against the key the file records; give the "
                            "coordinator's public key to rule out a file rewritten under another key")
    report.key_fingerprints["@coordinator"] = fingerprint(key)
    previous_hash, positions = GENESIS_HASH, {}
    for expected, row in enumerate(rows, start=1):
        where = f"anchor {row.sequence}"
        problem = anchor_signature_problem(row.entry, row.signature, row.key_fingerprint, key)
        if problem:
            return not report.fail(f"{where}: {problem}", "@coordinator", row.sequence)
        try:
            anchor = decode_anchor(row.entry, row.signature, row.key_fingerprint)
        except LedgerError as err:
            return not report.fail(f"{where}: signed, but {err}", "@coordinator", row.sequence)
        columns = (row.sequence, row.owner_id, row.owner_sequence, row.experiment_id, row.round)
        if columns != (anchor.sequence, anchor.owner_id, anchor.owner_sequence, anchor.experiment_id, anchor.round):
            return not report.fail(f"{where}: the row's columns disagree with the signed anchor", "@coordinator",
                                   row.sequence)
        if anchor.sequence != expected:
            return not report.fail(f"anchors {expected}..{anchor.sequence - 1} are missing before anchor "
                                   f"{anchor.sequence} (deleted?)", "@coordinator", anchor.sequence)
        if anchor.previous_hash != previous_hash:
            return not report.fail(f"{where}: previous_hash is not the hash of anchor {expected - 1} (anchors "
                                   "reordered, replaced or inserted)", "@coordinator", anchor.sequence)
        positions[anchor.owner_id] = positions.get(anchor.owner_id, 0) + 1
        if anchor.owner_position != positions[anchor.owner_id]:
            return not report.fail(f"{where}: it is owner {anchor.owner_id}'s anchor {anchor.owner_position}, but "
                                   f"the file holds {positions[anchor.owner_id] - 1} before it (a receipt and its "
                                   "anchor were removed)", anchor.owner_id, anchor.owner_sequence)
        if kind == FEDERATION_LEDGER:
            held = store.at_sequence(anchor.owner_id, anchor.owner_sequence)
            if held is None or entry_hash(held.entry) != anchor.owner_entry_hash:
                what = "missing" if held is None else "a different entry"
                return not report.fail(f"the receipt that anchor {anchor.sequence} ({anchor.describe()}) names is "
                                       f"{what} in this file (a receipt was deleted or replaced)",
                                       anchor.owner_id, anchor.owner_sequence)
        previous_hash = anchor.hash
        report.anchors_checked += 1
    if kind == FEDERATION_LEDGER:  # every receipt of an experiment in this file is anchored (or bridges to one)
        anchored, last_anchored = set(), {}
        for r in rows:
            anchored.add((r.owner_id, r.owner_sequence))
            last_anchored[r.owner_id] = max(last_anchored.get(r.owner_id, 0), r.owner_sequence)
        experiments = {r.experiment_id for r in rows}
        for row in store.rows():
            if row.run_id in experiments and (row.owner_id, row.sequence) not in anchored \
                    and row.sequence > last_anchored.get(row.owner_id, 0):
                return not report.fail("this receipt has no anchor (its anchor was removed)", row.owner_id,
                                       row.sequence)
    return True


def _check_anchored_heads(store: LedgerStore, report: VerificationReport, anchored: list, source: str) -> None:
    """An owner ledger must still hold every head the coordinator accepted, byte for byte."""
    if not anchored:
        return
    owner = store.meta().get("owner_id")
    checked = 0
    for item in anchored:
        owner_id, sequence, digest = (item.owner_id, item.owner_sequence, item.owner_entry_hash) \
            if isinstance(item, Anchor) else item
        if owner is not None and owner_id != owner:
            continue
        checked += 1
        row = store.at_sequence(owner_id, sequence)
        if row is None:
            head = store.head(owner_id)
            held = head.sequence if head else 0
            report.fail(f"the ledger ends at entry {held}, but {source} accepted entry {sequence} "
                        f"({digest.hex()[:16]}...): entries {held + 1}..{sequence} are missing (the ledger was "
                        "truncated, restored from an older copy, or lost its -wal file)", owner_id, sequence)
            return
        if entry_hash(row.entry) != digest:
            report.fail(f"differs from the entry {source} accepted ({digest.hex()[:16]}...): the ledger was "
                        "rewritten (and re-signed) since, or replaced by another", owner_id, sequence)
            return
    if checked:
        report.notes.append(f"checked against {checked} head(s) accepted by {source}")


def _schema_problem(store: LedgerStore, version: int) -> str | None:
    """The schema must be exactly privfl's for its version (same tables, indexes and triggers, same SQL)."""
    if version not in SCHEMAS:
        return f"schema version {version} is not one privfl writes ({', '.join(map(str, SCHEMAS))})"
    reference = sqlite3.connect(":memory:")
    try:
        for statement in SCHEMAS[version]:
            reference.execute(statement)
        expected = _schema_of(reference)
    finally:
        reference.close()
    actual = _schema_of(store._db)
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    changed = sorted(n for n in set(expected) & set(actual) if expected[n] != actual[n])
    if not (missing or extra or changed):
        return None
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing)}")
    if extra:
        parts.append(f"unexpected {', '.join(extra)}")
    if changed:
        parts.append(f"altered {', '.join(changed)}")
    return ("the ledger's schema is not privfl's (" + "; ".join(parts) +
            "): the append-only guards were tampered with or the file was not written by privfl")


def _schema_of(db: sqlite3.Connection) -> dict[str, tuple]:
    """Every schema object (SQLite's automatic indexes included) by type and name, SQL verbatim.

    SQLite keeps each CREATE statement's text as written, so a ledger's schema text is
    byte-for-byte that of a fresh database built from SCHEMA; even a changed space is
    an edit of the file.
    """
    rows = db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")
    return {f"{kind} {name}": (table, sql) for kind, name, table, sql in rows}


def _walk_owner(store: LedgerStore, report: VerificationReport, owner: str, key: Ed25519PublicKey,
                kind: str, epsilon_check: str) -> bool:
    """Check one owner's chain; False (and the report filled in) at the first bad entry."""
    prefixes: dict[str, PrefixEpsilons] = {}  # per privacy unit: each unit's guarantee is composed on its own
    charges: dict[str, list] = {}
    previous: StoredRow | None = None
    complete = True  # federation: do we hold the owner's chain from sequence 1 without gaps?
    rows = list(store.rows(owner))
    for index, row in enumerate(rows):
        seq = row.sequence
        types = _type_problem(row)
        if types:
            return not report.fail(types, owner, seq if isinstance(seq, int) else None)
        signed = ledger_pb2.SignedEntry(entry=row.entry, signature=row.signature, key_fingerprint=row.key_fingerprint)
        problem = signature_problem(signed, key)
        if problem:
            return not report.fail(problem, owner, seq)
        try:
            entry = decode_entry(row.entry, row.signature, row.key_fingerprint)
        except LedgerError as err:
            return not report.fail(f"signed, but {err}", owner, seq)
        mismatch = _column_mismatch(row, entry)
        if mismatch:
            return not report.fail(mismatch, owner, seq)

        expected_seq = 1 if previous is None else previous.sequence + 1
        if seq != expected_seq:
            if kind == OWNER_LEDGER:
                gap = f"{expected_seq}" if seq == expected_seq + 1 else f"{expected_seq}..{seq - 1}"
                return not report.fail(f"entries {gap} are missing before it (deleted?)", owner, seq)
            complete = False
        if seq == expected_seq:
            wanted = GENESIS_HASH if previous is None else entry_hash(previous.entry)
            if entry.previous_hash != wanted:
                what = "the genesis hash" if previous is None else f"the hash of entry {previous.sequence}"
                return not report.fail(f"previous_hash is not {what} (entries reordered, replaced or inserted)",
                                       owner, seq)

        unit = unit_of(entry)
        prefix = prefixes.setdefault(unit, PrefixEpsilons())
        if entry.kind == CHARGE:
            if entry.event is None:
                return not report.fail(f"cannot recompute epsilon: the charge records a mechanism this privfl "
                                       f"does not know ({entry.mechanism or 'none'})", owner, seq)
            charges.setdefault(unit, []).append(entry.event)
            if epsilon_check == "all":
                try:
                    prefix.add_charge(entry.event)
                except UnsupportedEvent as err:
                    return not report.fail(f"cannot recompute epsilon: {err}", owner, seq)
            if not fits_budget(entry.cumulative_epsilon, entry.epsilon_budget):
                report.notes.append(f"owner {owner}, entry {seq}: this charge took epsilon to "
                                    f"{entry.cumulative_epsilon:.4g}, past the budget {entry.epsilon_budget:g}")
        is_last = index == len(rows) - 1
        if epsilon_check == "all" or (epsilon_check == "last" and is_last):
            failure = _check_epsilon(report, prefix, charges.get(unit, []), entry, epsilon_check, complete)
            if failure:
                return not report.fail(failure, owner, seq)
        report.entries_checked += 1
        previous = row
    if rows:
        report.heads[owner] = (rows[-1].sequence, entry_hash(rows[-1].entry).hex())
        if not complete:
            report.notes.append(f"owner {owner}: this ledger holds part of the owner's chain (it starts at entry "
                                f"{rows[0].sequence} or has gaps); epsilons past a gap were checked as lower bounds")
    return True


def _check_epsilon(report: VerificationReport, prefix: PrefixEpsilons, charges: list, entry: Entry,
                   mode: str, complete: bool) -> str | None:
    try:
        recomputed = (prefix.epsilon(entry.accountant, entry.delta) if mode == "all"
                      else compute_epsilon(entry.accountant, charges, entry.delta))
    except (UnsupportedEvent, ValueError) as err:
        return f"cannot recompute epsilon: {err}"
    report.epsilons_checked += 1
    stored = entry.cumulative_epsilon
    if complete and not stated_epsilon_holds(stored, recomputed, complete=True):
        return (f"states cumulative epsilon {stored!r}, but its charges compose to {recomputed!r} "
                f"({entry.accountant}, delta={entry.delta:g})")
    if not complete and not stated_epsilon_holds(stored, recomputed, complete=False):
        return (f"states cumulative epsilon {stored!r}, below the {recomputed!r} that the charges held here "
                f"alone compose to ({entry.accountant})")
    return None


_COLUMN_TYPES = {"id": int, "owner_id": str, "sequence": int, "run_id": str, "round": int, "kind": int,
                 "entry": bytes, "signature": bytes, "key_fingerprint": str}


def _type_problem(row: StoredRow) -> str | None:
    for column, kind in _COLUMN_TYPES.items():
        value = getattr(row, column)
        if type(value) is not kind:
            return f"the row's {column} column holds a {type(value).__name__}, not a {kind.__name__}"
    return None


def _column_mismatch(row: StoredRow, entry: Entry) -> str | None:
    pairs = [("owner_id", row.owner_id, entry.owner_id), ("sequence", row.sequence, entry.sequence),
             ("run_id", row.run_id, entry.run_id), ("round", row.round, entry.round),
             ("kind", row.kind, KIND_TO_PROTO[entry.kind])]
    for column, stored, signed in pairs:
        if stored != signed:
            return f"the row's {column} column says {stored!r}, the signed entry says {signed!r}"
    return None


def _check_anchors(store: LedgerStore, report: VerificationReport, anchors: list, source: str,
                   owners: set[str]) -> None:
    for anchor in anchors:
        data = anchor.entry_bytes if isinstance(anchor, Entry) else anchor.entry
        try:
            held = decode_entry(data)
        except LedgerError:
            continue
        if held.owner_id not in owners:
            continue
        row = store.at_sequence(held.owner_id, held.sequence)
        if row is None:
            report.fail(f"missing, but {source} holds it (entries removed from the end of the chain?)",
                        held.owner_id, held.sequence)
            return
        if row.entry != data:
            report.fail(f"differs from the copy {source} holds", held.owner_id, held.sequence)
            return
    if anchors:
        report.notes.append(f"checked against {len(anchors)} entries held by {source}")
