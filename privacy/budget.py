"""An owner's budget and the decision whether its next release still fits.

The check is made on the *projected* total: the owner's past events composed with
the event the next round would add.  A release is allowed only when that total is
within budget, so a budget is never crossed, not even by one round.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from privfl.privacy.accountants import Accountant
from privfl.privacy.events import LEAST_NOISE, DpEvent, below_least_noise


@dataclass(frozen=True)
class PrivacyBudget:
    """A lifetime (epsilon, delta) budget for one data owner."""

    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueError(f"epsilon budget must be finite and > 0, got {self.epsilon}")
        check_delta(self.delta)


# ---- the one home of each budget rule ----------------------------------------------------


def check_delta(delta: float) -> float:
    """0 < delta < 1, or ValueError: a delta of 0 is pure DP (not what any accountant here states), 1 is nothing."""
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    return float(delta)


def fits_budget(epsilon: float, budget: float) -> bool:
    """Whether a (projected or spent) epsilon is within a budget: ``epsilon <= budget``, with no margin.

    The owner's client refuses, its ledger refuses to charge, and the report and the
    verifier call an owner over budget, all by this one comparison: a budget is never
    crossed, not even by a rounding difference in the owner's favour.
    """
    return epsilon <= budget


def noise_problem(noise_multiplier: float, minimum: float, what: str = "noise multiplier") -> str | None:
    """Why a requested noise multiplier is refused under an owner's minimum (min-noise-multiplier) or privfl's
    floor (:data:`~privfl.privacy.events.LEAST_NOISE`), or None: the one minimum-noise check an owner makes."""
    if not noise_multiplier > 0:
        return f"the request asks for {what} {noise_multiplier:g}: no privacy guarantee"
    if below_least_noise(noise_multiplier):
        return (f"the request asks for {what} {noise_multiplier:g}: below {LEAST_NOISE:g}, the least privfl "
                "composes (such a release protects nothing)")
    if noise_multiplier < minimum:
        return (f"the request asks for {what} {noise_multiplier:g}; this owner's policy requires at least "
                f"{minimum:g} (min-noise-multiplier)")
    return None


@dataclass(frozen=True)
class UnitSpend:
    """What one privacy unit of an owner has spent: its charges composed alone, against its own budget."""

    unit: str
    accountant: str
    delta: float
    epsilon: float
    budget: float
    charges: int
    refusals: int

    @property
    def remaining(self) -> float:
        return max(0.0, self.budget - self.epsilon)

    @property
    def within(self) -> bool:
        return fits_budget(self.epsilon, self.budget)


def unit_spend(entries: Sequence, unit: str, accountant: str = "", run_id: str | None = None, *,
               delta: float | None = None, compose: Callable[[str, Sequence[DpEvent], float], float | None] | None = None,
               ) -> UnitSpend | None:
    """Spent per privacy unit, the one definition: the unit's charges (of ``run_id`` alone, if given) composed by
    ``accountant`` at ``delta`` against the unit's budget; each defaults to what the unit's latest entry (a charge
    or a refusal: the owner's policy as it last applied it) states.

    Record-level and owner-level charges are different guarantees and never composed together.  None when the
    owner has no entry of the unit.  ``compose``: how events are composed (default: the named accountant,
    :func:`privfl.privacy.ledger.owner.compute_epsilon`; a report passes its cache of the same figures).  The
    owner's ledger, its ledger service (GetBudget), the audit and the report all ask here.
    """
    from privfl.privacy.ledger.entry import unit_of
    from privfl.privacy.ledger.owner import compute_epsilon

    mine = [e for e in entries if unit_of(e) == unit]
    if not mine:
        return None
    charges = [e for e in mine if e.is_charge]
    latest = mine[-1]
    chosen = accountant or latest.accountant
    at = latest.delta if delta is None else delta
    counted = [e.event for e in charges if run_id is None or e.run_id == run_id]
    epsilon = (compose or compute_epsilon)(chosen, counted, at) if counted else 0.0
    return UnitSpend(unit, chosen, at, epsilon, latest.epsilon_budget, len(charges), len(mine) - len(charges))


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
        allowed=fits_budget(projected, budget.epsilon) and (not max_round_epsilon or fits_budget(alone, max_round_epsilon)),
        projected_epsilon=projected,
        budget=budget,
        accountant=accountant.name,
        round_epsilon=alone,
        max_round_epsilon=max_round_epsilon,
    )


# ---- delta < 1/n: the one home of the rule ------------------------------------------


def max_rows_for_delta(delta: float) -> int:
    """The most rows ``n`` for which ``delta < 1/n`` holds (0 when none does)."""
    check_delta(delta)
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
