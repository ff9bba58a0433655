"""DP events: what a release did, stored as data so epsilon can always be re-derived.

An event records the mechanism's parameters, never an epsilon: epsilon is a function
of the composed events and of the accountant that reads them (DESIGN principle 3).
New mechanisms get new event types; an accountant that meets a type it does not know
refuses rather than guesses.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class PoissonSubsampledGaussian:
    """``steps`` DP-SGD steps: Poisson sampling at ``sample_rate``, Gaussian noise.

    The noise standard deviation is ``noise_multiplier`` times the clipping norm, so
    the guarantee does not depend on the norm itself; it is recorded elsewhere (the
    ledger entry) as a training parameter, not as part of the privacy event.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ValueError(f"noise_multiplier must be finite and >= 0, got {self.noise_multiplier}")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        if not (isinstance(self.steps, int) and self.steps >= 0):
            raise ValueError(f"steps must be an integer >= 0, got {self.steps!r}")


@dataclass(frozen=True)
class Gaussian:
    """One Gaussian mechanism over contributions clipped to a norm, without subsampling.

    Server-side DP over clipped updates (the privacy unit is then the owner).  Stored
    in ledgers already; no accountant composes it yet, so each refuses it (principle 3).
    """

    noise_multiplier: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ValueError(f"noise_multiplier must be finite and >= 0, got {self.noise_multiplier}")


DpEvent = PoissonSubsampledGaussian | Gaussian  # the union grows as mechanisms are added


def merge_repeats(events: Iterable[DpEvent]) -> list[PoissonSubsampledGaussian]:
    """Fold events with equal (noise, rate) into one with the summed steps.

    Composition is order-independent, and k steps of one mechanism compose to the
    same guarantee however they are grouped, so merging is exact.  It keeps the
    cost of accounting proportional to the number of *distinct* settings, not to
    the number of rounds an owner has ever taken part in.
    """
    steps: Counter[tuple[float, float]] = Counter()
    for event in events:
        if not isinstance(event, PoissonSubsampledGaussian):
            raise TypeError(f"no accountant here knows the DP event {type(event).__name__}")
        if event.steps:
            steps[(event.noise_multiplier, event.sample_rate)] += event.steps
    return [PoissonSubsampledGaussian(s, q, n) for (s, q), n in sorted(steps.items())]
