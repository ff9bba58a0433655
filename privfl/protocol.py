"""What travels between ServerApp and ClientApp besides the weights, in one place.

A train reply carries three records: ``arrays`` (the update), ``metrics`` (numbers
FedAvg may average, weighted by ``num-examples``) and ``privacy`` (per-owner facts
that must never be averaged: who trained, under which DP event, and the owner's
cumulative epsilon).  A refusal carries only ``privacy``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from flwr.app import ConfigRecord

ARRAYS = "arrays"
METRICS = "metrics"
TRAIN_CONFIG = "config"
PRIVACY = "privacy"

TRAINED = "trained"
REFUSED = "refused"


@dataclass(frozen=True)
class PrivacyReceipt:
    """An owner's account of one round: what it released, or why it refused."""

    owner_id: str
    status: str  # TRAINED or REFUSED
    epsilon: float  # cumulative after this round (or spent so far, when refused); inf if non-private
    delta: float
    accountant: str
    noise_multiplier: float = 0.0
    sample_rate: float = 0.0
    steps: int = 0
    reason: str = ""

    def to_record(self) -> ConfigRecord:
        values = asdict(self)
        # ConfigRecord has no infinity; a non-private release is recorded as -1.
        values["epsilon"] = -1.0 if math.isinf(self.epsilon) else self.epsilon
        return ConfigRecord(values)

    @classmethod
    def from_record(cls, record: Any) -> PrivacyReceipt:
        values = {f.name: record[f.name] for f in fields(cls)}
        if values["epsilon"] < 0:
            values["epsilon"] = math.inf
        return cls(**values)
