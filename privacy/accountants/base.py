"""The one interface every accountant implements."""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence

from privfl.privacy.events import (
    LEAST_NOISE, DpEvent, NotComposable, is_event, mixed_relations_message,
)

# A planned release as a function of its noise multiplier, or an event whose
# noise_multiplier is a placeholder (replaced by each candidate).
EventShape = DpEvent | Callable[[float], DpEvent | Sequence[DpEvent]]


class Accountant(ABC):
    """Turns a sequence of DP events into epsilon at a given delta.

    Implementations are stateless: the events are the state, so an epsilon can be
    recomputed by anyone holding the events (a ledger, an auditor).

    Like dp-accounting's ``PrivacyAccountant.supports(event)``, :meth:`supports` says
    beforehand whether :meth:`epsilon` would compose the events; when it would not,
    :meth:`epsilon` and :meth:`Composition.add` raise :class:`NotComposable` (a
    TypeError) with the reason, and never guess.  An accountant refuses an event type
    it does not list in ``event_types``, and events of different neighbouring
    relations in one composition.
    """

    name: str
    event_types: tuple[type, ...] = ()  # the mechanisms this accountant composes

    @abstractmethod
    def epsilon(self, events: Sequence[DpEvent], delta: float) -> float:
        """Epsilon of the composition of all ``events`` at ``delta`` (0 for none)."""

    @abstractmethod
    def noise_multiplier(
        self, *, target_epsilon: float, delta: float, sample_rate: float, steps: int
    ) -> float:
        """The smallest noise multiplier whose ``steps`` Poisson steps stay within ``target_epsilon``."""

    # -- what it composes -------------------------------------------------------------

    def refusal(self, events: DpEvent | Iterable[DpEvent]) -> str | None:
        """Why this accountant would not compose ``events`` (None: it would)."""
        relation = None
        for event in events if isinstance(events, Iterable) and not is_event(events) else [events]:
            if type(event) not in self.event_types:
                return self.refusal_for_type(event)
            if relation is None:
                relation = event.neighbouring
            elif event.neighbouring != relation:
                return mixed_relations_message(relation, event)
        return None

    def refusal_for_type(self, event: object) -> str:
        """The reason given for an event type not in ``event_types`` (accountants add hints)."""
        if not is_event(event):
            return f"no accountant here knows the DP event {type(event).__name__}"
        return f"accountant '{self.name}' does not compose {type(event).__name__} events"

    def supports(self, events: DpEvent | Iterable[DpEvent]) -> bool:
        """True iff :meth:`epsilon` composes ``events`` (one event or a sequence)."""
        return self.refusal(events) is None

    def check(self, events: DpEvent | Iterable[DpEvent]) -> None:
        """Raise :class:`NotComposable` with the reason unless ``supports(events)``."""
        reason = self.refusal(events)
        if reason is not None:
            raise NotComposable(reason)

    # -- planning ---------------------------------------------------------------------

    def plan_noise_multiplier(self, shape: EventShape, *, target_epsilon: float, delta: float,
                              spent: Sequence[DpEvent] = ()) -> float:
        """The least noise multiplier (to 0.1%) for which ``spent`` plus the planned release fit.

        ``shape`` is the planned release as a function of its noise multiplier, e.g.
        ``lambda z: SampledWithoutReplacementGaussian(z, 10, 100, rounds)``, or an event
        whose ``noise_multiplier`` is a placeholder.  Bisection on sigma (epsilon falls
        monotonically as the noise grows); the result is the upper end of the final
        bracket, so it always meets the target.
        """
        if not (math.isfinite(target_epsilon) and target_epsilon > 0):
            raise ValueError(f"target epsilon must be finite and > 0, got {target_epsilon}")
        make = _event_factory(shape)
        spent = list(spent)

        def epsilon_at(sigma: float) -> float:
            return self.epsilon([*spent, *_as_list(make(sigma))], delta)

        self.check([*spent, *_as_list(make(1.0))])  # refuse before searching
        return bisect_noise(epsilon_at, target_epsilon)

    # -- incremental ------------------------------------------------------------------

    def composition(self) -> Composition:
        """An empty incremental composition (for checking every prefix of a ledger)."""
        return Composition(self)


def bisect_noise(epsilon_at: Callable[[float], float], target_epsilon: float) -> float:
    """Smallest sigma (to 0.1% relative, never below LEAST_NOISE) with ``epsilon_at(sigma) <= target_epsilon``.

    The floor is checked first: a target so generous that the least accountable noise meets it
    returns that floor without asking the accountant about any smaller sigma (whose cost explodes).
    """
    if epsilon_at(LEAST_NOISE) <= target_epsilon:
        return LEAST_NOISE
    low, high = LEAST_NOISE, 1.0
    while epsilon_at(high) > target_epsilon:
        low, high = high, 2 * high
        if high > 1e6:
            raise ValueError(f"no noise multiplier up to 1e6 reaches epsilon {target_epsilon}")
    while high - low > 1e-3 * high:
        middle = (low + high) / 2
        if epsilon_at(middle) > target_epsilon:
            low = middle
        else:
            high = middle
    return high


def _event_factory(shape: EventShape) -> Callable[[float], DpEvent | Sequence[DpEvent]]:
    if is_event(shape):
        return lambda sigma: dataclasses.replace(shape, noise_multiplier=sigma)
    if callable(shape):
        return shape
    raise TypeError(f"shape must be a DP event or a function of the noise multiplier, got {type(shape).__name__}")


def _as_list(planned: DpEvent | Sequence[DpEvent]) -> list[DpEvent]:
    return [planned] if is_event(planned) else list(planned)


class Composition:
    """Events added one at a time, with the epsilon of everything added so far.

    ``c.add(e1); ...; c.add(en); c.epsilon(delta)`` equals
    ``accountant.epsilon([e1, ..., en], delta)`` up to floating-point rounding
    (relative 1e-9 or better for the accountants here).  This default recomputes from
    all events every time; accountants with additive state override it so that the
    epsilon of every prefix of a long ledger costs O(1) each, not O(n).

    :meth:`add` refuses (NotComposable) an event the accountant does not compose, or
    one whose neighbouring relation differs from the events added before, and then
    leaves the composition as it was.
    """

    def __init__(self, accountant: Accountant) -> None:
        self.accountant = accountant
        self._events: list[DpEvent] = []
        self._neighbouring: str | None = None

    def admit(self, event: DpEvent) -> None:
        """Refuse ``event`` unless it composes with what was added; changes nothing else."""
        self.accountant.check(event)
        if self._neighbouring is None:
            self._neighbouring = event.neighbouring
        elif event.neighbouring != self._neighbouring:
            raise NotComposable(mixed_relations_message(self._neighbouring, event))

    def add(self, event: DpEvent) -> None:
        self.admit(event)
        self._events.append(event)

    def epsilon(self, delta: float) -> float:
        return self.accountant.epsilon(self._events, delta)
