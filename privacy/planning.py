"""Per-owner noise planning: each owner derives its own noise from a privacy target.

One noise multiplier for every owner lets the owner with the highest sampling rate
(the smallest data set) set the noise for all: under label skew the large owners end
far below their target while paying the small owner's noise.  So a coordinator may
send a *target* instead (``target-epsilon``: the epsilon this experiment may cost an
owner, over its schedule of rounds), and each owner plans the least noise multiplier
that keeps its own release within it, from its own records (its sampling rate
q = 1 / ceil(n / batch) and steps per round), the schedule, and its accountant:

    sigma = max(sigma for the target alone, sigma for what is left of its lifetime budget)

The second term composes the owner's earlier spend (its charges of *other*
experiments, read from its ledger) with the planned rounds, so an owner with little
budget left plans more noise rather than refusing half-way.  The plan depends only
on the ledger's state before the experiment, so every round of the experiment finds
the same sigma.  Bisection stops within 0.1% of sigma, which leaves an owner less
than 1% below its target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from privfl.privacy.accountants import get_accountant
from privfl.privacy.budget import fits_budget
from privfl.privacy.events import DpEvent, PoissonSubsampledGaussian, merge_repeats


def dp_sgd_round(noise_multiplier: float, records: int, batch_size: int, local_epochs: int
                 ) -> PoissonSubsampledGaussian:
    """The DP event of one DP-SGD round, the one home of that rule.

    Opacus's DPDataLoader samples each record with rate 1 / len(data_loader), i.e.
    1 / ceil(n / batch_size), and takes len(data_loader) steps per epoch.  The client's
    plan, the owner's noise planning and the coordinator's check of a receipt all ask here.
    """
    batches = max(1, math.ceil(records / batch_size))
    return PoissonSubsampledGaussian(float(noise_multiplier), 1.0 / batches, local_epochs * batches)


@dataclass(frozen=True)
class NoisePlan:
    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    rounds: int
    experiment_epsilon: float  # what the planned rounds cost on their own
    lifetime_epsilon: float  # the earlier spend composed with the planned rounds
    limited_by: str  # "target" or "budget": which bound set the noise

    @property
    def round_event(self) -> PoissonSubsampledGaussian:
        return PoissonSubsampledGaussian(self.noise_multiplier, self.sample_rate, self.steps_per_round)


def plan_noise(*, accountant: str, target_epsilon: float, delta: float, records: int, batch_size: int,
               local_epochs: int, rounds: int, spent: Sequence[DpEvent] = (),
               budget: float | None = None) -> NoisePlan:
    """The least noise an owner with ``records`` records needs for ``rounds`` rounds (see module docstring)."""
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"the target epsilon must be finite and > 0, got {target_epsilon}")
    if records < 1 or batch_size < 1 or local_epochs < 1 or rounds < 1:
        raise ValueError("records, batch size, local epochs and rounds must all be >= 1")
    shape = dp_sgd_round(1.0, records, batch_size, local_epochs)
    return _plan(accountant, float(target_epsilon), float(delta), shape.sample_rate, shape.steps, int(rounds),
                 tuple(merge_repeats(spent)), None if budget is None else float(budget))


@lru_cache(maxsize=1024)
def _plan(accountant_name: str, target: float, delta: float, rate: float, steps: int, rounds: int,
          spent: tuple[DpEvent, ...], budget: float | None) -> NoisePlan:
    accountant = get_accountant(accountant_name)

    def shape(sigma: float) -> PoissonSubsampledGaussian:
        return PoissonSubsampledGaussian(sigma, rate, steps * rounds)

    sigma = accountant.plan_noise_multiplier(shape, target_epsilon=target, delta=delta)
    limited_by = "target"
    if budget is not None:
        spent_alone = accountant.epsilon(list(spent), delta)
        # The one budget rule: any further round costs epsilon > 0, so a spend that fits only with nothing to
        # spare (spent == budget) leaves nothing to plan either.
        if not fits_budget(spent_alone, budget) or spent_alone == budget:
            raise ValueError(f"the budget {budget:g} is spent already (epsilon {spent_alone:.4g}); nothing to plan")
        for_budget = accountant.plan_noise_multiplier(shape, target_epsilon=budget, delta=delta, spent=spent)
        if for_budget > sigma:
            sigma, limited_by = for_budget, "budget"
    planned = shape(sigma)
    return NoisePlan(sigma, rate, steps, rounds, accountant.epsilon([planned], delta),
                     accountant.epsilon([*spent, planned], delta), limited_by)
