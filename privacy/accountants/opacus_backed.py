"""Accountants backed by Opacus's own implementations (RDP, PRV).

Opacus keeps an accountant's state as ``history = [(noise, rate, steps), ...]``;
feeding it our merged events means the figures are Opacus's, not a re-derivation.

RDP is computed with Opacus's analysis functions directly, the way its
``RDPAccountant.get_privacy_spent`` does (same orders, same summation), but with the
per-step RDP curve of each (noise, rate) cached: the curve costs 5-100 ms to compute
(fractional orders), scaling it by the step count and summing costs microseconds.
So an owner's 10,000 charges with a handful of distinct settings recompute in
milliseconds, and the result is bit-for-bit Opacus's.

The RDP accountant composes all three event types on one set of orders, Opacus's
(``RDP_ORDERS``):

- ``PoissonSubsampledGaussian``: Opacus's ``compute_rdp`` (add-or-remove-one), as
  before;
- ``Gaussian``: the same with q = 1, i.e. alpha / (2 sigma^2);
- ``SampledWithoutReplacementGaussian``: dp-accounting's RDP bound for sampling
  without replacement (Wang, Balle, Kasiviswanathan 2019, Theorem 27; replace-one),
  the function its own RdpAccountant uses, evaluated on the same orders, with the
  noise multiplier halved.  That bound is stated for a base Gaussian mechanism whose
  noise is sigma times the replace-one L2 *sensitivity*; a sum of contributions
  clipped to C moves by up to 2C when one contribution is replaced by another, so
  noise z x C is sigma = z / 2 there.  dp-accounting 0.6.0's RdpAccountant passes
  ``GaussianDpEvent``'s s / C unhalved and so understates epsilon
  (google/differential-privacy issue #378, open); its PLD code does double the
  sensitivity under REPLACE_ONE, consistently with the halving here.  About 0.1 s per
  distinct (noise, m, N) setting, cached.

The curves of one composition are summed and converted to epsilon with Opacus's
``get_privacy_spent``.  Events of different neighbouring relations are refused.
PRV (Opacus) composes Poisson events only.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from privfl.privacy.accountants.base import Accountant, Composition
from privfl.privacy.events import (
    DpEvent, Gaussian, MergedEvent, NonPrivateRelease, PoissonSubsampledGaussian, SampledWithoutReplacementGaussian,
    merge_repeats,
)



def _opacus_rdp_analysis():
    """Opacus's RDP analysis module, ``opacus/accountants/analysis/rdp.py`` (it imports math, numpy and scipy only).

    Importing it the usual way runs ``opacus/__init__``, which imports torch: 1.7-3.6 s that a
    report (which trains nothing) would spend on every ``privfl report``.  Where Opacus is not
    imported yet, the same file is loaded on its own: the same functions, so every figure is
    still bit for bit Opacus's (``tests/test_report_decision.py`` compares them).
    """
    if "opacus" in sys.modules:
        from opacus.accountants.analysis import rdp

        return rdp
    spec = importlib.util.find_spec("opacus")  # a top-level package: found without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("opacus is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "accountants" / "analysis" / "rdp.py"
    loaded = importlib.util.spec_from_file_location("privfl_opacus_rdp_analysis", path)
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    return module


rdp_analysis = _opacus_rdp_analysis()
# Opacus's RDPAccountant.DEFAULT_ALPHAS (opacus/accountants/rdp.py), written out so that reading it imports no torch.
RDP_ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))


@lru_cache(maxsize=4096)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    curve = rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=RDP_ORDERS)
    curve.setflags(write=False)
    return curve


@lru_cache(maxsize=4096)
def _wor_rdp_per_step(noise_multiplier: float, sample_size: int, population_size: int) -> np.ndarray:
    """RDP curve of one step of fixed-size sampling without replacement (replace-one).

    dp-accounting's own function (what its RdpAccountant uses for
    SampledWithoutReplacementDpEvent), at noise_multiplier / 2: see the module docstring.
    """
    from dp_accounting.rdp import rdp_privacy_accountant as dp_rdp  # heavy: import on first use

    curve = np.array(dp_rdp._compute_rdp_sample_wor_gaussian(
        q=sample_size / population_size, noise_multiplier=noise_multiplier / 2, orders=RDP_ORDERS), dtype=float)
    curve.setflags(write=False)
    return curve


def _step_curve(event: MergedEvent | Gaussian) -> np.ndarray:
    """Per-step RDP curve of an event."""
    if isinstance(event, PoissonSubsampledGaussian):
        return _rdp_per_step(event.noise_multiplier, event.sample_rate)
    if isinstance(event, Gaussian):  # Poisson sampling at rate 1
        return _rdp_per_step(event.noise_multiplier, 1.0)
    return _wor_rdp_per_step(event.noise_multiplier, event.sample_size, event.population_size)


def _rdp_epsilon(rdp: np.ndarray, delta: float) -> float:
    eps, _ = rdp_analysis.get_privacy_spent(orders=RDP_ORDERS, rdp=rdp, delta=delta)
    return float(eps)


class OpacusAccountant(Accountant):
    def __init__(self, mechanism: str) -> None:
        self.name = mechanism
        self._mechanism = mechanism

    def epsilon(self, events: Sequence[DpEvent], delta: float) -> float:
        events = list(events)
        self.check(events)  # NotComposable (a TypeError): unknown mechanism, mixed relations
        merged = merge_repeats(events)
        if not merged:
            return 0.0
        if any(e.noise_multiplier == 0 for e in merged):
            return float("inf")  # no noise, no guarantee
        return _cached_epsilon(self._mechanism, tuple(merged), delta)

    def noise_multiplier(
        self, *, target_epsilon: float, delta: float, sample_rate: float, steps: int
    ) -> float:
        from opacus.accountants.utils import get_noise_multiplier  # imports torch: planning only, never a report

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
def _cached_epsilon(mechanism: str, history: tuple[MergedEvent, ...], delta: float) -> float:
    if mechanism == "rdp":
        # For Poisson events exactly Opacus's RDPAccountant.get_privacy_spent: sum of compute_rdp(...) * steps.
        rdp = sum([_step_curve(event) * event.steps for event in history])
        return _rdp_epsilon(rdp, delta)
    from opacus.accountants import create_accountant  # PRV: imports torch

    accountant = create_accountant(mechanism)
    accountant.history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in history]
    return float(accountant.get_epsilon(delta=delta))


class RdpAccountant(OpacusAccountant):
    """Renyi DP (Mironov 2017): an upper bound, fast, the default for enforcement."""

    event_types = (PoissonSubsampledGaussian, SampledWithoutReplacementGaussian, Gaussian, NonPrivateRelease)

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
        self.admit(event)  # refuses before anything changes
        if event.steps == 0:
            return
        self._any = True
        if event.noise_multiplier == 0:
            self._no_noise = True
            return
        self._rdp = self._rdp + _step_curve(event) * event.steps

    def epsilon(self, delta: float) -> float:
        if not self._any:
            return 0.0
        if self._no_noise:
            return math.inf
        return _rdp_epsilon(self._rdp, delta)


class PrvAccountant(OpacusAccountant):
    """Privacy random variables (Gopi et al. 2021): tighter than RDP, slower.

    Opacus's PRV accountant knows the Poisson-subsampled Gaussian only, so this one
    composes ``PoissonSubsampledGaussian`` events and refuses the others.
    """

    event_types = (PoissonSubsampledGaussian, NonPrivateRelease)  # the latter: epsilon infinite

    def __init__(self) -> None:
        super().__init__("prv")

    def refusal_for_type(self, event: object) -> str:
        reason = super().refusal_for_type(event)
        if isinstance(event, SampledWithoutReplacementGaussian):
            return f"{reason} (Opacus's PRV has no fixed-size sampling; use 'rdp' for fixed-size owner sampling)"
        if isinstance(event, Gaussian):
            return f"{reason} (use 'pld' or 'rdp')"
        return reason
