"""Opening an owner's ledger with its signing key, once per node process.

The owner's ledger is the record that counts (DESIGN principle 1).  Its path and key
come from the owner's policy (:mod:`privfl.privacy.policy`): in a deployment the
institution names them; a simulated owner keeps them in its folder of the
simulation's federation folder, enrolled before the run.
"""

from __future__ import annotations

import atexit
from collections import OrderedDict
from pathlib import Path

from privfl.privacy.keys import load_private_key
from privfl.privacy.ledger import OwnerLedger
from privfl.privacy.policy import OwnerPolicy

_OPEN: OrderedDict[tuple[str, Path, Path], OwnerLedger] = OrderedDict()  # least recently used first


def max_open_ledgers() -> int:
    """How many ledgers one process keeps open: a share of its file-descriptor limit.

    Each open ledger holds three descriptors (the database, its ``-wal`` and ``-shm``).  A
    simulation worker serves thousands of owners in turn; keeping all of them open ran
    out of descriptors at about 3,600 owners per worker (10,000 owners on two workers),
    and every owner after that refused ("unable to open database file").  Beyond the
    limit the least recently used ledger is closed (WAL checkpointed) and reopened when
    its owner comes back.
    """
    try:
        import resource
    except ImportError:  # not POSIX
        return 256
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, min(1024, soft // 8))


def open_owner_ledger(policy: OwnerPolicy) -> OwnerLedger:
    """The owner's ledger, kept open for the life of this process (up to :func:`max_open_ledgers` of them).

    A node process serves many rounds; reopening the ledger each round costs a schema
    check and a WAL checkpoint (an fsync) on every close.  Keeping it open is safe:
    every append takes SQLite's write lock and re-reads the chain head, so other
    processes appending to the same file are seen.
    """
    ledger, key = Path(policy.ledger).resolve(), Path(policy.signing_key).resolve()
    cache_key = (policy.owner_id, ledger, key)
    if cache_key in _OPEN:
        _OPEN.move_to_end(cache_key)
        return _OPEN[cache_key]
    while len(_OPEN) >= max_open_ledgers():
        _OPEN.popitem(last=False)[1].close()
    signing_key = load_private_key(key, policy.passphrase())
    ledger.parent.mkdir(parents=True, exist_ok=True)
    _OPEN[cache_key] = OwnerLedger.open(ledger, policy.owner_id, signing_key)
    return _OPEN[cache_key]


def close_owner_ledgers() -> None:
    """Close every ledger this process holds open (as a process exit or restart would)."""
    while _OPEN:
        _OPEN.popitem()[1].close()


atexit.register(close_owner_ledgers)  # a ClientApp process that exits leaves each ledger as one file
