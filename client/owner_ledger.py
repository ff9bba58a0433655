"""Opening an owner's ledger with its signing key, once per node process.

The owner's ledger is the record that counts (DESIGN principle 1).  Its path and key
come from the owner's policy (:mod:`privfl.privacy.policy`): in a deployment the
institution names them; a simulated owner keeps them in its folder of the
simulation's federation folder, enrolled before the run.
"""

from __future__ import annotations

import atexit
from pathlib import Path

from privfl.privacy.keys import load_private_key
from privfl.privacy.ledger import OwnerLedger
from privfl.privacy.policy import OwnerPolicy

_OPEN: dict[tuple[str, Path, Path], OwnerLedger] = {}


def open_owner_ledger(policy: OwnerPolicy) -> OwnerLedger:
    """The owner's ledger, kept open for the life of this process.

    A node process serves many rounds; reopening the ledger each round costs a schema
    check and a WAL checkpoint (an fsync) on every close.  Keeping it open is safe:
    every append takes SQLite's write lock and re-reads the chain head, so other
    processes appending to the same file are seen.
    """
    ledger, key = Path(policy.ledger).resolve(), Path(policy.signing_key).resolve()
    cache_key = (policy.owner_id, ledger, key)
    if cache_key not in _OPEN:
        signing_key = load_private_key(key, policy.passphrase())
        ledger.parent.mkdir(parents=True, exist_ok=True)
        _OPEN[cache_key] = OwnerLedger.open(ledger, policy.owner_id, signing_key)
    return _OPEN[cache_key]


def close_owner_ledgers() -> None:
    """Close every ledger this process holds open (as a process exit or restart would)."""
    while _OPEN:
        _OPEN.popitem()[1].close()


atexit.register(close_owner_ledgers)  # a ClientApp process that exits leaves each ledger as one file
