"""An owner's signed answer to the coordinator's query: proof that a node holds the owner's key.

Before a node is asked to train, the coordinator asks it which owner it serves.  Any
registered node could answer with any owner's id, so the answer binds the node to that
owner only when it is signed by the owner's ledger key over a fresh nonce the
coordinator put in the query (and the experiment id, so it cannot be replayed into
another query or experiment).  Until then the node speaks for no owner: it is sent no
owner's anchored head, and what it says (an unsigned refusal, an evaluation) is kept
under the node alone.

The signed message is ``ANSWER_CONTEXT + canonical bytes``: the context keeps a
signature over a query answer from being valid as a ledger entry (whose context is
:data:`privfl.privacy.ledger.signing.SIGNING_CONTEXT`), and the other way round.
"""

from __future__ import annotations

import json

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ANSWER_CONTEXT = b"privfl.coordinator-query.v1.OwnerAnswer\x00"
NONCE_BYTES = 32  # the coordinator's nonce: 32 random bytes, sent as 64 hex digits


def answer_bytes(experiment_id: str, nonce: str, owner_id: str, head_sequence: int, head_hash: str) -> bytes:
    """The canonical bytes an owner signs in answer to a query (one JSON array, no whitespace)."""
    return ANSWER_CONTEXT + json.dumps([experiment_id, nonce, owner_id, int(head_sequence), head_hash],
                                       separators=(",", ":"), ensure_ascii=True).encode()


def sign_answer(key: Ed25519PrivateKey, experiment_id: str, nonce: str, owner_id: str, head_sequence: int,
                head_hash: str) -> bytes:
    return key.sign(answer_bytes(experiment_id, nonce, owner_id, head_sequence, head_hash))


def answer_problem(key: Ed25519PublicKey, signature: bytes, experiment_id: str, nonce: str, owner_id: str,
                   head_sequence: int, head_hash: str) -> str | None:
    """None when ``signature`` is ``owner_id``'s key's signature over this answer; otherwise what is wrong."""
    try:
        key.verify(signature, answer_bytes(experiment_id, nonce, owner_id, head_sequence, head_hash))
    except InvalidSignature:
        return f"its answer is not signed by owner {owner_id}'s registered key for this query"
    return None
