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


# ---- delta < 1/n: the one home of the rule ------------------------------------------


def max_rows_for_delta(delta: float) -> int:
    """The most rows ``n`` for which ``delta < 1/n`` holds (0 when none does)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    rows = math.floor(1.0 / delta)
    while rows > 0 and not delta < 1.0 / rows:
        rows -= 1
    while delta < 1.0 / (rows + 1):
        rows += 1
    return rows


def largest_delta_below(num_rows: int) -> float:
    """A round figure (two significant digits) strictly below ``1/num_rows``."""
    if num_rows < 1:
        raise ValueError(f"num_rows must be >= 1, got {num_rows}")
    bound = 1.0 / num_rows
    exponent = math.floor(math.log10(bound)) - 1
    mantissa = math.ceil(round(bound / 10.0**exponent, 9)) - 1
    value = float(f"{mantissa}e{exponent}")
    while value >= bound:  # float rounding at the edge
        mantissa -= 1
        value = float(f"{mantissa}e{exponent}")
    return value


def delta_problem(delta: float, num_rows: int) -> str | None:
    """Why ``delta`` does not suit ``num_rows`` records, or None when ``delta < 1/n``.

    A delta of 1/n or more admits a mechanism that publishes one whole record
    outright, so the rule fails when a file has *too many* rows for its delta.
    """
    if num_rows < 1 or delta < 1.0 / num_rows:
        return None
    return (f"delta {delta:g} is not below 1/n = 1/{num_rows:,} for {num_rows:,} records: "
            f"use delta below {largest_delta_below(num_rows):.2g} (well below is safer); "
            f"delta {delta:g} suits at most {max_rows_for_delta(delta):,} records")
