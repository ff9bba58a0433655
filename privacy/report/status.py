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
first, since that is what a data-protection officer acts on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from privfl.privacy.report.model import (
    NEAR_BUDGET_FRACTION,
    BudgetAlert,
    HistorySection,
    LedgerIntegrity,
    OwnerStatement,
    Status,
    Summary,
)
from privfl.privacy.report.processing_record import ProcessingRecord, records_for
from privfl.privacy.report.words import UNIT_WORDS, g, names, odds_text, percent, strength_tier

HEADLINE_NAMES = 8


def budget_alerts(owners: Sequence[OwnerStatement]) -> list[BudgetAlert]:
    """Owners over budget or near it, highest share of the budget used first."""
    alerts = [BudgetAlert(o.owner_id, "over" if o.over_budget else "near", o.budget_used_fraction,
                          o.epsilon_spent, o.epsilon_budget, o.outlook.rounds_left if o.outlook else None)
              for o in owners if o.budget_status in ("over", "near")]
    return sorted(alerts, key=lambda a: (-a.budget_used_fraction, a.owner_id))


def status(files: Sequence[LedgerIntegrity], owners: Sequence[OwnerStatement], federation_only: Sequence[str],
           history: HistorySection | None, records: Sequence[ProcessingRecord],
           cross_checks: Sequence[str] = ()) -> Status:
    problems: list[str] = []
    warnings: list[str] = []
    for ledger in files:
        if not ledger.intact:
            problems.append(f"{ledger.path}: NOT INTACT: {ledger.problem or 'not verified'}")
        for extra in ledger.epsilon_problems[1:]:
            problems.append(f"{ledger.path}: {extra}")
    problems.extend(f"cross-check: {c}" for c in cross_checks)
    for owner in owners:
        if owner.unsupported_event:
            problems.append(f"owner {owner.owner_id}: epsilon cannot be computed ({owner.unsupported_event})")
        if owner.over_budget:
            problems.append(f"owner {owner.owner_id}: epsilon {owner.epsilon_spent:.4g} exceeds the budget "
                            f"{owner.epsilon_budget:g}")
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
        warnings.append(f"{len(near)} owner(s) have used {NEAR_BUDGET_FRACTION:.0%} or more of their budget: "
                        + names([f"{a.owner_id} ({percent(a.budget_used_fraction)})" for a in near], HEADLINE_NAMES))
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
            warnings.append(f"owner {owner.owner_id}: the processing record declares an epsilon budget of "
                            f"{budget:g}, but the ledger's entries state {owner.epsilon_budget:g}")
        delta = declared.get("privacy_budget", "delta")
        if delta is not None and owner.delta is not None and not math.isclose(delta, owner.delta, rel_tol=1e-9):
            warnings.append(f"owner {owner.owner_id}: the processing record declares delta {delta:g}, "
                            f"but the ledger's entries state {owner.delta:g}")
    if history is not None and history.matched_run_id is None:
        warnings.append(f"run history {history.source}: {history.note}")
    intact = all(f.intact for f in files)
    ok = not problems
    return Status(
        intact=intact, ok=ok, verdict="INTACT" if intact else "NOT INTACT",
        headline=headline(intact, ok, files, problems, warnings, alerts, list(cross_checks)),
        problems=problems, warnings=warnings, budget_alerts=alerts, near_budget_fraction=NEAR_BUDGET_FRACTION,
        cross_checks=list(cross_checks),
        owners_not_intact=[o.owner_id for o in owners if not o.integrity.intact],
    )


def headline(intact: bool, ok: bool, files: Sequence[LedgerIntegrity], problems: Sequence[str],
             warnings: Sequence[str], alerts: Sequence[BudgetAlert], cross_checks: Sequence[str] = ()) -> str:
    n = len(files)
    files_text = "the ledger file" if n == 1 else f"all {n} ledger files"
    if not intact:
        bad = sum(1 for f in files if not f.intact)
        text = (f"NOT INTACT: {bad} of {n} ledger file(s) failed verification. The figures below are computed "
                "from entries that cannot be relied on.")
    elif not ok:
        text = f"Ledgers intact, but {len(problems)} problem(s) found: see below."
    elif warnings:
        text = f"INTACT: {files_text} verified (signatures, hash chain, every stated epsilon); see the notes."
    else:
        text = (f"INTACT: {files_text} verified (signatures, hash chain, every stated epsilon) "
                "against independently supplied keys.")
    if intact and cross_checks:
        text += f" {len(cross_checks)} cross-check problem(s)."
    over = [a for a in alerts if a.level == "over"]
    near = [a for a in alerts if a.level == "near"]
    if over:
        text += " Over budget: " + names([f"{a.owner_id} ({percent(a.budget_used_fraction)} used)" for a in over],
                                         HEADLINE_NAMES) + "."
    if near:
        text += (f" Near budget ({NEAR_BUDGET_FRACTION:.0%} or more used): "
                 + names([f"{a.owner_id} ({percent(a.budget_used_fraction)})" for a in near], HEADLINE_NAMES) + ".")
    if not alerts and intact:
        text += f" No owner has used {NEAR_BUDGET_FRACTION:.0%} or more of its budget."
    return text


# --------------------------------------------------------------------------- summary


def summary(owners: Sequence[OwnerStatement], files: Sequence, history: HistorySection | None,
            experiment_id: str | None) -> Summary:
    spent = [(o.epsilon_spent, o.owner_id) for o in owners if o.epsilon_spent is not None]
    times = [t for o in owners for t in (o.first_entry, o.last_entry) if t]
    ranked = sorted(owners, key=lambda o: (o.budget_used_fraction is None, -(o.budget_used_fraction or 0.0),
                                           o.owner_id))
    return Summary(
        owners=len(owners),
        ledger_files=len(files),
        entries=sum(len(o.entries) for o in owners),
        charges=sum(o.charges for o in owners),
        refusals=sum(o.refusals for o in owners),
        runs=sorted({r.run_id for o in owners for r in o.runs}),
        privacy_units=sorted({u for o in owners for u in o.privacy_units}),
        mechanisms=sorted({m for o in owners for m in o.mechanisms}),
        accountants=sorted({a for o in owners for a in o.accountants}),
        deltas=sorted({o.delta for o in owners if o.delta is not None}),
        epsilon_spent_max=max(spent)[0] if spent else None,
        epsilon_spent_max_owner=max(spent)[1] if spent else None,
        epsilon_spent_min=min(spent)[0] if spent else None,
        epsilon_spent_min_owner=min(spent)[1] if spent else None,
        owners_with_refusals=[o.owner_id for o in owners if o.refusals],
        owners_over_budget=[o.owner_id for o in owners if o.over_budget],
        owners_near_budget=[o.owner_id for o in ranked if o.budget_status == "near"],
        owners_by_budget_used=[o.owner_id for o in ranked],
        owners_with_undeclared_purposes=[o.owner_id for o in owners if o.purpose_check.status == "mismatch"],
        experiment_id=experiment_id,
        first_entry=min(times) if times else None,
        last_entry=max(times) if times else None,
        final_test_accuracy=history.final_test_accuracy if history else None,
    )


def in_words(s: Summary, owners: Sequence[OwnerStatement], st: Status) -> str:
    """The summary as a few plain sentences, for a reader who is not a DP specialist."""
    if not owners:
        return "The ledgers hold no entries."
    first, last = (s.first_entry or "")[:10], (s.last_entry or "")[:10]
    when = "" if not first else (f" on {first}" if first == last else f" between {first} and {last}")
    who = "1 data owner" if len(owners) == 1 else f"{len(owners)} data owners"
    text = [f"{who.capitalize()} released {s.charges} model update(s){when}, each charged to the owner's privacy "
            "ledger with the DP mechanism that produced it."]
    units = [UNIT_WORDS.get(u, u) for u in s.privacy_units]
    if units:
        text.append("The guarantee is " + "; ".join(units) + ".")
    budgets = sorted({o.epsilon_budget for o in owners if o.epsilon_budget is not None})
    deltas = ", ".join(f"{d:g}" for d in s.deltas)
    accountants = ", ".join(s.accountants)
    if s.epsilon_spent_max is not None:
        if len(owners) == 1:
            spread = f"is {g(s.epsilon_spent_max)}"
        elif g(s.epsilon_spent_min) == g(s.epsilon_spent_max):
            spread = f"is {g(s.epsilon_spent_max)} for every owner"
        else:
            spread = (f"ranges from {g(s.epsilon_spent_min)} ({s.epsilon_spent_min_owner}) to "
                      f"{g(s.epsilon_spent_max)} ({s.epsilon_spent_max_owner})")
        text.append(f"The privacy spent over each owner's lifetime (epsilon at delta {deltas}, {accountants} "
                    f"accountant) {spread}, against budget(s) of {', '.join(g(b) for b in budgets)}; "
                    "smaller is more private.")
        worst = s.epsilon_spent_max
        if worst is not None and not math.isinf(worst):
            text.append(f"At epsilon {g(worst)} no release can change anyone's odds about a protected record by "
                        f"more than {odds_text(worst)}: {strength_tier(worst)} by the tiers commonly used in "
                        "production systems (a convention, not law).")
    if s.experiment_id:
        shares = [o.experiment.epsilon for o in owners if o.experiment and o.experiment.epsilon is not None]
        if shares:
            text.append(f"This experiment ({s.experiment_id}) alone accounts for epsilon up to {g(max(shares))}.")
    if s.refusals:
        text.append(f"{s.refusals} release(s) were refused by their owner ({names(s.owners_with_refusals)}), "
                    "each recorded with its reason (normally: it would have crossed the budget); a refused release "
                    "costs no privacy.")
    if s.owners_over_budget:
        text.append(f"Owner(s) over budget: {names(s.owners_over_budget)}.")
    if s.owners_near_budget:
        text.append(f"Owner(s) near their budget ({NEAR_BUDGET_FRACTION:.0%} or more used): "
                    f"{names(s.owners_near_budget)}.")
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


__all__ = ["budget_alerts", "headline", "in_words", "status", "summary"]
