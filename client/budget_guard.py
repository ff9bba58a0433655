"""The owner's guard: no release that would take the owner past its budget.

The guard keeps the owner's spent DP events and answers one question before every
round: does the next release still fit?  It charges a round only once (a retried
round of the same run is not charged again).  Until the ledger lands, the spend is
kept in Flower's per-node ``context.state``, which lives as long as the node.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, RecordDict

from privfl.privacy.accountants import Accountant
from privfl.privacy.budget import BudgetDecision, PrivacyBudget, decide_next_release
from privfl.privacy.events import PoissonSubsampledGaussian

_STATE_KEY = "privfl.spent"


class BudgetGuard:
    def __init__(self, state: RecordDict, budget: PrivacyBudget, accountant: Accountant) -> None:
        self.budget = budget
        self.accountant = accountant
        if _STATE_KEY not in state:
            state[_STATE_KEY] = ConfigRecord(
                {"release": [], "noise-multiplier": [], "sample-rate": [], "steps": []}
            )
        self._spent: ConfigRecord = state[_STATE_KEY]

    def events(self) -> list[PoissonSubsampledGaussian]:
        s = self._spent
        return [
            PoissonSubsampledGaussian(float(n), float(q), int(k))
            for n, q, k in zip(s["noise-multiplier"], s["sample-rate"], s["steps"], strict=True)
        ]

    def is_charged(self, release: str) -> bool:
        return release in self._spent["release"]

    def decide(self, planned: PoissonSubsampledGaussian) -> BudgetDecision:
        return decide_next_release(self.events(), planned, self.budget, self.accountant)

    def spent_epsilon(self) -> float:
        return self.accountant.epsilon(self.events(), self.budget.delta)

    def charge(self, release: str, event: PoissonSubsampledGaussian) -> None:
        """Record ``event`` under the id ``release`` (run + round); a repeat is a no-op."""
        if self.is_charged(release):
            return
        s = self._spent
        # ConfigRecord lists are replaced, not mutated in place, so the record stays valid.
        s["release"] = [*s["release"], release]
        s["noise-multiplier"] = [*s["noise-multiplier"], float(event.noise_multiplier)]
        s["sample-rate"] = [*s["sample-rate"], float(event.sample_rate)]
        s["steps"] = [*s["steps"], int(event.steps)]
