"""Accountants backed by Opacus's own implementations (RDP, PRV).

Opacus keeps an accountant's state as ``history = [(noise, rate, steps), ...]``;
feeding it our merged events means the figures are Opacus's, not a re-derivation.
"""

from __future__ import annotations

from collections.abc import Sequence

from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier

from privfl.privacy.accountants.base import Accountant
from privfl.privacy.events import DpEvent, merge_repeats


class OpacusAccountant(Accountant):
    def __init__(self, mechanism: str) -> None:
        self.name = mechanism
        self._mechanism = mechanism

    def epsilon(self, events: Sequence[DpEvent], delta: float) -> float:
        history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in merge_repeats(events)]
        if not history:
            return 0.0
        if any(noise == 0 for noise, _, _ in history):
            return float("inf")  # no noise, no guarantee
        accountant = create_accountant(self._mechanism)
        accountant.history = history
        return float(accountant.get_epsilon(delta=delta))

    def noise_multiplier(
        self, *, target_epsilon: float, delta: float, sample_rate: float, steps: int
    ) -> float:
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=self._mechanism,
            )
        )


class RdpAccountant(OpacusAccountant):
    """Renyi DP (Mironov 2017): an upper bound, fast, the default for enforcement."""

    def __init__(self) -> None:
        super().__init__("rdp")


class PrvAccountant(OpacusAccountant):
    """Privacy random variables (Gopi et al. 2021): tighter than RDP, slower."""

    def __init__(self) -> None:
        super().__init__("prv")
