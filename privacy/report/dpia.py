"""A DPIA / Art. 30 section a data-protection officer can file (GDPR Art. 30 and 35).

Why: the DPO documents the processing, not only the figures.  This section gathers, per
report, what a DPIA asks for, each item with its source (the processing record the owner
declared, the verified ledgers, privfl's design):

- the processing: purpose, categories of data, recipients, requester, retention of the
  ledgers and of the updates;
- the risks with likelihood and severity, and the residual risk after DP (from the spent
  epsilons' tiers, the release channels not covered, SecAgg+'s limits);
- the data subjects' rights, including what erasure means for a trained model;
- the roles (controller, processor);
- the DPO's opinion, sign-off and review date (left blank for the DPO to fill in);
- a budget table by purpose and by experiment (from the ledgers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from privfl.privacy.report.model import Decision, OwnerStatement, ReleaseChannel, unit_label
from privfl.privacy.report.processing_record import ProcessingRecord
from privfl.privacy.report.words import fig

DECLARED = "owner-declared"
LEDGER = "ledger-verified"
DESIGN = "privfl-design"
NOT_DECLARED = "not declared in a processing record"
RESIDUAL = {"strong": "low", "reasonable": "medium", "weak": "high"}


def _declared(records: Sequence[ProcessingRecord], section: str, key: str) -> Any:
    values = [r.get(section, key) for r in records if r.get(section, key)]
    if not values:
        return None
    flat: list[str] = []
    for v in values:
        flat.extend(v if isinstance(v, list) else [str(v)])
    return "; ".join(dict.fromkeys(flat))


def _item(label: str, value: Any, source: str) -> dict[str, Any]:
    return {"item": label, "value": value if value is not None else NOT_DECLARED,
            "source": source if value is not None else "not-declared"}


def _processing(records: Sequence[ProcessingRecord], owners: Sequence[OwnerStatement],
                decision: Decision) -> list[dict[str, Any]]:
    signed = sorted({p for o in owners for p in o.purposes})
    return [
        _item("purpose (Art. 30(1)(b))", _declared(records, "processing", "purpose"), DECLARED),
        _item("purposes signed in the ledgers", "; ".join(signed) or None, LEDGER),
        _item("categories of data (Art. 30(1)(c))", _declared(records, "processing", "data_categories"), DECLARED),
        _item("special categories (Art. 9)", _declared(records, "processing", "special_categories"), DECLARED),
        _item("recipients (Art. 30(1)(d))", _declared(records, "processing", "recipients"), DECLARED),
        _item("requester", f"{decision.requester}; coordinator key {decision.requester_key}", LEDGER),
        _item("retention of the data (Art. 30(1)(f))", _declared(records, "processing", "retention"), DECLARED),
        _item("retention of the privacy ledgers", "for the lifetime of the data set: the budget is a lifetime "
              "budget, so a ledger deleted is a budget reset (privfl refuses to create a new one at a node)", DESIGN),
        _item("retention of the model updates", "an owner keeps the saved update of each charged round (to re-send "
              "the identical release on a retry); the coordinator keeps the aggregated model and checkpoints", DESIGN),
    ]


def _risks(owners: Sequence[OwnerStatement], decision: Decision,
           channels: Sequence[ReleaseChannel]) -> list[dict[str, Any]]:
    risks = []
    for unit in ("record", "owner"):
        rows = [r for r in decision.rows if r.privacy_unit == unit and r.epsilon_spent is not None]
        if not rows:
            continue
        worst = max(rows, key=lambda r: r.epsilon_spent)
        residual = RESIDUAL.get(worst.strength or "", "high")
        subject = "a record was used (membership inference)" if unit == "record" else \
            "an institution took part, or what it contributed"
        risks.append({
            "risk": f"an observer of the model learns whether {subject}",
            "likelihood": "possible (the coordinator and every recipient see the model)",
            "severity": "high (special-category data)" if unit == "record" else "medium",
            "measures": f"{unit_label(unit)} DP with a lifetime budget, charged before release",
            "residual": f"{residual}: highest {unit_label(unit)} epsilon {fig(worst.epsilon_spent)} "
                        f"({worst.strength}; attacker certainty bound as in the decision box)"})
    open_channels = [c for c in channels if c.coverage in ("no DP", "not covered", "limited")]
    for c in open_channels:
        risks.append({
            "risk": f"{c.channel}: released without a DP guarantee", "likelihood": "likely when used",
            "severity": "medium", "measures": c.detail[:240],
            "residual": "not reduced by DP: accept, limit by policy, or switch off"})
    risks.append({
        "risk": "a ledger edited, truncated or lost (a budget silently reset)", "likelihood": "unlikely",
        "severity": "high", "measures": "signed, hash-chained ledgers anchored at the coordinator; the one audit",
        "residual": "low while the report says INTACT" if decision.level != "red" else "HIGH: a ledger is not intact"})
    return risks


RIGHTS = [
    {"right": "information (Art. 13, 14)", "meaning": "the processing record and this report describe the "
     "processing; the data stay at the owner"},
    {"right": "access (Art. 15)", "meaning": "answered by the owner from its own records; the model holds no record "
     "retrievable by person"},
    {"right": "erasure (Art. 17)", "meaning": "the record is deleted at the owner; a model already trained is not "
     "retrained: DP bounds what it reveals about that record (the record-level epsilon), and the budget it spent "
     "stays spent; retraining without the record is the only way to remove its influence"},
    {"right": "objection (Art. 21)", "meaning": "the owner excludes the person's records from future rounds"},
]


def _budget_tables(owners: Sequence[OwnerStatement]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Charges by purpose (from the entries) and by experiment (run id, with each owner's lifetime epsilon rise)."""
    by_purpose: dict[tuple[str, str], dict[str, Any]] = {}
    for o in owners:
        for r in o.entries:
            unit = r.privacy_unit if r.privacy_unit in ("record", "owner") else "record"
            row = by_purpose.setdefault((r.purpose, unit), {"purpose": r.purpose, "privacy_unit": unit,
                                                            "owners": set(), "charges": 0, "refusals": 0})
            row["owners"].add(o.owner_id)
            row["charges" if r.is_charge else "refusals"] += 1
    purposes = [{**row, "owners": len(row["owners"])} for _, row in sorted(by_purpose.items())]
    by_run: dict[str, dict[str, Any]] = {}
    for o in owners:
        for run in o.runs:
            row = by_run.setdefault(run.run_id, {"experiment": run.run_id, "privacy_units": set(), "owners": 0,
                                                 "charges": 0, "refusals": 0, "epsilon_rise_max": None,
                                                 "purposes": set()})
            row["privacy_units"].update(run.privacy_units)
            row["owners"] += 1
            row["charges"] += run.charges
            row["refusals"] += run.refusals
            row["purposes"].update(run.purposes)
            if run.epsilon_after is not None:
                rise = run.epsilon_after - (run.epsilon_before or 0.0)
                if row["epsilon_rise_max"] is None or rise > row["epsilon_rise_max"]:
                    row["epsilon_rise_max"] = rise
    experiments = [{**row, "privacy_units": sorted(row["privacy_units"]), "purposes": sorted(row["purposes"])}
                   for _, row in sorted(by_run.items())]
    return purposes, experiments


def dpia_section(records: Sequence[ProcessingRecord], owners: Sequence[OwnerStatement], decision: Decision,
                 channels: Sequence[ReleaseChannel]) -> dict[str, Any]:
    """The DPIA / Art. 30 section (plain data: it goes into the JSON as it is)."""
    purposes, experiments = _budget_tables(owners)
    controller = _declared(records, "controller", "name")
    dpo = _declared(records, "data_protection_officer", "name")
    return {
        "reference": _declared(records, "processing", "dpia"),
        "processing": _processing(records, owners, decision),
        "risks": _risks(owners, decision, channels),
        "rights": RIGHTS,
        "roles": [
            {"role": "controller", "who": controller or NOT_DECLARED,
             "note": "each data owner (institution) for its own data"},
            {"role": "processor / joint controller", "who": decision.requester,
             "note": "the coordinator runs the federation and receives DP releases; whether it is a processor "
                     "(Art. 28) or a joint controller (Art. 26) is for the controllers' agreement to say"},
            {"role": "data protection officer", "who": dpo or NOT_DECLARED, "note": ""},
        ],
        "budget_by_purpose": purposes,
        "budget_by_experiment": experiments,
        "sign_off": {"dpo_opinion": "", "decision": "", "signed_by": "", "date": "", "next_review": ""},
    }


__all__ = ["RIGHTS", "dpia_section"]
