"""The one-shot estimate of Andrew et al. (ICLR 2024, arXiv 2302.03098).

Setting.  k canaries are random unit directions in the model's d-dimensional parameter
space (canary owners whose "update" is that direction).  After training, the statistic
of a canary is the cosine of its direction with the final model delta (final minus
initial weights).  A direction that was never inserted is independent of the delta, and
in high dimension its cosine is N(0, 1/d) (the null); an inserted one is shifted.

Estimate.  Fit a Gaussian N(mu_c, s_c^2) to the inserted canaries' cosines; the
distinguishing problem "null or canary" is then, to first order, the Gaussian mechanism
with sensitivity-to-noise ratio

    mu = (mu_c - mu_0) / s_c,

(mu_0 = 0, or the mean of the observed null cosines when they are given), and its
(eps, delta) curve is the mu-GDP curve (Dong, Roth, Su 2019; Balle and Wang 2018):

    delta(eps) = Phi(-eps / mu + mu / 2) - e^eps * Phi(-eps / mu - mu / 2).

The estimate is the eps solving delta(eps) = delta.  The paper proves it consistent for
the Gaussian mechanism as d grows; it is an estimate, with no confidence level, and
the paper's general form (unequal variances of null and canary) is not implemented here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import optimize, stats

from privfl.privacy.empirical import EmpiricalEpsilon

METHOD = "one-shot (Andrew et al. 2024)"


def gaussian_delta(eps: float, mu: float) -> float:
    """delta(eps) of the Gaussian mechanism with ratio ``mu`` (mu-GDP), computed in log space."""
    if mu <= 0:
        return 0.0
    first = stats.norm.cdf(-eps / mu + mu / 2)
    second = math.exp(eps + stats.norm.logcdf(-eps / mu - mu / 2))
    return max(0.0, float(first - second))


def gaussian_epsilon(mu: float, delta: float) -> float:
    """The smallest eps with delta(eps) <= ``delta`` for the Gaussian mechanism with ratio ``mu`` (0 if mu <= 0)."""
    from privfl.privacy.budget import check_delta  # the one home of 0 < delta < 1

    check_delta(delta)
    if mu <= 0 or gaussian_delta(0.0, mu) <= delta:
        return 0.0
    hi = max(1.0, mu)
    while gaussian_delta(hi, mu) > delta:
        hi *= 2
    return float(optimize.brentq(lambda e: gaussian_delta(e, mu) - delta, 0.0, hi, xtol=1e-10, rtol=1e-12))


def cosines(directions: np.ndarray, model_delta: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``directions`` with ``model_delta`` (0 for a zero delta)."""
    directions = np.atleast_2d(np.asarray(directions, dtype=float))
    flat = np.asarray(model_delta, dtype=float).ravel()
    norm = np.linalg.norm(flat)
    if norm == 0:
        return np.zeros(len(directions))
    return directions @ flat / (np.linalg.norm(directions, axis=1) * norm)


def one_shot_estimate(canary_cosines: Sequence[float], *, dim: int, delta: float,
                      null_cosines: Sequence[float] | None = None) -> EmpiricalEpsilon:
    """Andrew et al.'s estimate from the inserted canaries' cosines (null: N(0, 1/dim), or the given cosines)."""
    observed = np.asarray(canary_cosines, dtype=float)
    if observed.size < 2:
        raise ValueError("the Gaussian fit needs at least 2 canary cosines")
    if dim < 1:
        raise ValueError("dim must be >= 1")
    null_mean = float(np.mean(null_cosines)) if null_cosines is not None and len(null_cosines) else 0.0
    mean, spread = float(np.mean(observed)), float(np.std(observed, ddof=1))
    if spread == 0:
        mu = math.inf if mean > null_mean else 0.0
    else:
        mu = (mean - null_mean) / spread
    eps = math.inf if math.isinf(mu) else gaussian_epsilon(mu, delta)
    return EmpiricalEpsilon(method=METHOD, epsilon=eps, delta=delta, kind="estimate",
                            details={"canaries": int(observed.size), "dim": dim, "mu": mu,
                                     "cosine_mean": mean, "cosine_std": spread,
                                     "null_std": 1 / math.sqrt(dim), "null_mean": null_mean})
