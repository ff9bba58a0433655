"""The report in plain words: what epsilon means, how strong it is, what is protected.

Why: a data-protection officer acts on a sentence, not on a number.  Epsilon bounds
how much any release can change an observer's odds about the protected unit: for
every possible output, the probability with the unit's data is at most e^epsilon
times the probability without it (except with probability delta).  So epsilon 1
means odds shift by at most ~2.7x, epsilon 8.5 by at most ~4,900x ("about 5,000x").

The strength tiers (<= 1 strong, <= 10 reasonable, above weak) are conventions
commonly used by production systems and in the literature to talk about epsilon,
not a legal threshold; the report says so wherever it uses them.
"""

from __future__ import annotations

import math
from typing import Any

from privfl.privacy.report.model import PlainWords, StrengthTier, UnitMeaning, unit_label

TIERS = (
    StrengthTier("strong", 1.0, "the releases reveal very little about any one protected unit (odds shift by at "
                                "most about 2.7x)"),
    StrengthTier("reasonable", 10.0, "a meaningful but weaker bound (odds shift by at most about 22,000x at "
                                     "epsilon 10); usual for training models with DP-SGD"),
    StrengthTier("weak", None, "the bound is loose; it still limits what any single release adds, but "
                               "membership inference may succeed"),
)
TIERS_SOURCE = ("tiers commonly used in production systems (epsilon <= 1 strong, <= 10 reasonable, above 10 weak); "
                "they are conventions for talking about epsilon, not law or a regulator's threshold")

UNIT_PROTECTS = {
    "record": "one record (one row) of the owner's data: how much the released model can reveal about whether any "
              "single record was used is bounded by the record-level epsilon and delta, and at epsilon above 1 that "
              "bound is loose (DP-SGD at the owner)",
    "owner": "the owner as a whole: whether the institution took part at all, and everything it contributed, in the "
             "released model (DP-FedAvg at the coordinator)",
}
UNIT_WORDS = {
    "record": "record-level: it protects each single record (one row) of an owner's data. One record is not one "
              "person: a patient with several records (visits, samples) is protected only about as much as k "
              "records together, up to k times epsilon",
    "owner": "owner-level: it protects each owner as a whole, whether the institution took part at all and "
             "everything it contributed, in the released model",
}
UNITS_APART = (
    "Record-level and owner-level epsilons are different guarantees with different budgets: each is composed from "
    "its own charges, judged against its own budget and never added to the other.")
ACCOUNTANT_WORDS = (
    "Each unit's spent epsilon is shown under two accountants side by side: PLD (privacy loss distributions) gives "
    "the tightest figure; RDP (Renyi DP) is an upper bound, what privfl used to enforce budgets with. The figure the "
    "owner's budget is enforced with is the one its ledger entries name (marked). PLD has no analysis of fixed-size "
    "sampling (m of N owners drawn each round): there it shows n/a, and RDP is the figure.")
RECORD_NOT_PERSON = (
    "Record-level DP protects one row. When one person (e.g. a patient) has several records in an owner's data, "
    "the guarantee for that person is weaker: for k records of one person it degrades to about k x epsilon "
    "(group privacy). Count the records per person before reading epsilon as a per-patient figure.")
EVALUATION_WORDS = (
    "Federated evaluation metrics (loss and accuracy each owner computes on its own data and sends to the server) "
    "are a release of their own: they are not covered by the DP-SGD epsilon in this report, which accounts only for "
    "the noised model updates.")


def odds_bound(epsilon: float | None) -> float | None:
    """e^epsilon, the worst-case factor by which any output's odds can change (inf for no guarantee)."""
    if epsilon is None:
        return None
    if math.isinf(epsilon) or epsilon > 700:
        return math.inf
    return math.exp(epsilon)


def _grouped(value: float) -> str:
    return f"{int(round(value)):,}"


def _significant(value: float, digits: int) -> float:
    if value <= 0:
        return value
    exponent = math.floor(math.log10(value))
    factor = 10 ** (exponent - digits + 1)
    return round(value / factor) * factor


def _number(value: float, digits: int) -> str:
    rounded = _significant(value, digits)
    if rounded >= 1e9:
        exponent = math.floor(math.log10(rounded))
        return f"{rounded / 10 ** exponent:.{max(digits - 1, 0)}f} x 10^{exponent} "
    if rounded >= 10:
        return _grouped(rounded)
    return f"{rounded:.{max(digits - 1, 0)}f}" if digits > 1 else f"{rounded:.0f}"


def odds_text(epsilon: float | None) -> str:
    """'e^8.5 = 4,900x (about 5,000x)': the odds bound, precise to two digits and in round figures."""
    if epsilon is None:
        return "n/a"
    bound = odds_bound(epsilon)
    if bound is None or math.isinf(bound):
        return "unbounded (a release without noise: no guarantee)"
    precise = _number(bound, 2)
    rough = _number(bound, 1)
    text = f"e^{epsilon:.3g} \u2248 {precise}x"
    return text if rough == precise or bound < 10 else f"{text} (about {rough}x)"


def odds_short(epsilon: float | None) -> str:
    """'4,900x' for tables."""
    bound = odds_bound(epsilon)
    if bound is None:
        return "n/a"
    if math.isinf(bound):
        return "unbounded"
    return f"{_number(bound, 2)}x"


def strength_tier(epsilon: float | None) -> str | None:
    if epsilon is None:
        return None
    for tier in TIERS:
        if tier.up_to is None or epsilon <= tier.up_to:
            return tier.name
    return None


PROTECTED = {"record": "a protected record", "owner": "whether the owner took part (and what it contributed)"}


def epsilon_sentence(epsilon: float | None, delta: float | None = None, unit: str = "record") -> str:
    """One owner's epsilon of one privacy unit in words."""
    label = "Epsilon" if unit == "record" else f"{unit_label(unit).capitalize()} epsilon"
    if epsilon is None:
        return f"{label} could not be computed."
    if math.isinf(epsilon):
        return f"{label} is infinite: a release was made without noise, so there is no privacy guarantee."
    tier = strength_tier(epsilon)
    with_delta = f" (except with probability {delta:g})" if delta else ""
    return (f"{label} {epsilon:.3g}: no release can change anyone's odds about {PROTECTED.get(unit, unit)} by more "
            f"than {odds_text(epsilon)}{with_delta}. By the tiers commonly used in production systems (a convention, "
            f"not law) that is {tier}.")


def plain_words() -> PlainWords:
    examples = [{"epsilon": e, "odds_bound": odds_bound(e), "text": odds_text(e)} for e in (0.5, 1.0, 3.0, 8.5, 10.0)]
    return PlainWords(
        epsilon=("Epsilon bounds how much the released model updates can reveal about one protected unit. For any "
                 "outcome, its probability with the unit's data is at most e^epsilon times its probability without "
                 "it (except with probability delta): an observer's odds that a given record was used can shift by "
                 "at most that factor. e^1 \u2248 2.7x; e^8.5 \u2248 4,900x (about 5,000x). Smaller is more "
                 "private. It is a worst-case bound over every possible observer, not the chance of a breach."),
        odds_examples=examples,
        tiers=list(TIERS),
        tiers_source=TIERS_SOURCE,
        privacy_unit=RECORD_NOT_PERSON,
        evaluation=EVALUATION_WORDS,
        privacy_units=[UnitMeaning(u, unit_label(u), UNIT_PROTECTS[u]) for u in ("record", "owner")],
        accountants=ACCOUNTANT_WORDS,
    )


FIGURE_DIGITS = 3  # significant digits of every figure the report prints, in every format


def fig(value: Any, digits: int = FIGURE_DIGITS) -> str:
    """Every figure the report prints, rounded by one rule: ``digits`` significant digits, grouped thousands.

    One function for HTML, PDF and CSV notes alike, so a figure reads the same in every view
    (the JSON and the CSV's number columns keep full precision for recomputation).
    """
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "\u221e" if value > 0 else "-\u221e"
        if abs(value) >= 10 ** digits:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def names(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def g(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) else str(value)


def percent(fraction: float | None) -> str:
    if fraction is None:
        return "n/a"
    if math.isinf(fraction):
        return "\u221e"
    return f"{fraction * 100:.0f}%"


__all__ = ["FIGURE_DIGITS", "fig", "ACCOUNTANT_WORDS", "EVALUATION_WORDS", "RECORD_NOT_PERSON", "TIERS", "TIERS_SOURCE", "UNITS_APART",
           "UNIT_PROTECTS", "UNIT_WORDS", "epsilon_sentence", "g",
           "names", "odds_bound", "odds_short", "odds_text", "percent", "plain_words", "strength_tier"]
