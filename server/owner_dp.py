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
import random
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.supercore.differential_privacy import get_norm
from privfl.privacy.accountants.adaptive_clipping import adaptive_clipping_noise
from privfl.privacy.events import (
    DpEvent,
    PoissonSubsampledGaussian,
    SampledWithoutReplacementGaussian,
)

POISSON = "poisson"
FIXED = "fixed"
SAMPLING_KINDS = (POISSON, FIXED)

Arrays = dict[str, np.ndarray]


class OwnerDpConfigError(ValueError):
    """An owner-level DP configuration that cannot be run; the message says what to change."""


def noise_rng() -> np.random.Generator:
    """A NumPy generator seeded from the OS's entropy (128 bits), for DP noise."""
    return np.random.default_rng(secrets.randbits(128))


# -- sampling ----------------------------------------------------------------------------


@dataclass(frozen=True)
class OwnerSampling:
    """How owners are drawn each round.

    ``kind="poisson"``: each owner independently with probability ``rate`` (q in (0, 1]);
    ``kind="fixed"``: exactly ``size`` (m >= 1) of the N owners, uniformly without
    replacement.
    """

    kind: str
    rate: float = 0.0
    size: int = 0

    def __post_init__(self) -> None:
        if self.kind == POISSON:
            rate = self.rate
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
                raise OwnerDpConfigError(
                    f"Poisson owner sampling needs a rate q in (0, 1], got {rate!r}: each owner is sampled "
                    "independently with probability q (q = 1 samples every owner every round)")
        elif self.kind == FIXED:
            size = self.size
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise OwnerDpConfigError(
                    f"fixed-size owner sampling needs a size m >= 1 (an integer), got {size!r}")
        else:
            raise OwnerDpConfigError(f"unknown owner sampling {self.kind!r}; one of {', '.join(SAMPLING_KINDS)}")

    @classmethod
    def poisson(cls, rate: float) -> OwnerSampling:
        return cls(POISSON, rate=rate)

    @classmethod
    def fixed(cls, size: int) -> OwnerSampling:
        return cls(FIXED, size=size)

    def check(self, population_size: int) -> None:
        """Raise OwnerDpConfigError unless this sampling can draw from ``population_size`` owners."""
        if isinstance(population_size, bool) or not isinstance(population_size, int) or population_size < 1:
            raise OwnerDpConfigError(f"the owner population must be an integer >= 1, got {population_size!r}")
        if self.kind == FIXED and self.size > population_size:
            raise OwnerDpConfigError(
                f"fixed-size sampling of m = {self.size} owners needs at least {self.size} owners, but the "
                f"population has N = {population_size}: lower m or add owners")

    def draw(self, population: Sequence[int], rng: random.Random | np.random.Generator | None = None) -> list[int]:
        """The owners (e.g. node ids) sampled this round, sorted.

        ``rng``: a ``random.Random`` or a NumPy ``Generator``; default ``random.SystemRandom()``
        (unpredictable, as amplification by sampling assumes).
        """
        population = list(population)
        if len(set(population)) != len(population):
            raise ValueError("the owner population lists an owner twice")
        self.check(len(population))
        if rng is None:
            rng = random.SystemRandom()
        if self.kind == POISSON:
            if isinstance(rng, np.random.Generator):
                picked = rng.random(len(population)) < self.rate
                chosen = [owner for owner, keep in zip(population, picked, strict=True) if keep]
            else:
                chosen = [owner for owner in population if rng.random() < self.rate]
        elif isinstance(rng, np.random.Generator):
            chosen = [population[i] for i in rng.choice(len(population), size=self.size, replace=False)]
        else:
            chosen = rng.sample(population, self.size)
        return sorted(chosen)

    def expected_cohort(self, population_size: int) -> float:
        """The expected number of sampled owners: q N (Poisson) or m (fixed size)."""
        self.check(population_size)
        return self.rate * population_size if self.kind == POISSON else float(self.size)

    def event(self, noise_multiplier: float, population_size: int, rounds: int = 1) -> DpEvent:
        """The DP event of ``rounds`` rounds at the accounted ``noise_multiplier`` z.

        ``PoissonSubsampledGaussian(z, q, rounds)`` (add-or-remove-one) or
        ``SampledWithoutReplacementGaussian(z, m, N, rounds)`` (replace-one); the ledger
        entry names the privacy unit "owner".
        """
        self.check(population_size)
        if self.kind == POISSON:
            return PoissonSubsampledGaussian(float(noise_multiplier), float(self.rate), rounds)
        return SampledWithoutReplacementGaussian(float(noise_multiplier), self.size, population_size, rounds)


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


# -- functions on dicts of arrays --------------------------------------------------------


def clip_to_norm(delta: Mapping[str, Any], clipping_norm: float) -> tuple[Arrays, bool]:
    """``delta`` scaled by min(1, C / ||delta||) (one L2 norm over all arrays), and ``||delta|| <= C``."""
    _check_clipping_norm(clipping_norm)
    arrays = _as_arrays(delta, "the update")
    wide = {k: v.astype(np.float64) for k, v in arrays.items()}
    norm = get_norm(list(wide.values())) if wide else 0.0
    if not math.isfinite(norm):
        raise ValueError("the update holds NaN or infinite values")
    unclipped = norm <= clipping_norm
    scale = 1.0 if unclipped else clipping_norm / norm
    clipped = {}
    for name, value in wide.items():
        dtype = arrays[name].dtype if np.issubdtype(arrays[name].dtype, np.floating) else np.float64
        clipped[name] = (value * scale).astype(dtype)
    return clipped, bool(unclipped)


def sum_clipped_updates(updates: Iterable[Any], clipping_norm: float, *,
                        reference: Mapping[str, Any] | None = None) -> tuple[Arrays, int]:
    """Clip each owner's update to ``clipping_norm`` and sum them with weight 1 each (in float64).

    For aggregation in the clear at the coordinator.  ``updates``: ArrayRecords or
    mappings name -> array, all with the same names and shapes.  They are deltas; with
    ``reference`` (the global model) they are local models and the delta is
    ``update - reference``.  Returns ``(clipped_sum, unclipped_count)``: the sum (an empty
    dict for no updates) and how many updates had norm <= C.
    """
    _check_clipping_norm(clipping_norm)
    base = _as_arrays(reference, "the reference model") if reference is not None else None
    total: Arrays = {}
    count = 0
    for index, update in enumerate(updates):
        arrays = _as_arrays(update, f"update {index}")
        expected = base if base is not None else (total or None)
        if expected is not None:
            if set(arrays) != set(expected) or any(arrays[k].shape != expected[k].shape for k in expected):
                raise ValueError(f"update {index} has arrays {_shapes(arrays)}, expected {_shapes(expected)}")
            arrays = {k: arrays[k] for k in expected}
        if base is not None:
            arrays = {k: v.astype(np.float64) - base[k].astype(np.float64) for k, v in arrays.items()}
        try:
            clipped, unclipped = clip_to_norm(arrays, clipping_norm)
        except ValueError as err:
            raise ValueError(f"update {index}: {err}") from None
        count += unclipped
        if not total:
            total = {k: v.astype(np.float64) for k, v in clipped.items()}
        else:
            for k, v in clipped.items():
                total[k] += v
    return total, count


def _as_arrays(value: Any, what: str) -> Arrays:
    """An ArrayRecord or a mapping of array-likes as an ordered dict of NumPy arrays."""
    if value is None:
        raise ValueError(f"{what} is missing")
    if hasattr(value, "keys") and hasattr(value, "__getitem__"):
        out = {}
        for name in value:
            item = value[name]
            array = item.numpy() if hasattr(item, "numpy") and not isinstance(item, np.ndarray) else np.asarray(item)
            if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
                raise ValueError(f"{what}: array {name!r} has dtype {array.dtype}, not a number")
            out[str(name)] = array
        return out
    raise ValueError(f"{what} must be an ArrayRecord or a mapping of arrays, got {type(value).__name__}")


def _shapes(arrays: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in arrays.items()}


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _check_clipping_norm(value: Any) -> None:
    if not _real(value) or not math.isfinite(value) or value <= 0:
        raise OwnerDpConfigError(f"the clipping norm C must be finite and > 0, got {value!r}: each owner's update "
                                 "is scaled down to L2 norm C")


__all__ = ["FIXED", "POISSON", "OwnerDpConfigError", "OwnerLevelDP", "OwnerSampling", "check_owner_dp",
           "clip_to_norm", "noise_rng", "sum_clipped_updates"]
