"""The one interface every accountant implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from privfl.privacy.events import DpEvent


class Accountant(ABC):
    """Turns a sequence of DP events into epsilon at a given delta.

    Implementations are stateless: the events are the state, so an epsilon can be
    recomputed by anyone holding the events (a ledger, an auditor).
    """

    name: str

    @abstractmethod
    def epsilon(self, events: Sequence[DpEvent], delta: float) -> float:
        """Epsilon of the composition of all ``events`` at ``delta`` (0 for none)."""

    @abstractmethod
    def noise_multiplier(
        self, *, target_epsilon: float, delta: float, sample_rate: float, steps: int
    ) -> float:
        """The smallest noise multiplier whose ``steps`` steps stay within ``target_epsilon``."""

    def composition(self) -> Composition:
        """An empty incremental composition (for checking every prefix of a ledger)."""
        return Composition(self)


class Composition:
    """Events added one at a time, with the epsilon of everything added so far.

    ``c.add(e1); ...; c.add(en); c.epsilon(delta)`` equals
    ``accountant.epsilon([e1, ..., en], delta)`` up to floating-point rounding
    (relative 1e-9 or better for the accountants here).  This default recomputes from
    all events every time; accountants with additive state override it so that the
    epsilon of every prefix of a long ledger costs O(1) each, not O(n).
    """

    def __init__(self, accountant: Accountant) -> None:
        self.accountant = accountant
        self._events: list[DpEvent] = []

    def add(self, event: DpEvent) -> None:
        self._events.append(event)

    def epsilon(self, delta: float) -> float:
        return self.accountant.epsilon(self._events, delta)
