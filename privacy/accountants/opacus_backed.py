"""Accountants backed by Opacus's own implementations (RDP, PRV).

Opacus keeps an accountant's state as ``history = [(noise, rate, steps), ...]``;
feeding it our merged events means the figures are Opacus's, not a re-derivation.

RDP is computed with Opacus's analysis functions directly, the way its
``RDPAccountant.get_privacy_spent`` does (same orders, same summation), but with the
per-step RDP curve of each (noise, rate) cached: the curve costs 5-100 ms to compute
(fractional orders), scaling it by the step count and summing costs microseconds.
So an owner's 10,000 charges with a handful of distinct settings recompute in
milliseconds, and the result is bit-for-bit Opacus's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from opacus.accountants import RDPAccountant as _OpacusRdp
from opacus.accountants import create_accountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import get_noise_multiplier

from privfl.privacy.accountants.base import Accountant, Composition
from privfl.privacy.events import DpEvent, PoissonSubsampledGaussian, merge_repeats

RDP_ORDERS = tuple(_OpacusRdp.DEFAULT_ALPHAS)


@lru_cache(maxsize=4096)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    curve = rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=RDP_ORDERS)
    curve.setflags(write=False)
    return curve


def _rdp_epsilon(rdp: np.ndarray, delta: float) -> float:
    eps, _ = rdp_analysis.get_privacy_spent(orders=RDP_ORDERS, rdp=rdp, delta=delta)
    return float(eps)


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
        return _cached_epsilon(self._mechanism, tuple(history), delta)

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


@lru_cache(maxsize=1024)
def _cached_epsilon(mechanism: str, history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    if mechanism == "rdp":
        # Exactly Opacus's RDPAccountant.get_privacy_spent: sum of compute_rdp(...) * steps.
        rdp = sum([_rdp_per_step(noise, rate) * steps for noise, rate, steps in history])
        return _rdp_epsilon(rdp, delta)
    accountant = create_accountant(mechanism)
    accountant.history = list(history)
    return float(accountant.get_epsilon(delta=delta))


class RdpAccountant(OpacusAccountant):
    """Renyi DP (Mironov 2017): an upper bound, fast, the default for enforcement."""

    def __init__(self) -> None:
        super().__init__("rdp")

    def composition(self) -> Composition:
        return _RdpComposition(self)


class _RdpComposition(Composition):
    """RDP is additive over composition: keep the running RDP curve."""

    def __init__(self, accountant: Accountant) -> None:
        super().__init__(accountant)
        self._rdp = np.zeros(len(RDP_ORDERS))
        self._no_noise = False
        self._any = False

    def add(self, event: DpEvent) -> None:
        if not isinstance(event, PoissonSubsampledGaussian):
            raise TypeError(f"no accountant here knows the DP event {type(event).__name__}")
        if event.steps == 0:
            return
        self._any = True
        if event.noise_multiplier == 0:
            self._no_noise = True
            return
        self._rdp = self._rdp + _rdp_per_step(event.noise_multiplier, event.sample_rate) * event.steps

    def epsilon(self, delta: float) -> float:
        if not self._any:
            return 0.0
        if self._no_noise:
            return math.inf
        return _rdp_epsilon(self._rdp, delta)


class PrvAccountant(OpacusAccountant):
    """Privacy random variables (Gopi et al. 2021): tighter than RDP, slower."""

    def __init__(self) -> None:
        super().__init__("prv")
