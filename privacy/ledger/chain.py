"""The hash chain: each entry holds the sha256 of its predecessor's canonical bytes.

The canonical bytes are the serialized ``LedgerEntry`` exactly as stored in
``SignedEntry.entry``; they are hashed as stored, never re-serialized.  An owner's
first entry (sequence 1) holds ``GENESIS_HASH``, 32 zero bytes.
"""

from __future__ import annotations

import hashlib

GENESIS_HASH = bytes(32)
HASH_SIZE = 32


def entry_hash(entry_bytes: bytes) -> bytes:
    """sha256 of an entry's canonical bytes: what the next entry's previous_hash holds."""
    return hashlib.sha256(entry_bytes).digest()


def expected_previous_hash(previous_entry_bytes: bytes | None) -> bytes:
    """What the previous_hash of the entry after ``previous_entry_bytes`` must be."""
    return GENESIS_HASH if previous_entry_bytes is None else entry_hash(previous_entry_bytes)


def update_hash(update: bytes) -> bytes:
    """sha256 of a released update's bytes (what a charge's update_hash holds)."""
    return hashlib.sha256(update).digest()
