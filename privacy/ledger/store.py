"""SQLite storage for ledgers: append-only tables, durable commits, one writer at a time.

One file holds one ledger: an owner's own (``kind = owner``) or a federation's view
of many owners (``kind = federation``).  The file:

- is in WAL mode with ``synchronous = FULL``, so a committed entry has been fsynced
  to the write-ahead log before ``commit`` returns (durable across a crash or power
  loss; ``NORMAL`` would not be);
- has triggers that ABORT any UPDATE or DELETE, and any INSERT that would replace an
  existing row (``INSERT OR REPLACE`` deletes without firing delete triggers);
- takes a write lock with ``BEGIN IMMEDIATE`` before reading the chain head, so two
  processes appending at once are serialised and can never fork the chain;
- carries ``PRAGMA application_id`` 'pfl1' and ``user_version`` (schema version);
- is created with mode 0600 (its -wal and -shm files inherit it): a ledger names
  who took part in what, and is nobody else's to read;
- is checkpointed on close, so at rest it is one file, not a file and its WAL.

Schema 2 added the ``anchors`` table (the coordinator's chain, see
:mod:`privfl.privacy.ledger.anchor`); a schema-1 file is still read and appended to.

The triggers keep honest code from altering history; they are no defence against
someone who edits the file directly.  That is what signatures and the hash chain
are for (``privfl ledger verify``).

Besides each entry's canonical bytes, a row repeats a few decoded fields (owner,
sequence, run, round, kind, key fingerprint) as columns, for indexes and the
uniqueness rules; verification checks that they agree with the signed bytes.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from privfl.privacy.files import sync_each_write
from privfl.privacy.ledger.errors import LedgerError, MissingLedger, NotALedgerError

SCHEMA_VERSION = 2
APPLICATION_ID = 0x70666C31  # "pfl1"
OWNER_LEDGER = "owner"
FEDERATION_LEDGER = "federation"
REGISTRY = "registry"  # the coordinator's anchors across experiments
LEDGER_KINDS = (OWNER_LEDGER, FEDERATION_LEDGER, REGISTRY)
BUSY_TIMEOUT_S = 60.0

KIND_CHARGE = 1  # = ledger_pb2.ENTRY_KIND_CHARGE
KIND_REFUSAL = 2  # = ledger_pb2.ENTRY_KIND_REFUSAL


def _append_only(table: str, replaced_if: str) -> list[str]:
    return [
        f"""CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table}
            BEGIN SELECT RAISE(ABORT, 'privfl ledger: {table} is append-only (no UPDATE)'); END""",
        f"""CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table}
            BEGIN SELECT RAISE(ABORT, 'privfl ledger: {table} is append-only (no DELETE)'); END""",
        f"""CREATE TRIGGER {table}_no_replace BEFORE INSERT ON {table}
            WHEN EXISTS (SELECT 1 FROM {table} WHERE {replaced_if})
            BEGIN SELECT RAISE(ABORT, 'privfl ledger: {table} is append-only (row exists)'); END""",
    ]


SCHEMA_V1 = [
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE keys (
        fingerprint TEXT PRIMARY KEY,
        owner_id TEXT NOT NULL,
        public_key BLOB NOT NULL)""",
    """CREATE TABLE entries (
        id INTEGER PRIMARY KEY,
        owner_id TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        run_id TEXT NOT NULL,
        round INTEGER NOT NULL,
        kind INTEGER NOT NULL,
        entry BLOB NOT NULL,
        signature BLOB NOT NULL,
        key_fingerprint TEXT NOT NULL,
        UNIQUE (owner_id, sequence))""",
    # Idempotency: one charge (and one refusal) per release (owner, run, round).
    f"CREATE UNIQUE INDEX one_charge_per_release ON entries (owner_id, run_id, round) WHERE kind = {KIND_CHARGE}",
    f"CREATE UNIQUE INDEX one_refusal_per_release ON entries (owner_id, run_id, round) WHERE kind = {KIND_REFUSAL}",
    *_append_only("meta", "key = NEW.key"),
    *_append_only("keys", "fingerprint = NEW.fingerprint"),
    *_append_only("entries", "id = NEW.id OR (owner_id = NEW.owner_id AND sequence = NEW.sequence) OR "
                             "(owner_id = NEW.owner_id AND run_id = NEW.run_id AND round = NEW.round "
                             "AND kind = NEW.kind)"),
]
ANCHORS_SCHEMA = [
    """CREATE TABLE anchors (
        id INTEGER PRIMARY KEY,
        sequence INTEGER NOT NULL UNIQUE,
        owner_id TEXT NOT NULL,
        owner_sequence INTEGER NOT NULL,
        experiment_id TEXT NOT NULL,
        round INTEGER NOT NULL,
        entry BLOB NOT NULL,
        signature BLOB NOT NULL,
        key_fingerprint TEXT NOT NULL)""",
    "CREATE INDEX anchors_by_owner ON anchors (owner_id, owner_sequence)",
    *_append_only("anchors", "id = NEW.id OR sequence = NEW.sequence"),
]
SCHEMA = [*SCHEMA_V1, *ANCHORS_SCHEMA]
SCHEMAS = {1: SCHEMA_V1, 2: SCHEMA}
EXPECTED_TABLES = ("entries", "keys", "meta")  # every schema version has these


@dataclass(frozen=True)
class StoredRow:
    id: int
    owner_id: str
    sequence: int
    run_id: str
    round: int
    kind: int
    entry: bytes
    signature: bytes
    key_fingerprint: str


_ROW_COLUMNS = "id, owner_id, sequence, run_id, round, kind, entry, signature, key_fingerprint"


@dataclass(frozen=True)
class StoredAnchor:
    id: int
    sequence: int
    owner_id: str
    owner_sequence: int
    experiment_id: str
    round: int
    entry: bytes
    signature: bytes
    key_fingerprint: str


_ANCHOR_COLUMNS = "id, sequence, owner_id, owner_sequence, experiment_id, round, entry, signature, key_fingerprint"


def _copy_hint(path: Path) -> str:
    """Why a copied ledger may look empty or foreign: its newest pages were in the -wal file."""
    wal = Path(str(path) + "-wal")
    if wal.exists():
        return ""
    return ("; if this file was copied while privfl had it open, the newest entries may have been in its -wal file: "
            "copy <ledger>.db-wal with it, or copy a ledger privfl has closed (closing folds the WAL back in)")


def _row(values: tuple) -> StoredRow:
    return StoredRow(*values)


class LedgerStore:
    """A connection to one ledger file. Not shared across threads."""

    def __init__(self, connection: sqlite3.Connection, path: Path, readonly: bool) -> None:
        self._db = connection
        self.path = path
        self.readonly = readonly
        self._in_write = False
        self._anchors: bool | None = None

    # -- opening ---------------------------------------------------------------

    @classmethod
    def open_for_writing(cls, path: str | Path, kind: str, meta: dict[str, str], *,
                         create: bool = True) -> LedgerStore:
        """Open ``path`` for appending, creating the ledger (with ``meta``) if the file is new.

        For an existing ledger, ``meta`` values must match the stored ones (kind, owner).
        With ``create=False`` a missing file, or one without a ledger in it, raises
        MissingLedger and nothing is written: an owner's node must never start a fresh
        ledger (and so a fresh lifetime budget) because a path changed.
        """
        path = Path(path)
        if not create and not path.is_file():
            raise MissingLedger(f"no ledger at {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # a new ledger is created private (0600) before SQLite writes a byte into it
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        try:
            db = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        except sqlite3.Error as err:
            raise LedgerError(f"cannot open {path}: {err}") from None
        store = cls(db, path, readonly=False)
        try:
            db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            if db.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                raise LedgerError(f"{path}: could not switch the ledger to WAL mode")
            # FULL: a committed entry is on disk; OFF only while a simulation enrols its owners
            # (privacy.files.deferred_sync: one os.sync() when enrolment ends, before any release)
            db.execute(f"PRAGMA synchronous = {'FULL' if sync_each_write() else 'OFF'}")
            with store.write():
                if not store._has_schema():
                    if not create:
                        raise MissingLedger(f"{path} holds no ledger (an empty file)")
                    store._create(kind, meta)
                store._check_identity(kind, meta)
        except (sqlite3.DatabaseError, UnicodeDecodeError) as err:
            db.close()
            raise NotALedgerError(f"{path} is not a privfl ledger ({err}){_copy_hint(path)}") from None
        except BaseException:
            db.close()
            raise
        return store

    @classmethod
    def open_readonly(cls, path: str | Path) -> LedgerStore:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no ledger at {path}")
        try:
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                 timeout=BUSY_TIMEOUT_S)
        except sqlite3.Error as err:
            raise NotALedgerError(f"cannot open {path}: {err}") from None
        store = cls(db, path, readonly=True)
        try:
            db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            if not store._has_schema():
                raise NotALedgerError(f"{path} is not a privfl ledger (no ledger tables){_copy_hint(path)}")
            store._check_identity(None, {})
        except (sqlite3.DatabaseError, UnicodeDecodeError, ValueError) as err:
            db.close()
            raise NotALedgerError(f"{path} is not a readable privfl ledger ({err}){_copy_hint(path)}") from None
        except BaseException:
            db.close()
            raise
        return store

    @classmethod
    def open_readonly_kind(cls, path: str | Path, kind: str, what: str) -> LedgerStore:
        """Open read-only and insist on the ledger kind (``what`` names it in the error), so a
        registry is never read as a federation ledger or the other way round."""
        store = cls.open_readonly(path)
        if store.meta().get("ledger_kind") != kind:
            store.close()
            raise LedgerError(f"{path} is not {what}")
        return store

    def _has_schema(self) -> bool:
        names = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not names:
            return False
        app_id = self._db.execute("PRAGMA application_id").fetchone()[0]
        if app_id != APPLICATION_ID or not set(EXPECTED_TABLES) <= names:
            raise NotALedgerError(f"{self.path} is an SQLite file but not a privfl ledger")
        return True

    def _create(self, kind: str, meta: dict[str, str]) -> None:
        self._db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        for statement in SCHEMA:
            self._db.execute(statement)
        # Only facts a verifier can check (kind, schema, owner): an unsigned value it could
        # not check (a creation time, a version string) could be edited unnoticed.
        values = {"ledger_kind": kind, "schema_version": str(SCHEMA_VERSION), **meta}
        self._db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", sorted(values.items()))

    def _check_identity(self, kind: str | None, meta: dict[str, str]) -> None:
        stored = self.meta()
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise NotALedgerError(
                f"{self.path} uses ledger schema {version}; this privfl reads up to {SCHEMA_VERSION} (upgrade privfl)")
        if kind is not None and stored.get("ledger_kind") != kind:
            raise NotALedgerError(f"{self.path} is a {stored.get('ledger_kind')} ledger, not a {kind} ledger")
        for key, value in meta.items():
            if stored.get(key) != value:
                raise LedgerError(f"{self.path} belongs to {key} {stored.get(key)!r}, not {value!r}")

    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def has_anchors(self) -> bool:
        if self._anchors is None:
            self._anchors = bool(self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'anchors'").fetchone())
        return self._anchors

    def close(self) -> None:
        """Close; the last writer to close folds the WAL back into the main file."""
        try:
            if not self.readonly:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass  # another connection is busy: the WAL stays, which is fine
        self._db.close()

    # -- transactions ----------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[LedgerStore]:
        """An IMMEDIATE transaction: holds the write lock from the first read on."""
        if self.readonly:
            raise LedgerError(f"{self.path} is open read-only")
        if self._in_write:
            yield self
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._in_write = True
        try:
            yield self
        except BaseException:
            self._in_write = False
            self._db.execute("ROLLBACK")
            raise
        self._in_write = False
        self._db.execute("COMMIT")  # synchronous=FULL: fsynced before this returns

    # -- reading ---------------------------------------------------------------

    def meta(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT key, value FROM meta"))

    def keys(self) -> list[tuple[str, str, bytes]]:
        """(fingerprint, owner_id, raw public key) for every key the ledger records."""
        return list(self._db.execute(
            "SELECT fingerprint, owner_id, public_key FROM keys ORDER BY rowid"))

    def owner_ids(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT DISTINCT owner_id FROM entries ORDER BY owner_id")]

    def head(self, owner_id: str) -> StoredRow | None:
        row = self._db.execute(
            f"SELECT {_ROW_COLUMNS} FROM entries WHERE owner_id = ? ORDER BY sequence DESC LIMIT 1",
            (owner_id,)).fetchone()
        return _row(row) if row else None

    def find(self, owner_id: str, run_id: str, round: int, kind: int) -> StoredRow | None:
        row = self._db.execute(
            f"SELECT {_ROW_COLUMNS} FROM entries WHERE owner_id = ? AND run_id = ? AND round = ? AND kind = ?",
            (owner_id, run_id, round, kind)).fetchone()
        return _row(row) if row else None

    def first_of_run(self, owner_id: str, run_id: str) -> StoredRow | None:
        """The earliest entry (charge or refusal) an owner wrote under ``run_id``."""
        row = self._db.execute(
            f"SELECT {_ROW_COLUMNS} FROM entries WHERE owner_id = ? AND run_id = ? ORDER BY sequence LIMIT 1",
            (owner_id, run_id)).fetchone()
        return _row(row) if row else None

    def at_sequence(self, owner_id: str, sequence: int) -> StoredRow | None:
        row = self._db.execute(f"SELECT {_ROW_COLUMNS} FROM entries WHERE owner_id = ? AND sequence = ?",
                               (owner_id, sequence)).fetchone()
        return _row(row) if row else None

    def rows(self, owner_id: str | None = None, after_sequence: int = 0, kind: int | None = None,
             limit: int | None = None) -> Iterator[StoredRow]:
        """Rows in chain order (by owner, then sequence)."""
        where, args = ["sequence > ?"], [after_sequence]
        if owner_id is not None:
            where.append("owner_id = ?")
            args.append(owner_id)
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        sql = f"SELECT {_ROW_COLUMNS} FROM entries WHERE {' AND '.join(where)} ORDER BY owner_id, sequence"
        if limit:
            sql += f" LIMIT {int(limit)}"
        for values in self._db.execute(sql, args):
            yield _row(values)

    def count(self, owner_id: str | None = None) -> int:
        if owner_id is None:
            return self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM entries WHERE owner_id = ?", (owner_id,)).fetchone()[0]

    def triggers(self) -> tuple[str, ...]:
        return tuple(sorted(r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")))

    def pragma(self, name: str) -> int:
        return int(self._db.execute(f"PRAGMA {name}").fetchone()[0])

    def integrity_problems(self) -> list[str]:
        rows = [r[0] for r in self._db.execute("PRAGMA integrity_check")]
        return [] if rows == ["ok"] else rows

    def anchors(self, owner_id: str | None = None, experiment_id: str | None = None) -> Iterator[StoredAnchor]:
        """Anchors in chain order (optionally one owner's, or one experiment's)."""
        if not self.has_anchors():
            return iter(())
        where, args = [], []
        if owner_id is not None:
            where.append("owner_id = ?")
            args.append(owner_id)
        if experiment_id is not None:
            where.append("experiment_id = ?")
            args.append(experiment_id)
        sql = f"SELECT {_ANCHOR_COLUMNS} FROM anchors" + (f" WHERE {' AND '.join(where)}" if where else "") \
            + " ORDER BY sequence"
        return (StoredAnchor(*values) for values in self._db.execute(sql, args))

    def last_anchor(self, owner_id: str | None = None) -> StoredAnchor | None:
        """The latest anchor (of one owner, or of the whole chain)."""
        if not self.has_anchors():
            return None
        sql = f"SELECT {_ANCHOR_COLUMNS} FROM anchors" + (" WHERE owner_id = ?" if owner_id else "") \
            + " ORDER BY sequence DESC LIMIT 1"
        row = self._db.execute(sql, (owner_id,) if owner_id else ()).fetchone()
        return StoredAnchor(*row) if row else None

    def anchor_count(self, owner_id: str) -> int:
        if not self.has_anchors():
            return 0
        return self._db.execute("SELECT COUNT(*) FROM anchors WHERE owner_id = ?", (owner_id,)).fetchone()[0]

    # -- writing (inside write()) ----------------------------------------------

    def add_key(self, owner_id: str, fingerprint: str, public_key: bytes) -> None:
        self._require_write()
        self._db.execute("INSERT INTO keys (fingerprint, owner_id, public_key) VALUES (?, ?, ?)",
                         (fingerprint, owner_id, public_key))

    def insert(self, *, owner_id: str, sequence: int, run_id: str, round: int, kind: int,
               entry: bytes, signature: bytes, key_fingerprint: str) -> None:
        self._require_write()
        self._db.execute(
            "INSERT INTO entries (owner_id, sequence, run_id, round, kind, entry, signature, key_fingerprint) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (owner_id, sequence, run_id, round, kind, entry, signature, key_fingerprint))

    def insert_anchor(self, *, sequence: int, owner_id: str, owner_sequence: int, experiment_id: str, round: int,
                      entry: bytes, signature: bytes, key_fingerprint: str) -> None:
        self._require_write()
        if not self.has_anchors():
            raise LedgerError(f"{self.path} uses ledger schema {self.schema_version()}, which holds no anchors; "
                              "start a new ledger file")
        self._db.execute(
            "INSERT INTO anchors (sequence, owner_id, owner_sequence, experiment_id, round, entry, signature, "
            "key_fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (sequence, owner_id, owner_sequence, experiment_id, round, entry, signature, key_fingerprint))

    def _require_write(self) -> None:
        if not self._in_write:
            raise LedgerError("internal: ledger writes must happen inside store.write()")


class LedgerFile:
    """A ledger over one open store: closes it, and serves as a context manager."""

    _store: LedgerStore

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return self._store.path


def checkpoint(path: str | Path) -> None:
    """Fold a closed ledger's WAL into the file and remove the -wal and -shm files (nothing else is changed)."""
    db = sqlite3.connect(Path(path), isolation_level=None, timeout=BUSY_TIMEOUT_S)
    try:
        db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
