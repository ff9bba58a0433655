"""The node's own count of the models its owner evaluated: what bounds evaluation answers.

An evaluation answer is released without differential privacy (the policy says so:
``answer-evaluation``), so the only bound on what answers reveal is how many distinct
models the owner scores on its evaluation data.  The count must not be one the
coordinator can reset: experiment ids and rounds are the coordinator's to choose, so it
is kept per owner, across all experiments, in a SQLite file beside the owner's ledger
(``<ledger>.evaluations.db``), and an answer is counted (committed, synchronous) before
it leaves, as a charge is.  Re-evaluating a model already counted is free: the answer
is a function of the model and the data, so it tells nothing new.
"""

from __future__ import annotations

import atexit
import sqlite3
import time
from collections import OrderedDict
from pathlib import Path

_SCHEMA = """CREATE TABLE IF NOT EXISTS evaluated (
    model_digest TEXT PRIMARY KEY, experiment_id TEXT NOT NULL, server_round INTEGER NOT NULL,
    answered_at REAL NOT NULL)"""


def evaluation_record_path(ledger_path: str | Path) -> Path:
    ledger_path = Path(ledger_path)
    return ledger_path.with_name(ledger_path.name + ".evaluations.db")


# Connections kept open per process, least recently used first.  Opening, committing and
# closing a rollback-journal database cost five fdatasyncs an answer (journal, database,
# journal deletion; 30 ms under load here); an open WAL connection with synchronous = FULL
# commits with one, and is just as durable: the count is on disk before the answer leaves.
_OPEN: OrderedDict[Path, tuple[sqlite3.Connection, int]] = OrderedDict()
_MAX_OPEN = 256


def _connection(path: Path) -> sqlite3.Connection:
    """The open connection to ``path`` (reopened if the file was replaced or removed meanwhile)."""
    inode = path.stat().st_ino if path.exists() else -1
    if path in _OPEN:
        connection, known = _OPEN[path]
        if known == inode:
            _OPEN.move_to_end(path)
            return connection
        _OPEN.pop(path)[0].close()
    while len(_OPEN) >= _MAX_OPEN:
        _OPEN.popitem(last=False)[1][0].close()
    connection = sqlite3.connect(path, timeout=60.0, isolation_level=None, check_same_thread=False)
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute(_SCHEMA)
    except BaseException:
        connection.close()
        raise
    _OPEN[path] = (connection, path.stat().st_ino)
    return connection


def close_evaluation_records() -> None:
    """Close every evaluation record this process holds open."""
    while _OPEN:
        _OPEN.popitem()[1][0].close()


def admit_evaluation(ledger_path: str | Path, model_digest: str, experiment_id: str, server_round: int,
                     limit: int) -> str | None:
    """Count this model's evaluation before it is answered; the reason to refuse when the limit is reached."""
    connection = _connection(evaluation_record_path(ledger_path).resolve())
    connection.execute("BEGIN IMMEDIATE")
    try:
        if connection.execute("SELECT 1 FROM evaluated WHERE model_digest = ?", (model_digest,)).fetchone():
            connection.execute("COMMIT")
            return None
        (count,) = connection.execute("SELECT COUNT(*) FROM evaluated").fetchone()
        if count >= limit:
            connection.execute("COMMIT")
            return (f"this owner has evaluated {count} distinct models, the most its policy allows "
                    f"(max-evaluations = {limit}): evaluation answers are released without DP")
        connection.execute("INSERT INTO evaluated VALUES (?, ?, ?, ?)",
                           (model_digest, experiment_id, server_round, time.time()))
        connection.execute("COMMIT")
        return None
    except BaseException:
        connection.execute("ROLLBACK")
        raise


def evaluated_models(ledger_path: str | Path) -> int:
    """How many distinct models this owner has evaluated (0 if it never answered)."""
    path = evaluation_record_path(ledger_path)
    if not path.exists():
        return 0
    connection = sqlite3.connect(path)
    try:
        connection.execute(_SCHEMA)
        return int(connection.execute("SELECT COUNT(*) FROM evaluated").fetchone()[0])
    finally:
        connection.close()


atexit.register(close_evaluation_records)  # each record left as one file (WAL checkpointed)
