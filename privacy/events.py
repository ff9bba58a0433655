"""DP events: what a release did, stored as data so epsilon can always be re-derived.

An event records the mechanism's parameters, never an epsilon: epsilon is a function
of the composed events and of the accountant that reads them (DESIGN principle 3).
New mechanisms get new event types; an accountant that meets a type it does not know
refuses rather than guesses.

Besides :class:`NonPrivateRelease` (a release with no DP at all: epsilon infinite), three
mechanisms, all a Gaussian mechanism over contributions clipped to an L2 norm C,
with noise of standard deviation ``noise_multiplier x C`` added to their sum:

- :class:`PoissonSubsampledGaussian`: each unit sampled independently with probability q;
  neighbouring relation add-or-remove-one;
- :class:`SampledWithoutReplacementGaussian`: m of N units drawn uniformly without
  replacement; replace-one;
- :class:`Gaussian`: no sampling, every unit, one release; add-or-remove-one.

The privacy unit (a record in DP-SGD, an owner in DP-FedAvg) is not part of the event:
the ledger entry names it (principle 4).  The same event type serves both: e.g.
owner-level DP-FedAvg with Poisson owner sampling at rate q for R rounds is
``PoissonSubsampledGaussian(z, q, R)`` recorded with the privacy unit "owner".

The neighbouring relation says which pairs of datasets the guarantee is about.  It is
fixed by the sampling scheme: Poisson sampling is analysed under add-or-remove-one,
fixed-size sampling without replacement under replace-one (the dataset size N is then
public).  Epsilons under different relations are different guarantees, so the
accountants refuse to compose events of different relations (they never convert).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:  # dp-accounting is imported only where it is converted to
    import dp_accounting

ADD_OR_REMOVE_ONE = "add_or_remove_one"
REPLACE_ONE = "replace_one"
NEIGHBOURING_RELATIONS = (ADD_OR_REMOVE_ONE, REPLACE_ONE)


class NotComposable(TypeError):
    """An accountant refuses to compose these events (principle 3: refuse, never guess).

    Raised for a mechanism the accountant does not know, and for events whose
    neighbouring relations differ.  A ``TypeError``, so callers that map TypeError to
    the ledger's ``UnsupportedEvent`` keep doing so.
    """


def _check_noise(noise_multiplier: float) -> None:
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"noise_multiplier must be finite and >= 0, got {noise_multiplier}")


def _check_count(name: str, value: int, least: int) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= least):
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")



# The least noise multiplier privfl plans, accepts in a request or composes.  Below it an
# accountant's cost explodes (dp-accounting's PLD grid for sigma 1e-3 needs tens of GB, for 1e-6
# petabytes) while a step already costs an epsilon in the hundreds: nothing to protect, a lot to
# lose.  A hostile coordinator's target epsilon of 10^6 used to make the owner's noise planner
# bisect down to sigma 0.001 and exhaust the node's memory.
LEAST_NOISE = 0.1


def below_least_noise(noise_multiplier: float) -> bool:
    """Whether a noise multiplier is below :data:`LEAST_NOISE` (NaN included): the one floor test, which the
    request check, the coordinator's receipt check and the owner's noise check
    (:func:`privfl.privacy.budget.noise_problem`) all ask."""
    return not noise_multiplier >= LEAST_NOISE

@dataclass(frozen=True)
class PoissonSubsampledGaussian:
    """``steps`` releases: Poisson sampling at ``sample_rate``, Gaussian noise.

    Each step includes every unit (a record for DP-SGD, an owner for DP-FedAvg)
    independently with probability ``sample_rate``, clips each included contribution
    to L2 norm C and adds N(0, (noise_multiplier x C)^2) to their sum.  dp-accounting:
    ``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), steps)``,
    add-or-remove-one.  The clipping norm itself is recorded elsewhere (the ledger
    entry) as a training parameter: the guarantee does not depend on it.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    neighbouring: ClassVar[str] = ADD_OR_REMOVE_ONE

    def __post_init__(self) -> None:
        _check_noise(self.noise_multiplier)
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        _check_count("steps", self.steps, 0)


@dataclass(frozen=True)
class SampledWithoutReplacementGaussian:
    """``steps`` releases, each over ``sample_size`` units drawn uniformly without replacement.

    Fixed-size sampling (e.g. a DP-FedAvg server, or Flower's ``random.sample``,
    picking m of N owners each round): each step draws a uniformly random subset of
    exactly ``sample_size`` of the ``population_size`` units, clips each contribution
    to L2 norm C and adds N(0, (noise_multiplier x C)^2) to their sum.

    Neighbouring relation: replace-one (N is public).  ``noise_multiplier`` is, as for
    the other events and as in dp-accounting's ``GaussianDpEvent``, the noise standard
    deviation over the *clipping norm* C.  Under replace-one, one unit's contribution
    can move the sum by up to 2C, so the noise over the L2 sensitivity is
    ``noise_multiplier / 2``; the accountants account for that (see
    :mod:`privfl.privacy.accountants.opacus_backed`).
    """

    noise_multiplier: float
    sample_size: int
    population_size: int
    steps: int

    neighbouring: ClassVar[str] = REPLACE_ONE

    def __post_init__(self) -> None:
        _check_noise(self.noise_multiplier)
        _check_count("sample_size", self.sample_size, 1)
        _check_count("population_size", self.population_size, 1)
        if self.sample_size > self.population_size:
            raise ValueError(f"sample_size ({self.sample_size}) must be <= population_size "
                             f"({self.population_size})")
        _check_count("steps", self.steps, 0)

    @property
    def sample_rate(self) -> float:
        """m / N: the expected share of units in a step (the share of every step here)."""
        return self.sample_size / self.population_size


@dataclass(frozen=True)
class Gaussian:
    """One Gaussian mechanism over contributions clipped to a norm, without subsampling.

    A single release: every unit's clipped contribution is summed and
    N(0, (noise_multiplier x C)^2) added (e.g. server-side DP over clipped updates of
    all owners; the privacy unit is then the owner).  As a mechanism it is
    ``PoissonSubsampledGaussian(noise_multiplier, 1.0, 1)``: Poisson sampling at rate 1
    includes every unit.  Add-or-remove-one; dp-accounting: ``GaussianDpEvent(sigma)``.
    """

    noise_multiplier: float

    neighbouring: ClassVar[str] = ADD_OR_REMOVE_ONE

    def __post_init__(self) -> None:
        _check_noise(self.noise_multiplier)

    @property
    def steps(self) -> int:
        """One release."""
        return 1


@dataclass(frozen=True)
class NonPrivateRelease:
    """``steps`` releases made with no DP mechanism at all: nothing clipped, no noise.

    An owner whose policy allows training without DP (``dp-required = false``) records
    such a release like any other, before it leaves (principles 2 and 6): a release
    without DP is a release too.  Its epsilon is infinite, and so is the epsilon of every
    composition of its privacy unit that holds it, from then on.  A mechanism of its own
    (principle 3), so that no reader mistakes it for a Gaussian event and no accountant
    guesses a finite figure: every accountant here composes it, to infinity.

    As a mechanism it is a Gaussian with no noise (``noise_multiplier`` 0, every unit
    included), which is how :func:`merge_repeats` folds it and why every accountant's
    "no noise, no guarantee" rule answers infinity.  The neighbouring relation is
    add-or-remove-one, that of the record-level (DP-SGD) charges it sits among; the
    epsilon is infinite under either relation.
    """

    steps: int = 1

    noise_multiplier: ClassVar[float] = 0.0
    sample_rate: ClassVar[float] = 1.0
    neighbouring: ClassVar[str] = ADD_OR_REMOVE_ONE

    def __post_init__(self) -> None:
        _check_count("steps", self.steps, 1)


DpEvent = PoissonSubsampledGaussian | SampledWithoutReplacementGaussian | Gaussian | NonPrivateRelease  # grows
EVENT_TYPES: tuple[type, ...] = (PoissonSubsampledGaussian, SampledWithoutReplacementGaussian, Gaussian,
                                 NonPrivateRelease)
MergedEvent = PoissonSubsampledGaussian | SampledWithoutReplacementGaussian


def is_event(value: object) -> bool:
    """True for an instance of one of privfl's DP event types."""
    return type(value) in EVENT_TYPES


def neighbouring_relation(events: Iterable[DpEvent]) -> str | None:
    """The one neighbouring relation of ``events`` (None for none); NotComposable if they mix."""
    relation = None
    for event in events:
        if not is_event(event):
            raise NotComposable(f"no accountant here knows the DP event {type(event).__name__}")
        if relation is None:
            relation = event.neighbouring
        elif event.neighbouring != relation:
            raise NotComposable(mixed_relations_message(relation, event))
    return relation


def mixed_relations_message(relation: str, event: DpEvent) -> str:
    return (f"these events mix neighbouring relations ({relation} and {event.neighbouring}, from "
            f"{type(event).__name__}); their epsilons are different guarantees and no accountant here "
            "converts between them: account them separately")


def merge_repeats(events: Iterable[DpEvent]) -> list[MergedEvent]:
    """Fold events of one mechanism and equal settings into one with the summed steps.

    Composition is order-independent, and k steps of one mechanism compose to the
    same guarantee however they are grouped, so merging is exact.  It keeps the
    cost of accounting proportional to the number of *distinct* settings, not to
    the number of rounds an owner has ever taken part in.

    - ``PoissonSubsampledGaussian``: by (noise, rate);
    - ``SampledWithoutReplacementGaussian``: by (noise, sample size, population size);
    - ``Gaussian(sigma)``: k of them become ``PoissonSubsampledGaussian(sigma, 1.0, k)``,
      the same mechanism (rate 1 includes every unit), so they also fold with such events.
    - ``NonPrivateRelease(k)``: ``PoissonSubsampledGaussian(0.0, 1.0, k)``, the same
      mechanism (no noise, every unit), whose epsilon every accountant states as infinite.

    The result is sorted: Poisson events by (noise, rate) first, then the others.
    Events with no steps are dropped.  Raises NotComposable (a TypeError) for an object
    that is no privfl event; it does not check neighbouring relations (the accountants do).
    """
    steps: Counter[tuple] = Counter()
    for event in events:
        if isinstance(event, PoissonSubsampledGaussian):
            key: tuple = (0, event.noise_multiplier, event.sample_rate)
        elif isinstance(event, (Gaussian, NonPrivateRelease)):
            key = (0, event.noise_multiplier, 1.0)
        elif isinstance(event, SampledWithoutReplacementGaussian):
            key = (1, event.noise_multiplier, event.sample_size, event.population_size)
        else:
            raise NotComposable(f"no accountant here knows the DP event {type(event).__name__}")
        if event.steps:
            steps[key] += event.steps
    merged: list[MergedEvent] = []
    for (kind, *settings), count in sorted(steps.items()):
        if kind == 0:
            merged.append(PoissonSubsampledGaussian(settings[0], settings[1], count))
        else:
            merged.append(SampledWithoutReplacementGaussian(settings[0], settings[1], settings[2], count))
    return merged


def to_dp_accounting(event: DpEvent) -> dp_accounting.DpEvent:
    """The same event as dp-accounting's ``dp_event`` objects (the one conversion).

    Noise multipliers carry over unchanged: dp-accounting's ``GaussianDpEvent`` also
    defines the noise multiplier as the noise standard deviation over the norm bound C.
    Compose the result with an accountant built for ``dp_accounting_relation(event)``.

    Caution for fixed-size sampling: dp-accounting 0.6.0's ``RdpAccountant`` treats the
    ``GaussianDpEvent`` inside ``SampledWithoutReplacementDpEvent`` as if its noise were
    over a replace-one sensitivity of C, not 2C, and so understates epsilon
    (google/differential-privacy issue #378, open).  privfl's RDP accountant halves the
    noise multiplier for that event; to reproduce its figure with dp-accounting, compose
    ``SampledWithoutReplacementDpEvent(N, m, GaussianDpEvent(sigma / 2))``.
    """
    import dp_accounting

    _check_is_event(event)
    if isinstance(event, NonPrivateRelease):
        raise NotComposable("a non-private release has no dp-accounting event: its epsilon is infinite")
    gaussian = dp_accounting.GaussianDpEvent(event.noise_multiplier)
    if isinstance(event, Gaussian):
        return gaussian
    if isinstance(event, PoissonSubsampledGaussian):
        step = dp_accounting.PoissonSampledDpEvent(event.sample_rate, gaussian)
    else:
        step = dp_accounting.SampledWithoutReplacementDpEvent(event.population_size, event.sample_size, gaussian)
    return dp_accounting.SelfComposedDpEvent(step, event.steps)


def dp_accounting_relation(event_or_relation: DpEvent | str) -> dp_accounting.NeighboringRelation:
    """dp-accounting's ``NeighboringRelation`` for an event (or a relation name)."""
    from dp_accounting import NeighboringRelation

    relation = event_or_relation if isinstance(event_or_relation, str) else event_or_relation.neighbouring
    try:
        return {ADD_OR_REMOVE_ONE: NeighboringRelation.ADD_OR_REMOVE_ONE,
                REPLACE_ONE: NeighboringRelation.REPLACE_ONE}[relation]
    except KeyError:
        raise ValueError(f"unknown neighbouring relation {relation!r}; one of {NEIGHBOURING_RELATIONS}") from None


def _check_is_event(event: object) -> None:
    if not is_event(event):
        raise NotComposable(f"no accountant here knows the DP event {type(event).__name__}")

