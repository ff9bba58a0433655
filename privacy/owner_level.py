"""The owner-level mechanism of DP-FedAvg: how owners are sampled and how an owner's update is clipped.

Both sides use it: the coordinator draws owners and clips the updates it sums in the
clear (:mod:`privfl.server.owner_dp`, :mod:`privfl.server.owner_level`); an owner clips
its own release before it leaves (:mod:`privfl.client.owner_level`), and every owner
charges the round's event that :meth:`OwnerSampling.event` builds
(:meth:`privfl.protocol.OwnerRound.event`).  It lives in ``privacy/`` beside the other
mechanisms so that neither side imports the other's room (DESIGN, "Where code lives").
The noise, added by the coordinator to the sum, stays in
:class:`privfl.server.owner_dp.OwnerLevelDP`.

Owner sampling defaults to ``random.SystemRandom``: amplification by sampling assumes the
adversary cannot predict who is sampled, so a sampler seeded from a seed in the run config
gives no amplification against whoever knows the config.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.supercore.differential_privacy import get_norm

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


__all__ = ["FIXED", "POISSON", "SAMPLING_KINDS", "Arrays", "OwnerDpConfigError", "OwnerSampling", "clip_to_norm",
           "sum_clipped_updates"]
