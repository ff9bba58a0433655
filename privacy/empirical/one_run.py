"""The one-run lower bound of Steinke, Nasr and Jagielski (NeurIPS 2023, arXiv 2305.08846).

Setting.  m canaries; each is included in the training data independently with
probability 1/2 (a secret coin).  After training, an attacker who sees the model
abstains on most canaries and makes r guesses (in / out); v of them are correct.

Claim under test: the training is (epsilon, delta)-DP for one canary.  The paper's
Theorem 5.2 says that then, for every v,

    P[W >= v] <= f(v) + 2 m delta * max_{1<=i<=m} (f(v - i) - f(v)) / i,
    f(u) = P[Binomial(r, e^eps / (1 + e^eps)) >= u],

because each guess is, in the worst case, a coin that comes up right with probability
e^eps / (1 + e^eps), and delta can only shift a bounded mass.  When the right-hand side
(the p-value of the observation under the claim) is at most beta = 1 - confidence, the
claim is rejected.  The p-value grows with epsilon, so the rejected claims are an
interval [0, eps*): eps* is the lower bound, at confidence 1 - beta.

For i > v the terms are (1 - f(v)) / i <= (f(0) - f(v)) / v, so the maximum over
i <= v is the maximum over all i.  With delta = 0 the bound is the plain binomial
test (:func:`one_run_epsilon` with ``delta=0``), whose all-correct case has the closed
form eps* = logit(beta ** (1 / r)); nothing the observation allows exceeds it.

Choosing r after looking at the scores is a second look at the data: the audit tries a
fixed grid of guess counts and splits beta over them (Bonferroni), so the confidence it
states holds for the best of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from privfl.privacy.empirical import EmpiricalEpsilon

METHOD = "one-run (Steinke, Nasr, Jagielski 2023)"
# Guess counts tried, as fractions of the canaries; each once with every guess "in" (the most confident
# canaries) and once half "in", half "out" (the least confident).  Fixed before any score is seen.
GUESS_FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
_TOLERANCE = 1e-6


def _coin(eps: float) -> float:
    """The chance of a correct guess under pure eps-DP: e^eps / (1 + e^eps), computed without overflow."""
    return 1.0 / (1.0 + math.exp(-eps))


def one_run_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Theorem 5.2's bound on P[at least v of r guesses correct] under an (eps, delta)-DP claim (capped at 1)."""
    _check(m, r, v, delta)
    if v <= 0:
        return 1.0
    q = _coin(eps)
    f_v = float(stats.binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    if delta == 0:
        return min(f_v, 1.0)
    i = np.arange(1, v + 1)
    f_shifted = stats.binom.sf(v - i - 1, r, q)  # P[Binomial >= v - i]
    worst = float(np.max((f_shifted - f_v) / i))
    return min(f_v + 2 * m * delta * worst, 1.0)


def one_run_epsilon(m: int, r: int, v: int, *, delta: float, confidence: float) -> float:
    """The largest epsilon that ``v`` correct of ``r`` guesses on ``m`` canaries rejects at ``confidence``.

    0.0 when the observation rejects no claim (e.g. v <= r / 2, what chance gives).
    """
    _check(m, r, v, delta)
    beta = _beta(confidence)
    if r == 0 or one_run_p_value(m, r, v, 0.0, delta) > beta:
        return 0.0
    lo = 0.0
    hi = all_correct_epsilon(r, confidence)  # the pure bound can only be larger, and v <= r
    if one_run_p_value(m, r, v, hi, delta) <= beta:  # only at v = r with delta = 0 (the closed form itself)
        return hi
    while hi - lo > _TOLERANCE * max(1.0, hi):
        mid = (lo + hi) / 2
        if one_run_p_value(m, r, v, mid, delta) <= beta:
            lo = mid
        else:
            hi = mid
    return lo


def all_correct_epsilon(r: int, confidence: float) -> float:
    """The pure-DP bound when all ``r`` guesses are right: e^eps / (1 + e^eps) = beta^(1/r) (the largest possible)."""
    beta = _beta(confidence)
    if r <= 0:
        return 0.0
    q = beta ** (1.0 / r)
    return max(0.0, math.log(q) - math.log1p(-q))


def guesses_from_scores(scores: Sequence[float], included: Sequence[bool], num_in: int,
                        num_out: int) -> tuple[int, int]:
    """Guess "in" for the ``num_in`` highest scores and "out" for the ``num_out`` lowest; (guesses, correct).

    A higher score means more confident that the canary was trained on (e.g. minus its loss).
    Ties are broken by position, which the coins do not depend on.
    """
    scores_array = np.asarray(scores, dtype=float)
    truth = np.asarray(included, dtype=bool)
    if scores_array.shape != truth.shape or scores_array.ndim != 1:
        raise ValueError("scores and included must be two sequences of the same length")
    if num_in < 0 or num_out < 0 or num_in + num_out > len(truth):
        raise ValueError(f"cannot make {num_in} + {num_out} guesses about {len(truth)} canaries")
    order = np.argsort(-scores_array, kind="stable")
    correct = int(truth[order[:num_in]].sum())
    if num_out:
        correct += int((~truth[order[len(order) - num_out:]]).sum())
    return num_in + num_out, correct


def one_run_audit(scores: Sequence[float], included: Sequence[bool], *, delta: float,
                  confidence: float = 0.95, fractions: Sequence[float] = GUESS_FRACTIONS) -> EmpiricalEpsilon:
    """The one-run lower bound from canary scores, best of a fixed grid of guesses (Bonferroni over the grid)."""
    m = len(included)
    if m < 2:
        raise ValueError("an audit needs at least 2 canaries")
    splits = sorted({(k, 0) for k in _counts(m, fractions)} | {(k - k // 2, k // 2) for k in _counts(m, fractions)})
    per_test = 1 - (1 - confidence) / len(splits)
    best: dict = {"epsilon": 0.0, "guesses": 0, "correct": 0, "guessed_in": 0, "guessed_out": 0}
    for num_in, num_out in splits:
        r, v = guesses_from_scores(scores, included, num_in, num_out)
        eps = one_run_epsilon(m, r, v, delta=delta, confidence=per_test)
        if eps > best["epsilon"] or best["guesses"] == 0:
            best = {"epsilon": eps, "guesses": r, "correct": v, "guessed_in": num_in, "guessed_out": num_out}
    return EmpiricalEpsilon(method=METHOD, epsilon=best.pop("epsilon"), delta=delta, kind="lower bound",
                            confidence=confidence, details={"canaries": m, "included": int(np.sum(included)),
                                                            "tests": len(splits), **best})


def _counts(m: int, fractions: Sequence[float]) -> set[int]:
    return {max(1, min(m, round(f * m))) for f in fractions}


def _beta(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return 1.0 - confidence


def _check(m: int, r: int, v: int, delta: float) -> None:
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= correct ({v}) <= guesses ({r}) <= canaries ({m})")
    if not 0 <= delta < 1:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
