"""The bridge an owner sends with a receipt, and what of it a coordinator may see.

A coordinator that anchored an owner's head at entry ``a`` receives, with the receipt
at entry ``r``, the owner's entries ``a+1 .. r-1``, so it can check that the chain
continues its anchor.  An owner's ledger holds the releases of *every* federation it
takes part in; the whole of them would tell one coordinator the experiments,
purposes and events the owner ran for others (and a coordinator that sends anchor 0
would get the owner's whole history).  So the bridge carries in full only the entries
of the experiment the coordinator is asking about, written for the federation the node
serves (:func:`concerns`; the federation comes from the owner's own policy); every other
entry travels *elided*: its sequence, its previous hash and its own hash, no content.

The chain still links: each entry's ``previous_hash`` names the entry before it, so
the coordinator checks that the hashes run unbroken from its anchor through the
elided entries to the receipt.  What it cannot check is that an elided entry's
content really hashes to the hash stated (it never sees the content); the owner's
next signed entry commits to that hash, so an auditor holding the owner's ledger
checks it (``privfl ledger verify --registry``).  What an elided entry still shows:
that the owner wrote an entry there (sequence numbers are contiguous) and its hash.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from privfl.privacy.ledger.chain import HASH_SIZE
from privfl.privacy.ledger.entry import Entry
from privfl.privacy.ledger.errors import ReceiptRejected

_ELIDED = struct.Struct(f">Q{HASH_SIZE}s{HASH_SIZE}s")  # sequence, previous_hash, hash


@dataclass(frozen=True)
class ElidedEntry:
    """An owner's entry sent without its content: where it sits in the chain, nothing else."""

    owner_id: str
    sequence: int
    previous_hash: bytes
    hash: bytes

    def to_bytes(self) -> bytes:
        return _ELIDED.pack(self.sequence, self.previous_hash, self.hash)

    @classmethod
    def of(cls, entry: Entry) -> ElidedEntry:
        return cls(entry.owner_id, entry.sequence, entry.previous_hash, entry.hash)

    @classmethod
    def from_bytes(cls, owner_id: str, raw: bytes) -> ElidedEntry:
        if not isinstance(raw, bytes) or len(raw) != _ELIDED.size:
            raise ReceiptRejected(f"receipt rejected: an elided bridge entry must be {_ELIDED.size} bytes")
        sequence, previous_hash, own_hash = _ELIDED.unpack(raw)
        return cls(owner_id, sequence, previous_hash, own_hash)


def concerns(entry: Entry, run_ids: Iterable[str], federation: str) -> bool:
    """Whether a coordinator of ``federation`` asking about ``run_ids`` (its experiment's charge keys) may see
    ``entry`` in full: the experiment's own entries, written for this same federation."""
    return entry.run_id in set(run_ids) and entry.federation == federation


def split_bridge(entries: Iterable[Entry], run_ids: Iterable[str],
                 federation: str) -> tuple[list[bytes], list[bytes]]:
    """(full signed entries, elided entries) of a bridge, for a coordinator of ``federation`` asking about
    ``run_ids``."""
    run_ids = set(run_ids)
    full, elided = [], []
    for entry in entries:
        if concerns(entry, run_ids, federation):
            full.append(entry.signed_bytes())
        else:
            elided.append(ElidedEntry.of(entry).to_bytes())
    return full, elided
