"""Owner-level differential privacy at the coordinator: DP-FedAvg (McMahan et al. 2018).

The privacy unit is the *owner* (DESIGN principle 4): one owner's whole contribution to a
round, whatever its number of records.  Each round:

1. the coordinator samples owners (:class:`OwnerSampling`): Poisson (each owner
   independently with probability q) or fixed-size (m of the N owners, without
   replacement);
2. each sampled owner's update ``delta = local model - global model`` is clipped to L2
   norm C (:meth:`OwnerLevelDP.clip`; at the owner when updates are securely
   aggregated, else at the coordinator with :func:`sum_clipped_updates`);
3. the coordinator adds N(0, (z_delta C)^2 I) to the *sum* of the clipped deltas, divides
   by the *expected* cohort (q N or m) and adds the result to the global model
   (:meth:`OwnerLevelDP.aggregate`).

Weighting.  Every sampled owner's clipped delta counts with weight 1.  Weighting by the
number of examples (FedAvg's default) would make an owner's influence depend on its data
size, which is itself private, and would break the sensitivity bound C that the noise is
calibrated to.

Dividing by the *expected* cohort, not the number of owners that answered.  The
denominator is then a public constant, so one owner moves the released sum by at most C
(add-or-remove, Poisson) or 2C (replace-one, fixed size), exactly the sensitivity the DP
event assumes, and the estimate of the mean update is unbiased under Poisson sampling
(E[sum] = q N mean).  Dividing by the realised count would make the denominator depend on
who took part, i.e. on the private sampling and on dropouts, and needs a separate
analysis (McMahan et al. 2018, "fixed-denominator estimator").  Owners that drop out, or
refuse, simply contribute nothing: that only lowers the sum.

A round must release even when no owner was sampled (Poisson): skipping it would reveal
that the cohort was empty.  :meth:`OwnerLevelDP.aggregate` therefore accepts an empty sum.

Adaptive clipping (Andrew et al. 2021).  With ``adaptive=True`` each round also releases
the count of sampled owners whose update norm was at most C, noised with standard
deviation sigma_b (``clipped_count_stddev``; the paper's default is expected cohort / 20),
and moves C geometrically towards the ``target_quantile`` of the update norms:
``C <- C exp(-eta (b~ - gamma))`` with ``b~ = (count + N(0, sigma_b^2)) / expected cohort``.
The ledgers record the *accounted* noise multiplier z (``noise_multiplier``); the update
sum gets the larger z_delta of :func:`privfl.privacy.accountants.adaptive_clipping_noise`
so that both queries together are one Gaussian mechanism with multiplier z.

Randomness.  Noise comes from ``numpy.random.default_rng(secrets.randbits(128))`` (the
OS's entropy), a fresh generator per call, unless a caller (a test) passes its own
``rng``.  Owner sampling, likewise, defaults to ``random.SystemRandom``: amplification
by sampling assumes the adversary cannot predict who is sampled, so a sampler seeded from
a seed in the run config gives no amplification against whoever knows the config.

What is reused from Flower.  ``flwr.supercore.differential_privacy`` (what 1.42 has in
place of ``flwr.common.differential_privacy``) works on lists of arrays, in place: its
``get_norm`` (the L2 norm over all arrays) is used here.  Not reused: its
``clip_inputs_inplace`` (divides by the norm, so a zero update raises
``ZeroDivisionError``, and it cannot clip integer arrays in place),
``add_gaussian_noise_inplace`` (draws from NumPy's global ``np.random`` state, which any
library can seed, and casts the noise to the array's dtype), and the adaptive-clipping
wrappers of ``flwr.serverapp.strategy``: in Flower 1.42 they count the updates that *were
clipped* and then apply the paper's update, which is written for the count of updates
that were *not* clipped, so C moves away from the target quantile (shrinks when most
updates are clipped).  ``compute_adaptive_noise_params`` is the same formula as privfl's
:func:`~privfl.privacy.accountants.adaptive_clipping_noise`, which is used instead, as
the one home of that rule.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from privfl.privacy.accountants.adaptive_clipping import adaptive_clipping_noise
from privfl.privacy.events import DpEvent
from privfl.privacy.owner_level import (  # the mechanism both sides share; re-exported for callers here
    FIXED,
    POISSON,
    SAMPLING_KINDS,
    Arrays,
    OwnerDpConfigError,
    OwnerSampling,
    _as_arrays,
    _check_clipping_norm,
    _real,
    _shapes,
    clip_to_norm,
    sum_clipped_updates,
)


def noise_rng() -> np.random.Generator:
    """A NumPy generator seeded from the OS's entropy (128 bits), for DP noise."""
    return np.random.default_rng(secrets.randbits(128))


# -- the mechanism -----------------------------------------------------------------------


@dataclass
class OwnerLevelDP:
    """DP-FedAvg with owner-level sensitivity: clip each owner's delta to C, noise the sum.

    ``noise_multiplier`` is z, the *accounted* multiplier the ledgers record.
    ``clipping_norm`` is C (the initial C when ``adaptive``); it changes between rounds
    with adaptive clipping, so keep :meth:`state` in checkpoints.
    """

    noise_multiplier: float
    clipping_norm: float
    sampling: OwnerSampling
    adaptive: bool = False
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    clipped_count_stddev: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.sampling, OwnerSampling):
            raise OwnerDpConfigError(f"sampling must be an OwnerSampling, got {type(self.sampling).__name__}")
        z = self.noise_multiplier
        if not _real(z) or not math.isfinite(z) or z <= 0:
            raise OwnerDpConfigError(
                f"the noise multiplier z must be finite and > 0, got {z!r}: owner-level DP adds noise of "
                "standard deviation z x C to the sum of clipped updates (z = 0 gives no privacy)")
        _check_clipping_norm(self.clipping_norm)
        if self.adaptive:
            gamma = self.target_quantile
            if not _real(gamma) or not 0 < gamma < 1:
                raise OwnerDpConfigError(
                    f"the target quantile must be in (0, 1), got {gamma!r}: adaptive clipping moves C towards "
                    "the quantile of the owners' update norms that should end up unclipped (0.5: the median)")
            eta = self.clip_learning_rate
            if not _real(eta) or not math.isfinite(eta) or eta <= 0:
                raise OwnerDpConfigError(f"the clip learning rate must be finite and > 0, got {eta!r} "
                                         "(Andrew et al. use 0.2)")
            sigma_b = self.clipped_count_stddev
            if sigma_b is not None and (not _real(sigma_b) or not math.isfinite(sigma_b) or sigma_b <= 0):
                raise OwnerDpConfigError(f"clipped_count_stddev must be finite and > 0 (or None for expected "
                                         f"cohort / 20), got {sigma_b!r}")
            if sigma_b is not None or self.sampling.kind == FIXED:  # else it depends on N: see check()
                self._check_count_stddev(self.count_stddev())

    # -- configuration ------------------------------------------------------------------

    def check(self, population_size: int) -> None:
        """Raise :class:`OwnerDpConfigError` unless this configuration runs for ``population_size`` owners.

        Together with the checks made when the object is built, this refuses: z <= 0,
        C <= 0, a Poisson rate outside (0, 1], a fixed size m < 1 or m > N, a target
        quantile outside (0, 1), and (adaptive) 2 sigma_b <= z, for which no update noise
        z_delta gives the accounted z.
        """
        self.sampling.check(population_size)
        if self.adaptive:
            self._check_count_stddev(self.count_stddev(population_size))

    def _check_count_stddev(self, sigma_b: float) -> None:
        if 2 * sigma_b <= self.noise_multiplier:
            default = " (its default, expected cohort / 20)" if self.clipped_count_stddev is None else ""
            raise OwnerDpConfigError(
                f"adaptive clipping cannot reach the accounted noise multiplier z = {self.noise_multiplier:g} with "
                f"clipped_count_stddev sigma_b = {sigma_b:g}{default}: the clipped-count query alone has noise "
                f"multiplier 2 sigma_b = {2 * sigma_b:g} <= z, so no update noise z_delta exists. Use "
                f"sigma_b > {self.noise_multiplier / 2:g} (a larger expected cohort), a smaller z, or fixed clipping")

    def count_stddev(self, population_size: int | None = None) -> float:
        """sigma_b, the noise on the unclipped count (inf when clipping is fixed: no count released)."""
        if not self.adaptive:
            return math.inf
        if self.clipped_count_stddev is not None:
            return float(self.clipped_count_stddev)
        if self.sampling.kind == FIXED:
            return self.sampling.size / 20
        if population_size is None:
            raise OwnerDpConfigError("the default clipped_count_stddev (expected cohort / 20) of Poisson sampling "
                                     "depends on the number of owners: pass population_size")
        return self.sampling.expected_cohort(population_size) / 20

    def update_noise_multiplier(self, population_size: int | None = None) -> float:
        """z_delta, the noise multiplier used on the update sum.

        z when clipping is fixed; with adaptive clipping
        ``adaptive_clipping_noise(z, sigma_b)`` (> z).  ``population_size`` is needed only for
        adaptive clipping with Poisson sampling and the default sigma_b.
        """
        if not self.adaptive:
            return float(self.noise_multiplier)
        sigma_b = self.count_stddev(population_size)
        self._check_count_stddev(sigma_b)
        return adaptive_clipping_noise(self.noise_multiplier, sigma_b)

    def noise_stddev(self, population_size: int | None = None) -> float:
        """Standard deviation of the noise added to the sum of clipped deltas: z_delta x C."""
        return self.update_noise_multiplier(population_size) * self.clipping_norm

    def event(self, population_size: int, rounds: int = 1) -> DpEvent:
        """The DP event of ``rounds`` rounds of this mechanism (accounted z, never z_delta)."""
        return self.sampling.event(self.noise_multiplier, population_size, rounds)

    # -- clipping and summing -----------------------------------------------------------

    def clip(self, delta: Mapping[str, Any]) -> tuple[Arrays, bool]:
        """``delta`` scaled to L2 norm at most C (all arrays together), and whether its norm was <= C.

        Arrays keep their floating dtype (norm <= C up to that dtype's rounding); integer
        arrays come back as float64.  Refuses NaN or infinite values.
        """
        return clip_to_norm(delta, self.clipping_norm)

    def clipped_sum(self, updates: Iterable[Any], reference: Mapping[str, Any] | None = None) -> tuple[Arrays, int]:
        """:func:`sum_clipped_updates` at this round's C."""
        return sum_clipped_updates(updates, self.clipping_norm, reference=reference)

    # -- one round's release ------------------------------------------------------------

    def aggregate(self, global_arrays: Mapping[str, Any], clipped_sum: Mapping[str, Any] | None,
                  unclipped_count: float | None, population_size: int,
                  rng: np.random.Generator | None = None) -> Arrays:
        """The new global model: ``global + (clipped_sum + N(0, (z_delta C)^2 I)) / expected cohort``.

        ``clipped_sum``: the unweighted sum of the sampled owners' clipped deltas (from
        :func:`sum_clipped_updates` or :func:`privfl.server.secure_aggregation.secure_sum`);
        None or ``{}`` when no owner contributed (the noise is released all the same).
        ``unclipped_count``: how many of them had norm <= C (needed with adaptive clipping,
        ignored otherwise).  With adaptive clipping C is then updated from the noisy count;
        the noise on the update uses the C the deltas were clipped to.  Arrays come back
        in the global model's dtypes.  ``rng``: a NumPy Generator for tests; default a fresh
        generator seeded from the OS's entropy.
        """
        self.check(population_size)
        globals_ = _as_arrays(global_arrays, "the global model")
        summed = _as_arrays(clipped_sum, "the clipped sum") if clipped_sum else {}
        if summed and (set(summed) != set(globals_)
                       or any(summed[k].shape != globals_[k].shape for k in globals_)):
            raise ValueError(f"the clipped sum's arrays {_shapes(summed)} are not the global model's {_shapes(globals_)}")
        if self.adaptive and (unclipped_count is None or not _real(unclipped_count)
                              or not math.isfinite(unclipped_count) or unclipped_count < 0):
            raise ValueError(f"adaptive clipping needs the count of owners whose update norm was <= C, "
                             f"got {unclipped_count!r}")
        rng = noise_rng() if rng is None else rng
        cohort = self.sampling.expected_cohort(population_size)
        std = self.noise_stddev(population_size)
        new: Arrays = {}
        for name, value in globals_.items():
            total = summed[name].astype(np.float64) if name in summed else np.zeros(value.shape, np.float64)
            noisy = total + rng.normal(0.0, std, size=value.shape)
            dtype = value.dtype if np.issubdtype(value.dtype, np.floating) else np.float64
            new[name] = (value.astype(np.float64) + noisy / cohort).astype(dtype)
        if self.adaptive:
            sigma_b = self.count_stddev(population_size)
            noisy_fraction = (float(unclipped_count) + float(rng.normal(0.0, sigma_b))) / cohort
            self.clipping_norm = float(
                self.clipping_norm * math.exp(-self.clip_learning_rate * (noisy_fraction - self.target_quantile)))
        return new

    # -- checkpoints --------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """What must survive a checkpoint (JSON-able): the current clipping norm."""
        return {"clipping_norm": float(self.clipping_norm)}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take back :meth:`state`; refuses a missing or invalid clipping norm."""
        if "clipping_norm" not in state:
            raise ValueError("the owner-level DP state lacks 'clipping_norm'")
        _check_clipping_norm(state["clipping_norm"])
        self.clipping_norm = float(state["clipping_norm"])


def check_owner_dp(dp: OwnerLevelDP, population_size: int) -> None:
    """Raise :class:`OwnerDpConfigError` saying what to change unless ``dp`` runs for ``population_size`` owners."""
    dp.check(population_size)


__all__ = ["FIXED", "POISSON", "SAMPLING_KINDS", "OwnerDpConfigError", "OwnerLevelDP", "OwnerSampling",
           "check_owner_dp", "clip_to_norm", "noise_rng", "sum_clipped_updates"]
