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
