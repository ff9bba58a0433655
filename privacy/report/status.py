"""The verdict a reader acts on: problems, notes, the headline, and the summary in words.

Why a module of its own: what counts as a problem decides the exit status of
``privfl report`` and the colour of the banner, so it is stated once, here:

- **problems** (``Report.ok`` is false): a ledger not intact, a cross-check problem,
  an epsilon that cannot be computed, an owner over budget, a ledger entry signed
  with a purpose the owner's processing record does not declare;
- **warnings** (notes): an owner near its budget (from 80% used), keys read from the
  ledger files themselves, partial chains, a processing record that disagrees with
  the ledger on the budget, a history that matches no ledger run.

The headline names who is over budget or near it, highest share of budget used
first, since that is what a data-protection officer acts on.  Every privacy unit
counts (DESIGN principle 4): an owner near its owner-level budget is flagged as such,
naming the unit, even when its record-level budget is far from spent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from privfl.privacy.report.model import (
    NEAR_BUDGET_FRACTION,
    PRIVACY_UNITS,
    BudgetAlert,
    HistorySection,
    LedgerIntegrity,
    OwnerStatement,
    Status,
    Summary,
    UnitSummary,
    most_used,
    unit_label,
    unit_views,
    worst_status,
)
from privfl.privacy.report.processing_record import ProcessingRecord, records_for
from privfl.privacy.report.words import UNIT_PROTECTS, UNIT_WORDS, UNITS_APART, g, names, odds_text, percent, \
    strength_tier

HEADLINE_NAMES = 8


def budget_alerts(owners: Sequence[OwnerStatement]) -> list[BudgetAlert]:
    """Owners over a budget or near it, one alert per privacy unit, highest share of the budget used first."""
    alerts = [BudgetAlert(o.owner_id, "over" if u.over_budget else "near", u.budget_used_fraction,
                          u.epsilon_spent, u.epsilon_budget, u.outlook.rounds_left if u.outlook else None,
                          u.privacy_unit)
              for o in owners for u in unit_views(o) if u.budget_status in ("over", "near")]
    return sorted(alerts, key=lambda a: (-a.budget_used_fraction, a.owner_id, a.privacy_unit))


def near_budget_warning(near: Sequence[BudgetAlert]) -> str:
    """The note naming owners near their budget (kept in ``Status.warnings``; the banner says it in its headline)."""
    return (f"{len({a.owner_id for a in near})} owner(s) have used {NEAR_BUDGET_FRACTION:.0%} or more of their "
            f"budget: " + _alert_names(near))


def banner_notes(st: Status) -> list[str]:
    """The notes shown under the banner: every warning but the near-budget one, which the headline already says."""
    near = [a for a in st.budget_alerts if a.level == "near"]
    repeated = near_budget_warning(near) if near else None
    return [w for w in st.warnings if w != repeated]


def _several_units(owners: Sequence[OwnerStatement]) -> bool:
    return len({u.privacy_unit for o in owners for u in unit_views(o)}) > 1


def _alert_names(alerts: Sequence[BudgetAlert], used_word: str = "") -> str:
    """'owner-level budget: a (85%), b (81%); record-level budget: c (92%)': grouped by unit, highest share first."""
    groups: dict[str, list[BudgetAlert]] = {}
    for a in alerts:
        groups.setdefault(a.privacy_unit, []).append(a)
    return "; ".join(f"{unit_label(unit)} budget: "
                     + names([f"{a.owner_id} ({percent(a.budget_used_fraction)}{used_word})" for a in group],
                             HEADLINE_NAMES)
                     for unit, group in groups.items())


def status(files: Sequence[LedgerIntegrity], owners: Sequence[OwnerStatement], federation_only: Sequence[str],
           history: HistorySection | None, records: Sequence[ProcessingRecord],
           cross_checks: Sequence[str] = (), cross_check_owners: Sequence[str] = ()) -> Status:
    """The report's verdict: NOT INTACT when a file fails or a cross-check (the run's audit) found a problem."""
    problems: list[str] = []
    warnings: list[str] = []
    for ledger in files:
        if not ledger.intact:
            problems.append(f"{ledger.path}: NOT INTACT: {ledger.problem or 'not verified'}")
        for extra in ledger.epsilon_problems[1:]:
            problems.append(f"{ledger.path}: {extra}")
    problems.extend(f"cross-check: {c}" for c in cross_checks)
    for owner in owners:
        for unit in unit_views(owner):
            label = unit_label(unit.privacy_unit)
            if unit.unsupported_event:
                problems.append(f"owner {owner.owner_id}: {label} epsilon cannot be computed "
                                f"({unit.unsupported_event})")
            if unit.over_budget:
                problems.append(f"owner {owner.owner_id}: {label} epsilon {unit.epsilon_spent:.4g} exceeds the "
                                f"{label} budget {unit.epsilon_budget:g}")
        check = owner.purpose_check
        if check.status == "mismatch":
            entries = "entry" if len(check.undeclared) == 1 else "entries"
            problems.append(
                f"owner {owner.owner_id}: {len(check.undeclared)} ledger {entries}"
                f" signed with a purpose its processing record does not declare "
                f"({'; '.join(repr(p) for p in check.undeclared_purposes[:3])}"
                f"{' ...' if len(check.undeclared_purposes) > 3 else ''}; declared: "
                f"{'; '.join(repr(p) for p in check.declared or [])}; entries "
                f"{names([str(m.sequence) for m in check.undeclared], 8)})")
    alerts = budget_alerts(owners)
    near = [a for a in alerts if a.level == "near"]
    if near:
        warnings.append(near_budget_warning(near))
    unpinned = [o.owner_id for o in owners if not o.integrity.key_independently_supplied]
    if unpinned:
        warnings.append(
            f"public keys were read from the ledger files themselves for {len(unpinned)} of {len(owners)} owners "
            f"({names(unpinned, 8)}): a ledger rewritten wholesale under another key would also verify; supply the "
            "owners' keys (--public-key or --keys-dir) to rule that out")
    by_id = {o.owner_id: o for o in owners}
    for owner_id in federation_only:
        owner = by_id.get(owner_id)
        if owner is not None and not owner.source.chain_complete:
            warnings.append(f"owner {owner_id}: only the federation ledger's partial copy of its chain was given "
                            "(entries from other federations are missing); its epsilon is the owner's signed "
                            "statement, checked against a lower bound")
    if federation_only and not any(f.ledger_kind == "owner" for f in files):
        warnings.append("this report reads the federation ledger (the server's copy of the owners' receipts); "
                        "each owner's own ledger is the record that counts and may hold more (other runs, later "
                        "entries)")
    for owner in owners:
        declared = records_for(list(records), owner.owner_id)
        if declared is None:
            continue
        budget = declared.get("privacy_budget", "epsilon")
        if budget is not None and owner.epsilon_budget is not None and not math.isclose(
                budget, owner.epsilon_budget, rel_tol=1e-9):
            unit = f" {unit_label(owner.privacy_unit)}" if len(owner.units) > 1 else ""
            warnings.append(f"owner {owner.owner_id}: the processing record declares an epsilon budget of "
                            f"{budget:g}, but the ledger's{unit} entries state {owner.epsilon_budget:g}")
        delta = declared.get("privacy_budget", "delta")
        if delta is not None and owner.delta is not None and not math.isclose(delta, owner.delta, rel_tol=1e-9):
            warnings.append(f"owner {owner.owner_id}: the processing record declares delta {delta:g}, "
                            f"but the ledger's entries state {owner.delta:g}")
    if history is not None and history.matched_run_id is None:
        warnings.append(f"run history {history.source}: {history.note}")
    intact = all(f.intact for f in files) and not cross_checks
    ok = not problems
    not_intact = sorted({o.owner_id for o in owners if not o.integrity.intact} | set(cross_check_owners))
    text = headline(intact, ok, files, problems, warnings, alerts, list(cross_checks))
    if not_intact:
        text = text.replace(". ", f" (owners not intact: {names(not_intact, HEADLINE_NAMES)}). ", 1)
    return Status(
        intact=intact, ok=ok, verdict="INTACT" if intact else "NOT INTACT",
        headline=text,
        problems=problems, warnings=warnings, budget_alerts=alerts, near_budget_fraction=NEAR_BUDGET_FRACTION,
        cross_checks=list(cross_checks),
        owners_not_intact=not_intact,
    )


def headline(intact: bool, ok: bool, files: Sequence[LedgerIntegrity], problems: Sequence[str],
             warnings: Sequence[str], alerts: Sequence[BudgetAlert], cross_checks: Sequence[str] = ()) -> str:
    n = len(files)
    files_text = "the ledger file" if n == 1 else f"all {n} ledger files"
    if not intact:
        bad = sum(1 for f in files if not f.intact)
        failed = [f"{bad} of {n} ledger file(s) failed verification"] if bad else []
        if cross_checks:
            failed.append(f"{len(cross_checks)} cross-check problem(s) (the run's audit)")
        text = (f"NOT INTACT: {' and '.join(failed)}. The figures below are computed from entries that cannot be "
                "relied on.")
    elif not ok:
        text = f"Ledgers intact, but {len(problems)} problem(s) found: see below."
    elif warnings:
        text = f"INTACT: {files_text} verified (signatures, hash chain, every stated epsilon); see the notes."
    else:
        text = (f"INTACT: {files_text} verified (signatures, hash chain, every stated epsilon) "
                "against independently supplied keys.")
    over = [a for a in alerts if a.level == "over"]
    near = [a for a in alerts if a.level == "near"]
    if over:
        text += " Over budget: " + _alert_names(over, " used") + "."
    if near:
        text += f" Near budget ({NEAR_BUDGET_FRACTION:.0%} or more used): " + _alert_names(near) + "."
    if not alerts and intact:
        text += f" No owner has used {NEAR_BUDGET_FRACTION:.0%} or more of its budget."
    return text


# --------------------------------------------------------------------------- summary


def summary(owners: Sequence[OwnerStatement], files: Sequence, history: HistorySection | None,
            experiment_id: str | None) -> Summary:
    units = unit_summaries(owners)
    # The summary's own epsilon range is of one unit: record-level when any owner has it (as before), else owner-level.
    headline_unit = units[0] if units else None
    times = [t for o in owners for t in (o.first_entry, o.last_entry) if t]
    ranked = sorted(owners, key=_share_order)
    return Summary(
        owners=len(owners),
        ledger_files=len(files),
        entries=sum(len(o.entries) for o in owners),
        charges=sum(o.charges for o in owners),
        refusals=sum(o.refusals for o in owners),
        runs=sorted({r.run_id for o in owners for r in o.runs}),
        privacy_units=_in_unit_order({u for o in owners for u in o.privacy_units}),
        mechanisms=sorted({m for o in owners for m in o.mechanisms}),
        accountants=sorted({a for o in owners for a in o.accountants}),
        deltas=sorted({d for o in owners for d in ([v.delta for v in unit_views(o)] if o.units else [o.delta])
                       if d is not None}),
        epsilon_spent_max=headline_unit.epsilon_spent_max if headline_unit else None,
        epsilon_spent_max_owner=headline_unit.epsilon_spent_max_owner if headline_unit else None,
        epsilon_spent_min=headline_unit.epsilon_spent_min if headline_unit else None,
        epsilon_spent_min_owner=headline_unit.epsilon_spent_min_owner if headline_unit else None,
        owners_with_refusals=[o.owner_id for o in owners if o.refusals],
        owners_over_budget=[o.owner_id for o in owners if worst_status(o) == "over"],
        owners_near_budget=[o.owner_id for o in ranked if worst_status(o) == "near"],
        owners_by_budget_used=[o.owner_id for o in ranked],
        owners_with_undeclared_purposes=[o.owner_id for o in owners if o.purpose_check.status == "mismatch"],
        experiment_id=experiment_id,
        first_entry=min(times) if times else None,
        last_entry=max(times) if times else None,
        final_test_accuracy=history.final_test_accuracy if history else None,
        epsilon_spent_unit=headline_unit.privacy_unit if headline_unit else None,
        units=units,
    )


def _in_unit_order(units: set[str]) -> list[str]:
    """Record-level first, then owner-level, then anything else (sorted)."""
    return [u for u in PRIVACY_UNITS if u in units] + sorted(units - set(PRIVACY_UNITS))


def _share_order(owner: OwnerStatement) -> tuple:
    top = most_used(owner)
    used = top.budget_used_fraction if top else None
    return (used is None, -(used or 0.0), owner.owner_id)


def unit_summaries(owners: Sequence[OwnerStatement]) -> list[UnitSummary]:
    """Per privacy unit present: its owners' figures across the report (record-level first)."""
    views = {unit: [] for unit in PRIVACY_UNITS}
    for owner in owners:
        for view in unit_views(owner):
            if view.privacy_unit in views:  # an owner without entries has no unit to summarise
                views[view.privacy_unit].append((owner, view))
    result = []
    for unit, members in views.items():
        if not members:
            continue
        spent = [(v.epsilon_spent, o.owner_id) for o, v in members if v.epsilon_spent is not None]
        ranked = sorted(members, key=lambda m: (m[1].budget_used_fraction is None,
                                                -(m[1].budget_used_fraction or 0.0), m[0].owner_id))
        result.append(UnitSummary(
            privacy_unit=unit, label=unit_label(unit), protects=UNIT_PROTECTS.get(unit, unit), owners=len(members),
            charges=sum(v.charges for _, v in members), refusals=sum(v.refusals for _, v in members),
            accountants=sorted({a for _, v in members for a in (v.accountants or [v.accountant]) if a}),
            deltas=sorted({v.delta for _, v in members if v.delta is not None}),
            epsilon_budgets=sorted({v.epsilon_budget for _, v in members if v.epsilon_budget is not None}),
            epsilon_spent_max=max(spent)[0] if spent else None, epsilon_spent_max_owner=max(spent)[1] if spent else None,
            epsilon_spent_min=min(spent)[0] if spent else None, epsilon_spent_min_owner=min(spent)[1] if spent else None,
            owners_over_budget=[o.owner_id for o, v in ranked if v.budget_status == "over"],
            owners_near_budget=[o.owner_id for o, v in ranked if v.budget_status == "near"]))
    return result


def in_words(s: Summary, owners: Sequence[OwnerStatement], st: Status) -> str:
    """The summary as a few plain sentences, for a reader who is not a DP specialist."""
    if not owners:
        return "The ledgers hold no entries."
    first, last = (s.first_entry or "")[:10], (s.last_entry or "")[:10]
    when = "" if not first else (f" on {first}" if first == last else f" between {first} and {last}")
    who = f"data owner {owners[0].owner_id}" if len(owners) == 1 else f"{len(owners)} data owners"
    by_unit = {u.privacy_unit: u for u in s.units}
    if set(by_unit) <= {"record"}:
        text = [f"{who[0].upper() + who[1:]} released {s.charges} model update(s){when}, each charged to the owner's "
                "privacy ledger with the DP mechanism that produced it."]
    else:
        parts = []
        if "record" in by_unit:
            parts.append(f"{by_unit['record'].charges} record-level charge(s), one per model update an owner "
                         "released (DP-SGD at the owner)")
        if "owner" in by_unit:
            parts.append(f"{by_unit['owner'].charges} owner-level charge(s), one per DP-FedAvg round in which the "
                         "owner could have been drawn by the coordinator")
        verb = "was" if len(owners) == 1 else "were"
        text = [f"{who[0].upper() + who[1:]} {verb} charged {s.charges} time(s){when}: " + " and ".join(parts)
                + "; each charge is recorded in the owner's privacy ledger with the DP mechanism behind it."]
    units = [UNIT_WORDS.get(u, u) for u in s.privacy_units]
    if units:
        text.append("The guarantee is " + "; ".join(units) + ".")
    several = len(s.units) > 1
    if several:
        text.append(UNITS_APART)
    for unit in s.units:
        if unit.epsilon_spent_max is None:
            continue
        budgets = unit.epsilon_budgets
        deltas = ", ".join(f"{d:g}" for d in unit.deltas)
        accountants = ", ".join(unit.accountants)
        if unit.owners == 1:
            spread = f"is {g(unit.epsilon_spent_max)}"
        elif g(unit.epsilon_spent_min) == g(unit.epsilon_spent_max):
            spread = f"is {g(unit.epsilon_spent_max)} for every owner"
        else:
            spread = (f"ranges from {g(unit.epsilon_spent_min)} ({unit.epsilon_spent_min_owner}) to "
                      f"{g(unit.epsilon_spent_max)} ({unit.epsilon_spent_max_owner})")
        what = "The privacy spent" if not several else f"The {unit.label} privacy spent"
        text.append(f"{what} over each owner's lifetime (epsilon at delta {deltas}, {accountants} accountant) "
                    f"{spread}, against {unit.label + ' ' if several else ''}budget(s) of "
                    f"{', '.join(g(b) for b in budgets)}; smaller is more private.")
        worst = unit.epsilon_spent_max
        if worst is not None and not math.isinf(worst):
            about = "a protected record" if unit.privacy_unit == "record" else "whether an owner took part"
            text.append(f"At {unit.label + ' ' if several else ''}epsilon {g(worst)} no release can change anyone's "
                        f"odds about {about} by more than {odds_text(worst)}: {strength_tier(worst)} by the tiers "
                        "commonly used in production systems (a convention, not law).")
    if s.experiment_id:
        for unit in s.units:
            shares = [v.experiment.epsilon for o in owners for v in unit_views(o)
                      if v.privacy_unit == unit.privacy_unit and v.experiment and v.experiment.epsilon is not None
                      and v.experiment.charges]
            if shares or (unit.privacy_unit == "record" and len(s.units) == 1):
                shares = shares or [0.0]
                label = f"{unit.label} " if len(s.units) > 1 else ""
                text.append(f"This experiment ({s.experiment_id}) alone accounts for {label}epsilon up to "
                            f"{g(max(shares))}.")
    if s.refusals:
        text.append(f"{s.refusals} release(s) were refused by their owner ({names(s.owners_with_refusals)}), "
                    "each recorded with its reason (normally: it would have crossed the budget); a refused release "
                    "costs no privacy.")
    if s.owners_over_budget:
        text.append(f"Owner(s) over budget: {_by_unit(s, 'owners_over_budget')}.")
    # owners near their budget: named once, in the headline (and acted on in the decision box), not again here
    if s.owners_with_undeclared_purposes:
        text.append(f"Owner(s) with entries signed for a purpose their processing record does not declare: "
                    f"{names(s.owners_with_undeclared_purposes)}.")
    if not st.intact:
        text.append("WARNING: at least one ledger failed verification; the figures above cannot be relied on.")
    elif st.warnings:
        text.append("All ledgers verified intact (see the notes on what that covers).")
    else:
        text.append("All ledgers verified intact against the owners' independently supplied keys.")
    return " ".join(text)


def _by_unit(s: Summary, field: str) -> str:
    """Owners of a summary list, named per privacy unit when the report has several."""
    if len(s.units) <= 1:
        return names(getattr(s, field))
    return "; ".join(f"{u.label} budget: {names(getattr(u, field))}" for u in s.units if getattr(u, field))


__all__ = ["budget_alerts", "headline", "in_words", "status", "summary", "unit_summaries"]
