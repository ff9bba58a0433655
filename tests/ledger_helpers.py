"""Helpers shared by the ledger tests: build small real ledgers quickly."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from privfl.privacy.events import PoissonSubsampledGaussian
from privfl.privacy.keys import generate_key
from privfl.privacy.ledger import OwnerLedger, update_hash

DELTA = 1e-5
RUN = "run-1"


def charge(ledger: OwnerLedger, round: int, event: PoissonSubsampledGaussian | None = None, *,
           run: str = RUN, accountant: str = "rdp", budget: float = 1000.0, **kwargs):
    event = event or PoissonSubsampledGaussian(1.5, 0.05, 20)
    return ledger.charge(run, round, event, clipping_norm=1.0, delta=DELTA, epsilon_budget=budget,
                         accountant=accountant, purpose="train test model",
                         update_hash=update_hash(f"{run}:{round}".encode()), **kwargs)


def build_ledger(path: Path, rounds: int = 5, *, owner: str = "hospital-a", key=None,
                 accountant: str = "rdp", refusal: bool = True):
    """A closed owner ledger with ``rounds`` charges (varied events) and one refusal; returns the key."""
    key = key or generate_key()
    with OwnerLedger.open(path, owner, key) as ledger:
        for r in range(rounds):
            charge(ledger, r, PoissonSubsampledGaussian(1.2 + 0.1 * (r % 3), 0.04, 10 + r), accountant=accountant)
            if refusal and r == rounds // 2:
                ledger.refuse(RUN, 100 + r, "would exceed the budget", delta=DELTA, epsilon_budget=1000.0,
                              accountant=accountant, event=PoissonSubsampledGaussian(0.5, 0.5, 100))
    return key


def raw(path: Path) -> sqlite3.Connection:
    """A plain SQLite connection, as someone editing the file by hand would use."""
    return sqlite3.connect(path, isolation_level=None)


def without_guards(path: Path, *statements: tuple[str, tuple]) -> None:
    """Run statements with the append-only triggers dropped, then put the triggers back.

    Models an attacker with write access to the file who also restores the schema,
    so verify has to catch the edit from signatures and the chain alone.
    """
    db = raw(path)
    try:
        triggers = db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall()
        for name, _ in triggers:
            db.execute(f"DROP TRIGGER {name}")
        for sql, args in statements:
            db.execute(sql, args)
        for _, sql in triggers:
            db.execute(sql)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
