"""The report as CSV for spreadsheets: one row per ledger entry per owner.

The columns (:data:`COLUMNS`) are stable (new ones are only appended); numbers are
written as Python writes floats (full precision), ``inf`` for an infinite epsilon,
empty for a value that does not apply (e.g. the epsilon of a refusal's requested
release).  Text that starts with a spreadsheet formula trigger (``= + - @``, tab, carriage
return) gets a leading apostrophe (OWASP's CSV-injection rule), so a purpose the
coordinator chose never runs as a formula on a DPO's machine.  The CSV always holds every entry, however many the HTML and PDF list.

After the entries come rows of kind ``decision`` (the decision box: one per owner and privacy
unit, its level and the action in ``decision_action``), ``release-channel`` (each channel and
how it is covered, in ``note``), ``attacker`` and ``empirical`` (epsilon in an attacker's terms; an
empirical audit's lower bounds) and ``dpia`` (each line of the DPIA / Art. 30 section, in
``note``), so the CSV carries what a DPO decides from as well as every number.  Every entry row
carries its owner's and unit's decision in ``decision_level`` and ``decision_action``.

Each row also carries its privacy unit's totals for the owner (the ``unit_*``
columns, schema 1.2): the unit's lifetime epsilon, the same charges under PLD and
RDP side by side (empty where the accountant does not compose them, with the reason
in ``unit_accountant_notes``, e.g. PLD and fixed-size sampling), its budget, share
used, status, rounds left and this experiment's share.  So a spreadsheet filtered on
``privacy_unit`` shows record-level and owner-level figures apart, never summed.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from privfl.privacy.report.model import Report, UnitAccount

COLUMNS = (
    "owner_id", "ledger", "ledger_intact", "key_fingerprint", "key_independently_supplied", "sequence", "kind",
    "run_id", "round", "timestamp", "mechanism", "noise_multiplier", "sample_rate", "steps", "clipping_norm",
    "privacy_unit", "delta", "accountant", "epsilon_release", "epsilon_increment", "epsilon_cumulative",
    "epsilon_cumulative_stated", "epsilon_stated_matches", "epsilon_budget", "epsilon_remaining", "purpose",
    "refusal_reason", "update_hash", "entry_hash", "purpose_declared",
    # 1.2: the totals of the entry's privacy unit for the owner
    "unit_epsilon_spent", "unit_epsilon_spent_pld", "unit_epsilon_spent_rdp", "unit_enforced_accountant",
    "unit_accountant_notes", "unit_epsilon_budget", "unit_epsilon_remaining", "unit_budget_used_fraction",
    "unit_budget_status", "unit_rounds_left", "unit_epsilon_experiment", "sample_size", "population_size",
    # the decision box, the release channels and the DPIA section (see the module's docstring)
    "decision_level", "decision_action", "note",
)
# ``kind`` of the rows after the entries: one per owner and unit (the decision box), per release channel, per line
# of the DPIA section.  A spreadsheet filtered on kind = charge | refusal sees the ledger entries alone.
DECISION_KIND, CHANNEL_KIND, DPIA_KIND = "decision", "release-channel", "dpia"


# A spreadsheet runs a cell that starts with one of these as a formula (=HYPERLINK(...), +cmd|...).
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return neutralise_formula(value)
    return value


def neutralise_formula(text: str) -> str:
    """Text a spreadsheet shows as text: a leading apostrophe before a formula trigger.

    Purposes, refusal reasons and run ids are written by the coordinator, who is the
    adversary of the DPO opening this file; numbers are written as numbers, untouched.
    """
    return "'" + text if text.startswith(FORMULA_TRIGGERS) else text


def _unit_cells(unit: UnitAccount | None) -> tuple:
    if unit is None:
        return ("",) * 11
    figures = {a.accountant: a for a in unit.epsilon_by_accountant}
    pld, rdp = figures.get("pld"), figures.get("rdp")
    notes = "; ".join(f"{a.accountant}: {a.note}" for a in unit.epsilon_by_accountant if a.epsilon is None)
    return tuple(_cell(v) for v in (
        unit.epsilon_spent, pld.epsilon if pld else None, rdp.epsilon if rdp else None, unit.accountant, notes,
        unit.epsilon_budget, unit.epsilon_remaining, unit.budget_used_fraction, unit.budget_status,
        unit.outlook.rounds_left if unit.outlook else None, unit.experiment.epsilon if unit.experiment else None))


def render_csv(report: Report) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")  # RFC 4180; a cell holding \r or \n is then quoted
    writer.writerow(COLUMNS)
    decisions = {(r.owner_id, r.privacy_unit): r for r in (report.decision.rows if report.decision else [])}
    for owner in report.owners:
        integrity = owner.integrity
        units = {u.privacy_unit: _unit_cells(u) for u in owner.unit_views()}
        for r in owner.entries:
            e = r.event
            unit = units.get(r.privacy_unit if r.privacy_unit in units else "record", _unit_cells(None))
            writer.writerow([_cell(v) for v in (
                owner.owner_id, owner.source.ledger, integrity.intact, r.key_fingerprint,
                integrity.key_independently_supplied, r.sequence, r.kind, r.run_id, r.round, r.timestamp,
                r.mechanism, e.noise_multiplier, e.sample_rate, e.steps, r.clipping_norm, r.privacy_unit, r.delta,
                r.accountant, r.epsilon_release, r.epsilon_increment, r.epsilon_cumulative,
                r.epsilon_cumulative_stated, r.epsilon_stated_matches, r.epsilon_budget, r.epsilon_remaining,
                r.purpose, r.refusal_reason, r.update_hash, r.entry_hash, r.purpose_declared)] + list(unit)
                + [_cell(e.sample_size), _cell(e.population_size)] + _decision_cells(
                    decisions.get((owner.owner_id, r.privacy_unit if r.privacy_unit in units else "record"))) + [""])
    width = len(COLUMNS)
    kind_at, owner_at, unit_at = COLUMNS.index("kind"), COLUMNS.index("owner_id"), COLUMNS.index("privacy_unit")
    for row in decisions.values():
        cells = [""] * width
        cells[owner_at], cells[kind_at], cells[unit_at] = _cell(row.owner_id), DECISION_KIND, row.privacy_unit
        cells[-3:] = [*_decision_cells(row), ""]
        writer.writerow(cells)
    from privfl.privacy.report.sections import build_sections, plain_text

    for section in build_sections(report):
        if section.key == "decision" or not section.csv:
            continue  # already above (the decision: one row per owner and unit; the figures: the rows themselves)
        kind = {"channels": CHANNEL_KIND, "dpia": DPIA_KIND}.get(section.key, section.key)
        for line in plain_text(section):
            cells = [""] * width
            cells[kind_at], cells[-1] = kind, _cell(f"{section.heading}: {line}" if line != section.heading
                                                    else line)
            writer.writerow(cells)
    return buffer.getvalue()


def _decision_cells(row) -> list[Any]:
    return ["", ""] if row is None else [row.level, _cell(row.action)]


def write_csv(report: Report, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_csv(report), encoding="utf-8")
    return path
