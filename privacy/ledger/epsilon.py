"""Recomputing the cumulative epsilon that entries state, the way a verifier does.

A stored epsilon "equals" its recomputation when they agree to a relative 1e-6
(absolute 1e-9 near zero).  Exact equality would be the wrong test: a verifier on
another machine, or composing entry by entry instead of all at once, gets the same
value up to floating-point rounding (measured: 1e-15 relative for RDP, 1e-9 for
PLD), and a stated epsilon that is off by a millionth changes no decision.
"""

from __future__ import annotations

import math

from privfl.privacy.accountants import Composition, get_accountant
from privfl.privacy.events import DpEvent
from privfl.privacy.ledger.errors import UnsupportedEvent

EPSILON_REL_TOL = 1e-6
EPSILON_ABS_TOL = 1e-9


def epsilon_matches(stored: float, recomputed: float) -> bool:
    if math.isinf(stored) or math.isinf(recomputed) or math.isnan(stored):
        return stored == recomputed
    return math.isclose(stored, recomputed, rel_tol=EPSILON_REL_TOL, abs_tol=EPSILON_ABS_TOL)


def stated_epsilon_holds(stated: float, recomputed: float, *, complete: bool) -> bool:
    """Stated versus recomputed epsilon, the one rule: with the owner's chain complete from entry 1 the stated
    figure must match its recomputation (:func:`epsilon_matches`); from part of a chain (a federation's copy)
    the charges held compose to a lower bound, which the stated figure must not fall below.

    The verifier, the coordinator's receipt check and the report all ask here.
    """
    if complete:
        return epsilon_matches(stated, recomputed)
    return not stated < recomputed * (1 - EPSILON_REL_TOL)


class PrefixEpsilons:
    """The epsilon of an owner's charges so far, for any accountant, as charges are added.

    One incremental composition per accountant name, created on first use by
    replaying the charges added before; each further charge costs one step of each.
    """

    def __init__(self) -> None:
        self._events: list[DpEvent] = []
        self._compositions: dict[str, Composition] = {}

    def add_charge(self, event: DpEvent | None) -> None:
        if event is None:
            raise UnsupportedEvent("a charge records a mechanism this privfl does not know")
        self._events.append(event)
        for composition in self._compositions.values():
            self._add(composition, event)

    def epsilon(self, accountant: str, delta: float) -> float:
        composition = self._compositions.get(accountant)
        if composition is None:
            try:
                composition = get_accountant(accountant).composition()
            except ValueError as err:
                raise UnsupportedEvent(str(err)) from None
            for event in self._events:
                self._add(composition, event)
            self._compositions[accountant] = composition
        from privfl.privacy.budget import check_delta

        try:
            check_delta(delta)
        except ValueError as err:
            raise UnsupportedEvent(str(err)) from None
        return composition.epsilon(delta)

    @staticmethod
    def _add(composition: Composition, event: DpEvent) -> None:
        try:
            composition.add(event)
        except TypeError as err:
            raise UnsupportedEvent(f"accountant '{composition.accountant.name}' refuses: {err}") from None
