"""Ed25519 signatures over an entry's canonical bytes.

The signed message is ``SIGNING_CONTEXT + entry_bytes``: the context string keeps a
signature made for a ledger entry from being valid for anything else the owner's key
signs, and the other way round.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from privfl.privacy.keys import fingerprint
from privfl.protos import ledger_pb2

SIGNING_CONTEXT = b"privfl.ledger.v1.LedgerEntry\x00"


def sign_entry(entry_bytes: bytes, key: Ed25519PrivateKey) -> ledger_pb2.SignedEntry:
    return ledger_pb2.SignedEntry(
        entry=entry_bytes,
        signature=key.sign(SIGNING_CONTEXT + entry_bytes),
        key_fingerprint=fingerprint(key),
    )


def signature_problem(signed: ledger_pb2.SignedEntry, key: Ed25519PublicKey) -> str | None:
    """None when ``signed`` carries a valid signature by ``key``; otherwise what is wrong."""
    expected = fingerprint(key)
    if signed.key_fingerprint != expected:
        return (f"signed by key {signed.key_fingerprint[:16] or '(none)'}..., "
                f"expected the owner's key {expected[:16]}...")
    try:
        key.verify(signed.signature, SIGNING_CONTEXT + signed.entry)
    except InvalidSignature:
        return "signature does not match the entry bytes (entry or signature altered)"
    return None
