"""Opening an owner's ledger with its signing key, once per node process.

The owner's ledger is the record that counts (DESIGN principle 1).  Its path and key
come from the owner's policy (:mod:`privfl.privacy.policy`): in a deployment the
institution names them; a simulated owner keeps them in its folder of the
simulation's federation folder, enrolled before the run.

The node never creates a ledger (a wrong or moved path would be a fresh lifetime
budget), and before every round it checks the ledger against the head it last wrote
itself (:mod:`privfl.privacy.ledger.node_head`), whatever anchor the coordinator sends.
"""

from __future__ import annotations

import atexit
import json
from collections import OrderedDict
from pathlib import Path

from privfl.privacy.keys import load_private_key
from privfl.privacy.ledger import Entry, MissingLedger, OwnerLedger
from privfl.privacy.ledger.node_head import (
    NodeHead, NodeHeadError, head_problem, missing_ledger_problem, node_head_path, read_node_head, write_node_head,
)
from privfl.privacy.policy import OwnerPolicy


class NodeLedger(OwnerLedger):
    """An owner's ledger as its node appends to it: every entry written moves the node's head record on."""

    head_record: Path
    # fsync each record that moves on: at a deployed node (a round takes seconds; a power loss must not set
    # the record back behind an older copy of the ledger). Not in a simulation (the speed of thousands of
    # owner-rounds; nobody restores a simulated owner's ledger from a copy): there the record may lag.
    durable_head: bool = True
    _head_seen: tuple[bytes, NodeHead] | None = None  # the record's bytes -> the record they verified as

    def charge(self, *args, **kwargs) -> Entry:
        return self._recorded(super().charge(*args, **kwargs))

    def refuse(self, *args, **kwargs) -> Entry:
        return self._recorded(super().refuse(*args, **kwargs))

    def check_head(self) -> None:
        """Raise NodeHeadError unless the ledger holds the head this node last wrote (no record yet: record it)."""
        head = self._read_head()
        problem = head_problem(self, head)
        if problem:
            raise NodeHeadError(problem)
        if head is None:
            sequence, head_hash = self.head()
            write_node_head(self.head_record, self._signing_key, self.owner_id, sequence, head_hash, self.path)

    def _recorded(self, entry: Entry) -> Entry:
        """After the ledger committed: the record only ever moves forward (never ahead of the ledger).

        Fsynced at a deployed node; in a simulation not (``durable_head``): there the ledger's
        commit before it is the durable write of the round, and a record lost with the power is
        behind the ledger, which is allowed (but would let an older copy of the ledger alone pass).
        """
        known = self._read_head()
        if known is None or entry.sequence > known.sequence:
            written = write_node_head(self.head_record, self._signing_key, self.owner_id, entry.sequence, entry.hash,
                                      self.path, durable=self.durable_head)
            seen = _stamp(self.head_record)  # cached only if it is still the record just written
            self._head_seen = (seen, written) if seen is not None and _names(seen, written) else None
        return entry

    def _read_head(self) -> NodeHead | None:
        """The node's head record, read and its signature checked again only when the file changed.

        Reading and verifying it for every message and every charge was about a millisecond
        of each owner-round (docs/benchmarks.md, section 4).
        """
        stamp = _stamp(self.head_record)
        if stamp is not None and self._head_seen is not None and self._head_seen[0] == stamp:
            return self._head_seen[1]
        head = read_node_head(self.head_record, self.public_key)
        self._head_seen = (stamp, head) if stamp is not None and head is not None else None
        return head


def _names(raw: bytes, head: NodeHead) -> bool:
    """Whether the record bytes ``raw`` state ``head``'s sequence and hash (another process may have written since)."""
    try:
        data = json.loads(raw)
        return int(data["sequence"]) == head.sequence and data["hash"] == head.hash.hex()
    except (ValueError, KeyError, TypeError):
        return False


def _stamp(path: Path) -> bytes | None:
    """The record's bytes (a few hundred): what the cached verification is keyed by.

    Not (inode, size, mtime): inode numbers are reused by the next rename and mtime has the
    file system's granularity, so another node process on the same ledger could leave a newer
    record under the very stamp this process cached (tests/test_red_team_2.py).  Reading the
    bytes is cheap; verifying the signature is what the cache saves.
    """
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


_OPEN: OrderedDict[tuple[str, Path, Path], tuple[NodeLedger, int]] = OrderedDict()  # least recently used first


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


def open_owner_ledger(policy: OwnerPolicy, *, simulated: bool = False) -> NodeLedger:
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
        opened, inode = _OPEN[cache_key]
        if _inode(ledger) == inode:
            return _checked(opened)
        _OPEN.pop(cache_key)[0].close()  # the file was deleted or replaced under the open connection
    while len(_OPEN) >= max_open_ledgers():
        _OPEN.popitem(last=False)[1][0].close()
    signing_key = load_private_key(key, policy.passphrase())
    record = node_head_path(key)
    try:
        opened = NodeLedger.open(ledger, policy.owner_id, signing_key, create=False)
    except MissingLedger:
        raise MissingLedger(missing_ledger_problem(ledger, read_node_head(record, signing_key.public_key()))) from None
    opened.head_record = record
    opened.durable_head = not simulated
    _OPEN[cache_key] = (opened, _inode(ledger))
    return _checked(opened)


def _inode(path: Path) -> int:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return -1


def _checked(ledger: NodeLedger) -> NodeLedger:
    ledger.check_head()
    return ledger


def close_owner_ledgers() -> None:
    """Close every ledger this process holds open (as a process exit or restart would)."""
    while _OPEN:
        _OPEN.popitem()[1][0].close()


atexit.register(close_owner_ledgers)  # a ClientApp process that exits leaves each ledger as one file
