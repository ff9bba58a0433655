"""Noise for DP-FedAvg with adaptive clipping (Andrew et al. 2021), and what to account.

"Differentially Private Learning with Adaptive Clipping" (Andrew, Thakkar, McMahan,
Ramaswamy; NeurIPS 2021) adapts the clipping norm C each round towards a quantile of
the owners' update norms.  Besides the noised sum of clipped updates, each round
releases a second query: the count of sampled owners whose update norm was at most
C, noised with standard deviation ``sigma_b`` (``count_stddev`` here).  The privacy
unit is the owner; both queries read the same sampled owners.

Why one noise multiplier describes both (the paper's Theorem 1 and Section 3):

- the update query sums contributions of L2 norm <= C with noise z_delta x C: in units
  of its sensitivity, a Gaussian mechanism with noise multiplier ``z_delta``;
- the count query sums b_i in {0, 1}; the paper centres them, b_i - 1/2, which is
  post-processing (the number of sampled owners is known) and leaves a contribution of
  norm 1/2, so its noise multiplier is sigma_b / (1/2) = ``2 sigma_b``;
- one owner's pair (Delta_i / C / z_delta, (b_i - 1/2) / (2 sigma_b)), after scaling
  each coordinate block to unit noise, has squared norm at most
  z_delta^-2 + (2 sigma_b)^-2; a Gaussian mechanism releasing both is therefore one
  Gaussian mechanism on the concatenated vector, with unit noise and that squared
  sensitivity, i.e. with noise multiplier ``z`` where

      z^-2 = z_delta^-2 + (2 sigma_b)^-2.

  This holds with the owner sampling applied once to the pair (Poisson or fixed-size),
  so the round's DP event is the usual one with noise multiplier ``z``.

So: choose the accounted z (plan it for the budget), choose sigma_b (the paper uses
sigma_b = m / 20 for an expected cohort of m owners), and add noise
z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2) to the updates; z_delta > z, a little more
noise on the updates pays for the count.  The ledger records ``z``, the accounted
noise multiplier, in the round's event (e.g. ``PoissonSubsampledGaussian(z, q, 1)``),
never z_delta: the event must describe the whole release.
"""

from __future__ import annotations

import math


def adaptive_clipping_noise(accounted_noise_multiplier: float, count_stddev: float) -> float:
    """The update noise multiplier z_delta that, with a count of stddev ``count_stddev``,
    gives the accounted noise multiplier ``z``: z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2).

    ``count_stddev`` may be ``math.inf`` (no count released: fixed clipping, z_delta = z).
    Raises ValueError when 2 sigma_b <= z: the count alone would then spend at least
    the whole budget, and no update noise achieves z.
    """
    z = _positive("accounted_noise_multiplier", accounted_noise_multiplier)
    sigma_b = _positive("count_stddev", count_stddev, allow_inf=True)
    if 2 * sigma_b <= z:
        raise ValueError(
            f"count_stddev {sigma_b:g} is too small for the accounted noise multiplier {z:g}: the clipped-count "
            f"query alone has noise multiplier 2 x {sigma_b:g} = {2 * sigma_b:g} <= {z:g}, so no update noise "
            f"reaches it; use count_stddev > {z / 2:g} (Andrew et al. suggest expected cohort / 20)")
    remaining = z ** -2 - (2 * sigma_b) ** -2
    return remaining ** -0.5


def accounted_noise_multiplier(update_noise_multiplier: float, count_stddev: float) -> float:
    """The noise multiplier z to account for one round of adaptive clipping (Theorem 1):
    z = (z_delta^-2 + (2 sigma_b)^-2)^(-1/2).  Inverse of :func:`adaptive_clipping_noise`.

    ``count_stddev = math.inf`` (no count released) gives z = z_delta.
    """
    z_delta = _positive("update_noise_multiplier", update_noise_multiplier)
    sigma_b = _positive("count_stddev", count_stddev, allow_inf=True)
    return (z_delta ** -2 + (2 * sigma_b) ** -2) ** -0.5


def _positive(name: str, value: float, *, allow_inf: bool = False) -> float:
    value = float(value)
    if math.isnan(value) or value <= 0 or (math.isinf(value) and not allow_inf):
        finite = "" if allow_inf else "finite and "
        raise ValueError(f"{name} must be {finite}> 0, got {value!r}")
    return value
