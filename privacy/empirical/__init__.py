"""Empirical privacy: epsilon measured from a trained model, from outside the accountant.

Every epsilon privfl prints is an accountant applied to the events the code says it
ran; if the code is wrong the accountant still prints a small number.  This package
turns what an attacker can observe about canaries (records or owners planted at random
with a secret coin) into an epsilon that the observation rules out, or estimates:

- :mod:`.one_run`: Steinke, Nasr, Jagielski, "Privacy Auditing with One (1) Training
  Run" (NeurIPS 2023): a *lower bound* at a stated confidence, from the number of
  correct guesses about which of m canaries were included.
- :mod:`.one_shot`: Andrew et al., "One-shot Empirical Privacy Estimation for
  Federated Learning" (ICLR 2024): an *estimate* from the cosines of random canary
  directions with the final model delta (Gaussian fit; not a bound).

Both answer with one :class:`EmpiricalEpsilon`.  A lower bound above a claimed
epsilon proves the claim false; a lower bound below it proves nothing about the claim
(it may be the attack that is weak), which is why the audit has a proof of power test.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EmpiricalEpsilon:
    """What an empirical method says about epsilon.

    ``kind`` is ``"lower bound"`` (holds with probability ``confidence`` over the
    canaries' coins) or ``"estimate"`` (no confidence statement; ``confidence`` is None).
    ``details``: the observation it came from (canaries, guesses, correct, ...).
    """

    method: str
    epsilon: float
    delta: float
    kind: str
    confidence: float | None = None
    details: dict = field(default_factory=dict)


from privfl.privacy.empirical.one_run import (  # noqa: E402  (after the type they return)
    guesses_from_scores, one_run_audit, one_run_epsilon, one_run_p_value,
)
from privfl.privacy.empirical.one_shot import (  # noqa: E402
    gaussian_delta, gaussian_epsilon, one_shot_estimate,
)

__all__ = [
    "EmpiricalEpsilon", "gaussian_delta", "gaussian_epsilon", "guesses_from_scores", "one_run_audit",
    "one_run_epsilon", "one_run_p_value", "one_shot_estimate",
]
