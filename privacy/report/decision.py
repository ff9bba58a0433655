"""The decision box: what a data-protection officer should do, per owner and privacy unit, in plain words.

Why a module of its own: the banner's colour and the action each owner's figures imply are
one rule, read by every format (HTML, PDF, JSON, CSV), so they are decided once, here:

- **red**: anything is not intact (the one audit's verdict, :mod:`privfl.privacy.audit`,
  reaches the report as ``Status.intact`` and each owner's integrity): a ledger damaged,
  edited or missing; the action is to stop and recover it (``privfl ledger recover``);
- **amber**: an owner is near or over one of its budgets, or a guarantee is weak (above the
  "weak" tier, record-level or owner-level alike), infinite (a release without DP) or cannot
  be computed, or delta is not well below 1/n of the owner's declared records;
- **green** otherwise: approve at most the rounds that still fit the budget at the current plan.

Epsilon and delta are also put in an attacker's terms: an attacker who was 50/50 about
whether a record was used can become at most e^eps / (1 + e^eps) sure, except that the
guarantee may fail entirely with probability delta per record (up to delta x n over n
records).  That is a bound, not a likelihood of a breach.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from privfl.privacy.report.model import Decision, DecisionRow, LedgerIntegrity, OwnerStatement, Status, unit_label
from privfl.privacy.report.processing_record import ProcessingRecord, records_for
from privfl.privacy.report.words import TIERS, fig, strength_tier

# delta x n at or above this is not "well below 1/n": the chance that the guarantee fails for some record is not small
DELTA_TIMES_N_WARN = 0.01
COORDINATOR = "@coordinator"  # the key name ledger verification gives the coordinator's key


def attacker_certainty(epsilon: float | None) -> float | None:
    """e^eps / (1 + e^eps): the most a 50/50 attacker can become sure that one protected unit was used."""
    if epsilon is None:
        return None
    if math.isinf(epsilon) or epsilon > 700:
        return 1.0
    return 1.0 / (1.0 + math.exp(-epsilon))


def certainty_text(epsilon: float | None) -> str:
    """'73.2%' (rounded up, so the bound is never understated), 'over 99.9%', '100% (no guarantee)'."""
    p = attacker_certainty(epsilon)
    if p is None:
        return "n/a"
    if epsilon is not None and math.isinf(epsilon):
        return "100% (no guarantee)"
    if p > 0.999:
        return "over 99.9%"
    return f"{math.ceil(p * 1000) / 10:.1f}%"


def attacker_sentence(epsilon: float | None, delta: float | None, records: int | None, unit: str = "record") -> str:
    """Epsilon and delta in an attacker's terms, with n and delta x n when n is known."""
    what = "a given record was used" if unit == "record" else "a given owner took part"
    if epsilon is None:
        return f"The {unit_label(unit)} epsilon could not be computed, so no bound can be stated."
    if math.isinf(epsilon):
        return (f"A release was made without differential privacy: nothing bounds what an attacker learns about "
                f"whether {what}.")
    certainty = certainty_text(epsilon)
    bound = ("could become more than 99.9% sure: the bound allows near certainty" if certainty.startswith("over")
             else f"could become at most {certainty} sure")
    text = (f"An attacker who was 50/50 about whether {what} {bound} (epsilon {fig(epsilon)}; a bound over every "
            "possible attacker, not the chance of a breach)")
    if delta is None:
        return text + "."
    text += f"; the guarantee may fail entirely with probability delta = {fig(delta)} per {unit}"
    if unit == "record":
        if records:
            text += (f"; with n = {records:,} records, up to delta x n = {fig(delta * records)} (the chance that it "
                     "fails for some record)")
        else:
            text += "; n (the number of records) is not declared, so delta x n cannot be shown"
    return text + "."


def delta_warning(delta: float | None, records: int | None) -> str | None:
    """Why delta is not well below 1/n (None when it is, or when n is not declared)."""
    if delta is None or not records:
        return None
    product = delta * records
    if product < DELTA_TIMES_N_WARN:
        return None
    from privfl.privacy.budget import delta_problem

    hard = delta_problem(delta, records)
    return (f"delta {fig(delta)} is not well below 1/n for n = {records:,} records: delta x n = {fig(product)}, so "
            f"the guarantee may fail for some record with probability up to {fig(min(product, 1.0))}"
            + (f" ({hard})" if hard else f"; use delta below {fig(DELTA_TIMES_N_WARN / records)}"))


def requester(records: Sequence[ProcessingRecord], ledgers: Sequence[LedgerIntegrity]) -> tuple[str, str]:
    """Who asked for the processing: the name a processing record declares, and the coordinator's key fingerprint."""
    names = sorted({str(r.get("processing", "requester")) for r in records if r.get("processing", "requester")})
    keys = sorted({lg.key_fingerprints[COORDINATOR] for lg in ledgers if COORDINATOR in lg.key_fingerprints})
    name = "; ".join(names) if names else "not declared (add requester = \"...\" under [processing] in the " \
                                          "processing record)"
    key = "; ".join(keys) if keys else "not known (no federation ledger with the coordinator's anchors was given)"
    return name, key


def _row(owner: OwnerStatement, unit: Any, record: ProcessingRecord | None, who: tuple[str, str]) -> DecisionRow:
    label = unit_label(unit.privacy_unit)
    eps = unit.epsilon_spent
    left = unit.outlook.rounds_left if unit.outlook else None
    at_least = bool(unit.outlook and unit.outlook.at_least)
    records = record.get("dataset", "records") if record and unit.privacy_unit == "record" else None
    warning = delta_warning(unit.delta, records) if unit.privacy_unit == "record" else None
    strength = strength_tier(eps) if eps is not None else None
    integrity = owner.integrity
    if integrity is None or not integrity.intact:
        problem = (integrity.problem if integrity else None) or "not verified"
        missing = "missing" in problem or "does not exist" in problem or "no ledger" in problem
        level, verdict = "red", "stop"
        action = (f"ledger of owner {owner.owner_id} {'missing' if missing else 'not intact'} ({problem}): stop "
                  "approving rounds and recover it (privfl ledger recover) before relying on any figure")
    elif eps is None or unit.unsupported_event:
        level, verdict = "amber", "check"
        action = f"{label} epsilon cannot be computed ({unit.unsupported_event or 'no figure'}): approve no more " \
                 "rounds until it can"
    elif math.isinf(eps):
        level, verdict = "amber", "do not rely"
        action = f"a {label} release was made without DP: there is no {label} guarantee; do not rely on one"
    elif unit.over_budget:
        level, verdict = "amber", "approve no more"
        action = (f"{label} epsilon {fig(eps)} is over the budget {fig(unit.epsilon_budget)}: approve no more rounds "
                  "and find out why it was exceeded")
    elif strength == TIERS[-1].name:
        level, verdict = "amber", "do not rely"
        action = (f"{label} epsilon {fig(eps)} is weak (attacker certainty {certainty_text(eps)}): do not rely on it"
                  + (f"; at most {left:,} more round(s) of this plan fit the budget" if left is not None else ""))
    elif unit.budget_status == "near":
        level, verdict = "amber", "approve"
        action = (f"near the {label} budget ({fig(eps)} of {fig(unit.epsilon_budget)}): approve at most "
                  f"{left if left is not None else 0:,} more round(s) of this plan")
    else:
        level, verdict = "green", "approve"
        action = ("approve at most " + (f"{'at least ' if at_least else ''}{left:,}" if left is not None else "the")
                  + " more round(s) of this plan" + ("" if left is not None else " that fit the budget"))
    if warning and level == "green":
        level = "amber"
    if warning:
        action += f"; {warning}"
    return DecisionRow(
        owner_id=owner.owner_id, privacy_unit=unit.privacy_unit, label=label, level=level, verdict=verdict,
        action=action, epsilon_spent=eps, epsilon_budget=unit.epsilon_budget, epsilon_remaining=unit.epsilon_remaining,
        rounds_left=left, rounds_left_at_least=at_least, strength=strength, purposes=list(owner.purposes),
        requester=who[0], requester_key=who[1], delta=unit.delta, attacker_certainty=attacker_certainty(eps),
        records=records, delta_times_n=(unit.delta * records) if (unit.delta is not None and records) else None,
        delta_warning=warning)


def tier_counts(owners: Sequence[OwnerStatement]) -> dict[str, int]:
    """Figures per strength tier over every owner and privacy unit (owner-level counts too)."""
    counts = {t.name: 0 for t in TIERS}
    for owner in owners:
        for unit in owner.unit_views():
            tier = strength_tier(unit.epsilon_spent) if unit.epsilon_spent is not None else None
            if tier is not None:
                counts[tier] += 1
    return counts


_RANK = {"red": 0, "amber": 1, "green": 2}


def decide(owners: Sequence[OwnerStatement], status: Status, records: Sequence[ProcessingRecord],
           ledgers: Sequence[LedgerIntegrity]) -> Decision:
    """The decision box: a row per owner and unit (worst first), the banner's level and why."""
    who = requester(records, ledgers)
    rows = [_row(o, u, records_for(list(records), o.owner_id), who) for o in owners for u in o.unit_views()]
    rows.sort(key=lambda r: (_RANK[r.level], -(r.epsilon_spent or 0.0) if r.epsilon_spent is not None and
                             math.isfinite(r.epsilon_spent) else 0.0, r.owner_id, r.privacy_unit))
    reasons: list[str] = []
    if not status.intact:
        reasons.append("not every ledger is intact (the one audit's verdict): stop and recover before relying on "
                       "any figure")
    red = [r for r in rows if r.level == "red"]
    if red:
        reasons.append(f"{len({r.owner_id for r in red})} owner(s) not intact: "
                       + ", ".join(sorted({r.owner_id for r in red})[:8]))
    weak = [r for r in rows if r.verdict == "do not rely"]
    if weak:
        reasons.append(f"{len(weak)} weak or missing guarantee(s): " + "; ".join(
            f"{r.owner_id} {r.label} epsilon {fig(r.epsilon_spent)}" for r in weak[:6]))
    near = [r for r in rows if r.level != "red" and r.verdict in ("approve", "approve no more")
            and r.level == "amber" and not r.delta_warning]
    if near:
        reasons.append(f"{len(near)} owner budget(s) near or over: " + "; ".join(
            f"{r.owner_id} {r.label}" for r in near[:6]))
    deltas = [r for r in rows if r.delta_warning]
    if deltas:
        reasons.append(f"delta not well below 1/n for {len(deltas)} owner(s)")
    if not status.ok and status.intact and not (weak or near or deltas):
        reasons.append(f"{len(status.problems)} problem(s): see below")
    level = "red" if (not status.intact or red) else \
        ("amber" if any(r.level == "amber" for r in rows) or not status.ok else "green")
    banner = {"red": "STOP: a ledger is not intact", "amber": "CAUTION: act on the rows marked amber",
              "green": "OK to continue within the rounds shown"}[level]
    sentences = []
    for unit in ("record", "owner"):
        worst = max((r for r in rows if r.epsilon_spent is not None and r.privacy_unit == unit),
                    key=lambda r: r.epsilon_spent, default=None)
        if worst is not None:
            sentences.append(f"{worst.label.capitalize()}, highest ({worst.owner_id}): "
                             + attacker_sentence(worst.epsilon_spent, worst.delta, worst.records, unit))
    attacker = " ".join(sentences) or "No epsilon figure in this report."
    return Decision(level=level, banner=banner, reasons=reasons or ["every owner is intact, within its budgets, with "
                                                                    "no weak guarantee"],
                    rows=rows, tier_counts=tier_counts(owners), attacker=attacker, requester=who[0],
                    requester_key=who[1])


__all__ = ["DELTA_TIMES_N_WARN", "attacker_certainty", "attacker_sentence", "certainty_text", "decide",
           "delta_warning", "requester", "tier_counts"]
