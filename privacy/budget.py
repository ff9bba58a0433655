"""An owner's budget and the decision whether its next release still fits.

The check is made on the *projected* total: the owner's past events composed with
the event the next round would add.  A release is allowed only when that total is
within budget, so a budget is never crossed, not even by one round.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from privfl.privacy.accountants import Accountant
from privfl.privacy.events import DpEvent


@dataclass(frozen=True)
class PrivacyBudget:
    """A lifetime (epsilon, delta) budget for one data owner."""

    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueError(f"epsilon budget must be finite and > 0, got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")


@dataclass(frozen=True)
class BudgetDecision:
    allowed: bool
    projected_epsilon: float  # epsilon after the next release, if it were made
    budget: PrivacyBudget
    accountant: str

    @property
    def reason(self) -> str:
        verdict, relation = ("fits", "<=") if self.allowed else ("would exceed", ">")
        return (
            f"next release {verdict} the budget: epsilon {self.projected_epsilon:.4g} {relation} "
            f"{self.budget.epsilon:g} at delta={self.budget.delta:g} ({self.accountant})"
        )


def decide_next_release(
    spent: Sequence[DpEvent], planned: DpEvent, budget: PrivacyBudget, accountant: Accountant
) -> BudgetDecision:
    projected = accountant.epsilon([*spent, planned], budget.delta)
    return BudgetDecision(
        allowed=projected <= budget.epsilon,
        projected_epsilon=projected,
        budget=budget,
        accountant=accountant.name,
    )
