"""What travels between ServerApp and ClientApp besides the weights, in one place.

A train reply carries three records: ``arrays`` (the update), ``metrics`` (numbers
FedAvg may average, weighted by ``num-examples``) and ``privacy`` (the owner's signed
ledger entry for the round: who trained, under which DP event, at what cumulative
epsilon; never averaged).  A refusal carries only ``privacy``, with the signed
refusal entry.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ConfigRecord

ARRAYS = "arrays"
METRICS = "metrics"
TRAIN_CONFIG = "config"
PRIVACY = "privacy"

TRAINED = "trained"
REFUSED = "refused"


def update_digest(state_dict: Mapping[str, Any]) -> bytes:
    """sha256 over a state dict's names, dtypes, shapes and bytes, in key order.

    The owner's ledger entry holds this digest of the update it released; the server
    recomputes it from the arrays it received, so an update cannot be swapped for
    another after it was charged.
    """
    digest = hashlib.sha256()
    for name, tensor in state_dict.items():
        array = tensor.detach().cpu().contiguous().numpy() if hasattr(tensor, "detach") else np.asarray(tensor)
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.digest()


SIGNED_ENTRY = "signed-entry"  # bytes of the owner's SignedEntry (protos/ledger.proto)
OWNER_ID = "owner-id"
NON_PRIVATE = "non-private"


def signed_receipt(signed_entry: bytes) -> ConfigRecord:
    """What an owner sends about a round: its signed ledger entry, nothing else to trust."""
    return ConfigRecord({SIGNED_ENTRY: signed_entry})


def non_private_receipt(owner_id: str) -> ConfigRecord:
    """An owner that allowed non-private training: no DP event, so no ledger entry."""
    return ConfigRecord({OWNER_ID: owner_id, NON_PRIVATE: True})


@dataclass(frozen=True)
class PrivacyReceipt:
    """The server's reading of an owner's round, taken from its verified ledger entry."""

    owner_id: str
    status: str  # TRAINED or REFUSED
    epsilon: float  # cumulative after this round (or spent so far, when refused); inf if non-private
    delta: float
    accountant: str
    noise_multiplier: float = 0.0
    sample_rate: float = 0.0
    steps: int = 0
    reason: str = ""

    @classmethod
    def from_entry(cls, entry: Any) -> PrivacyReceipt:
        """From a verified :class:`privfl.privacy.ledger.Entry` (charge or refusal)."""
        event = entry.event if entry.is_charge else None
        return cls(
            owner_id=entry.owner_id, status=TRAINED if entry.is_charge else REFUSED,
            epsilon=entry.cumulative_epsilon, delta=entry.delta, accountant=entry.accountant,
            noise_multiplier=getattr(event, "noise_multiplier", 0.0),
            sample_rate=getattr(event, "sample_rate", 0.0), steps=getattr(event, "steps", 0),
            reason=entry.refusal_reason,
        )

    @classmethod
    def non_private(cls, owner_id: str) -> PrivacyReceipt:
        return cls(owner_id=owner_id, status=TRAINED, epsilon=math.inf, delta=0.0, accountant="")
