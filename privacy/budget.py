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
    round_epsilon: float = 0.0  # the next release's epsilon on its own
    max_round_epsilon: float = 0.0  # the owner's per-round cap (0: none)

    @property
    def reason(self) -> str:
        if self.max_round_epsilon and self.round_epsilon > self.max_round_epsilon:
            return (f"next release alone would cost epsilon {self.round_epsilon:.4g} > the per-round limit "
                    f"{self.max_round_epsilon:g} (max-round-epsilon) at delta={self.budget.delta:g} "
                    f"({self.accountant})")
        verdict, relation = ("fits", "<=") if self.allowed else ("would exceed", ">")
        return (
            f"next release {verdict} the budget: epsilon {self.projected_epsilon:.4g} {relation} "
            f"{self.budget.epsilon:g} at delta={self.budget.delta:g} ({self.accountant})"
        )


def decide_next_release(
    spent: Sequence[DpEvent], planned: DpEvent, budget: PrivacyBudget, accountant: Accountant,
    *, max_round_epsilon: float = 0.0,
) -> BudgetDecision:
    """Allowed only when the projected lifetime epsilon fits the budget and, if the owner caps
    rounds, the release alone fits the cap."""
    projected = accountant.epsilon([*spent, planned], budget.delta)
    alone = accountant.epsilon([planned], budget.delta) if max_round_epsilon else 0.0
    return BudgetDecision(
        allowed=projected <= budget.epsilon and (not max_round_epsilon or alone <= max_round_epsilon),
        projected_epsilon=projected,
        budget=budget,
        accountant=accountant.name,
        round_epsilon=alone,
        max_round_epsilon=max_round_epsilon,
    )
