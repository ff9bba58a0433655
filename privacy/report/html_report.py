"""The report as one self-contained HTML file, rendered from jinja2 templates with autoescaping.

Why templates: every value that reaches the page (an owner id, a purpose, a run id,
a title) is escaped by jinja2's autoescaping, not by remembering to call ``escape``
at each of hundreds of string concatenations; the markup lives in
``templates/report.html.j2`` (loaded with :class:`jinja2.PackageLoader`, so it works
from an installed wheel).  Inline CSS, plots as base64 PNG data URIs, no script:
nothing is fetched when the file opens, so it reads the same offline, archived, or
attached to an e-mail.

Readable at 1,000 owners: the summary tables come first and stay one row per owner
and privacy unit (an owner with record-level and owner-level charges has a row for
each, its id spanning both; PLD and RDP side by side in each row);
per-owner detail is collapsed (``<details>``), and each owner's entry listing is
capped (:func:`entry_limit`); the JSON and CSV always hold every entry.  Large
tables are formatted here, in Python, into plain strings (one pass), and the template
only lays them out.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from privfl.privacy.report import evidence as ev
from privfl.privacy.report.model import COMPARED_ACCOUNTANTS, OwnerStatement, Release, Report, UnitAccount, unit_label
from privfl.privacy.report.status import banner_notes
from privfl.privacy.report.sections import build_sections
from privfl.privacy.report.words import FIGURE_DIGITS, fig, odds_short, odds_text, percent

HTML_ENTRY_ROWS = 2500  # entry rows listed in all (each owner gets at least MIN_ENTRIES_PER_OWNER)
MIN_ENTRIES_PER_OWNER = 10
ALERTS_SHOWN = 50
COLLAPSE_ABOVE = 20  # tables longer than this are collapsed
PER_OWNER_FIELDS = {"epsilon", "epsilon_remaining", "epsilon_meaning", "time_period", "releases",
                    "mechanism_parameters", "epsilon_per_unit"}
ENFORCED_MARK = "*"  # after the figure of the accountant an owner enforces its budget with


# --------------------------------------------------------------------------- formatting


def fmt_eps(value: Any, digits: int = FIGURE_DIGITS) -> str:
    """An epsilon (or any figure) as every format prints it: :func:`~.words.fig`, the one rounding rule."""
    if value == "inf":
        return "\u221e"
    return fig(value, digits)


def fmt_when(timestamp: str | None) -> str:
    """An ISO UTC timestamp as 'YYYY-MM-DD HH:MM:SS' (the column or card says UTC)."""
    return (timestamp or "").replace("T", " ").removesuffix("Z")


def fmt_num(value: Any) -> str:
    """Accuracy, loss and other figures: the same rounding rule as every epsilon (:func:`~.words.fig`)."""
    return "-" if value is None else fig(value)


def event_text(event) -> str:
    if event is None or event.noise_multiplier is None:
        return getattr(event, "type", "-") or "-"
    text = f"\u03c3={event.noise_multiplier:g}"
    if getattr(event, "sample_size", None) is not None:
        text += f" m={event.sample_size} of N={event.population_size} steps={event.steps}"
    elif event.sample_rate is not None:
        text += f" q={event.sample_rate:.4g} steps={event.steps}"
    return text


def setting_text(setting: Any) -> str:
    """One mechanism setting, e.g. 'σ=1 q=0.07692 C=1: 260 steps in 20 releases' (dict or dataclass)."""
    get = setting.get if isinstance(setting, dict) else (lambda k: getattr(setting, k))
    if get("noise_multiplier") is None:
        return str(get("mechanism"))
    text = f"\u03c3={get('noise_multiplier'):g}"
    size = setting.get("sample_size") if isinstance(setting, dict) else getattr(setting, "sample_size", None)
    if size is not None:
        population = setting.get("population_size") if isinstance(setting, dict) else setting.population_size
        text += f" m={size} of N={population}"
    elif get("sample_rate") is not None:
        text += f" q={get('sample_rate'):.4g}"
    text += f" C={get('clipping_norm'):g}: {get('steps_total')} steps in {get('releases')} release"
    return text + ("s" if get("releases") != 1 else "")


def value_text(value: Any) -> str | list[str] | None:
    """A registry or Art. 30 value for the page: text, a list of texts, or None (not declared)."""
    if value is None:
        return None
    if isinstance(value, list):
        return [setting_text(v) if isinstance(v, dict) else str(v) for v in value]
    if isinstance(value, float):
        return fmt_eps(value)
    return str(value)


def entry_limit(owners: int) -> int:
    """Entries listed per owner: all of them up to HTML_ENTRY_ROWS in total, else an equal share."""
    return max(MIN_ENTRIES_PER_OWNER, HTML_ENTRY_ROWS // max(owners, 1))


# --------------------------------------------------------------------------- the view


@dataclass
class BudgetCells:
    """The budget figures of one row of the owners table, as text: an owner's headline or one of its units."""

    spent: str
    experiment: str
    budget: str
    left: str
    used: str
    status: str
    rounds_left: str
    odds: str
    strength: str
    releases: str


@dataclass
class UnitRow(BudgetCells):
    """One privacy unit of one owner in the owners table."""

    unit: str
    accountants: list[tuple[str, str, bool]]  # per compared accountant: (figure or n/a text, note, enforced)
    css: str


@dataclass
class OwnerRow(BudgetCells):
    anchor: str
    owner_id: str
    purposes: str
    purpose_status: str
    verdict: str
    intact: bool
    key_supplied: bool
    css: str
    units: list[UnitRow]


def rounds_left_text(unit: Any) -> str:
    outlook = unit.outlook
    if outlook is None or outlook.rounds_left is None:
        return "n/a"
    return f"\u2265 {outlook.rounds_left:,}" if outlook.at_least else f"{outlook.rounds_left:,}"



def compared(unit: UnitAccount, names: tuple[str, ...] = COMPARED_ACCOUNTANTS) -> list[tuple[str, str, bool]]:
    """(figure, note, enforced) per accountant in ``names``: the figure, or 'n/a (why)'."""
    out = []
    for name in names:
        figure = unit.epsilon_under(name)
        if figure is None:
            out.append(("-", "", False))
        elif figure.epsilon is None:
            out.append((figure.note, figure.note, figure.enforced))
        else:
            out.append((fmt_eps(figure.epsilon), figure.note, figure.enforced))
    return out


def _budget_css(view: Any) -> str:
    """The row's colour from its budget status (an owner's or one unit's)."""
    return "bad" if view.budget_status == "over" else ("near" if view.budget_status == "near" else "")


def _budget_cells(view: Any) -> dict[str, str]:
    """:class:`BudgetCells` of an owner or of one of its units (both carry the same budget figures)."""
    exp = view.experiment
    return dict(
        spent=fmt_eps(view.epsilon_spent), experiment="-" if exp is None else fmt_eps(exp.epsilon),
        budget=fmt_eps(view.epsilon_budget), left=fmt_eps(view.epsilon_remaining),
        used=percent(view.budget_used_fraction), status=view.budget_status, rounds_left=rounds_left_text(view),
        odds=odds_short(view.epsilon_spent), strength=view.strength or "-",
        releases=f"{view.charges} / {view.refusals}")


def _unit_row(unit: UnitAccount) -> UnitRow:
    return UnitRow(**_budget_cells(unit), unit=unit_label(unit.privacy_unit), accountants=compared(unit),
                   css=_budget_css(unit))


def _owner_row(owner: OwnerStatement, anchor: str) -> OwnerRow:
    units = [_unit_row(u) for u in owner.unit_views()]
    bad = not owner.integrity.intact or owner.purpose_check.status == "mismatch"
    if bad:  # a damaged ledger or an undeclared purpose marks every figure of the owner
        for row in units:
            row.css = "bad"
    return OwnerRow(
        **_budget_cells(owner), anchor=anchor, owner_id=owner.owner_id, purposes="; ".join(owner.purposes),
        purpose_status=owner.purpose_check.status, verdict=owner.integrity.verdict, intact=owner.integrity.intact,
        key_supplied=owner.integrity.key_independently_supplied,
        css="bad" if bad else _budget_css(owner), units=units)


def _entry_row(r: Release) -> tuple[tuple[str, ...], str]:
    match = r.epsilon_stated_matches
    stated = fmt_eps(r.epsilon_cumulative_stated) + (" \u2713" if match else (" \u2717" if match is False else ""))
    purpose = r.refusal_reason or r.purpose
    if r.purpose_declared is False:
        purpose += " (undeclared purpose)"
    unit = r.privacy_unit if r.privacy_unit in ("record", "owner") else "record"
    cells = (str(r.sequence), r.kind, unit, r.run_id, str(r.round), fmt_when(r.timestamp), event_text(r.event),
             fmt_eps(r.epsilon_release), fmt_eps(r.epsilon_cumulative), stated, fmt_eps(r.epsilon_remaining),
             purpose, r.entry_hash[:12] + "\u2026")
    return cells, "bad" if (match is False or r.purpose_declared is False) else ""


@dataclass
class OwnerDetail:
    anchor: str
    owner: OwnerStatement
    rows: list[tuple[tuple[str, ...], str]]
    hidden: int
    open: bool
    units: list[UnitAccount]
    compared: list[list[tuple[str, str, bool]]]  # per unit: PLD, RDP (and the enforced one, if another)


def registry_groups(owners: list[OwnerStatement]) -> list[dict[str, Any]]:
    """Owners with the same registry entries, one card each (the per-owner fields listed by value)."""
    groups: dict[str, list[OwnerStatement]] = {}
    for o in owners:
        shared = [i for i in o.epsilon_registry if i["field"] not in PER_OWNER_FIELDS]
        groups.setdefault(json.dumps(shared, sort_keys=True, default=str), []).append(o)
    cards = []
    for members in groups.values():
        rows = []
        for item in members[0].epsilon_registry:
            if item["field"] in PER_OWNER_FIELDS and len(members) > 1:
                rows.append({"label": item["label"], "value": _per_owner_values(members, item["field"]),
                             "evidence": item["evidence"]})
            else:
                rows.append({"label": item["label"], "value": value_text(item["value"]), "evidence": item["evidence"]})
        names = ", ".join(m.owner_id for m in members)
        cards.append({"names": names if len(names) <= 300 else names[:300] + "\u2026", "rows": rows})
    return cards


def _per_owner_values(members: list[OwnerStatement], field: str, limit: int = 12) -> list[str]:
    """A per-owner registry field: each distinct value once, with the owners that have it (never one sentence
    repeated per owner, never '. ;')."""
    by_value: dict[str, list[str]] = {}
    for m in members:
        by_value.setdefault(_registry_value(_item(m, field)).rstrip(". "), []).append(m.owner_id)
    lines = []
    for value, owners in list(by_value.items())[:limit]:
        who = ", ".join(owners[:8]) + (f" and {len(owners) - 8} more" if len(owners) > 8 else "")
        lines.append(value + "." if len(by_value) == 1 else f"{who}: {value}.")
    if len(by_value) > limit:
        lines.append(f"\u2026 {len(by_value) - limit} more values: see the owners table")
    return lines


def _item(owner: OwnerStatement, field: str) -> Any:
    return next(i["value"] for i in owner.epsilon_registry if i["field"] == field)


def _registry_value(value: Any) -> str:
    if isinstance(value, list):
        return "; ".join(setting_text(x) if isinstance(x, dict) else str(x) for x in value)
    return fmt_eps(value) if isinstance(value, (float, int)) else str(value)


def _view(report: Report, figures: list | None) -> dict[str, Any]:
    status = report.status
    owners_ranked = report.owners_by_budget_used()
    anchors = {o.owner_id: f"owner-{i}" for i, o in enumerate(report.owners)}
    limit = entry_limit(len(report.owners))
    details = []
    for owner in owners_ranked:
        shown = owner.entries[-limit:]
        views = owner.unit_views()
        details.append(OwnerDetail(anchors[owner.owner_id], owner, [_entry_row(r) for r in shown],
                                   len(owner.entries) - len(shown), len(report.owners) == 1, views,
                                   [compared(u, tuple(a.accountant for a in u.epsilon_by_accountant)) for u in views]))
    images = {f.key: {"caption": f.caption, "uri": "data:image/png;base64," + base64.b64encode(f.png).decode("ascii")}
              for f in (figures or [])}
    history = report.history
    evaluation = history.federated_evaluation if history else None
    latest_eval = sorted(((o, o.federated_evaluation.latest) for o in report.owners
                          if o.federated_evaluation and o.federated_evaluation.latest),
                         key=lambda x: (x[1].accuracy is None, x[1].accuracy or 0.0, x[0].owner_id))
    kind, verdict = banner(report)
    sections = build_sections(report)
    versions = ", ".join(f"{k} {v}" for k, v in report.generator["versions"].items() if v)
    return {
        "r": report, "s": report.summary, "status": status, "kind": kind, "verdict": verdict, "versions": versions,
        "sections": sections, "images": images, "anchors": anchors,
        "owner_rows": [_owner_row(o, anchors[o.owner_id]) for o in owners_ranked],
        "show_experiment": bool(report.summary.experiment_id),
        "several_units": len(report.summary.units) > 1, "compared_names": [a.upper() for a in COMPARED_ACCOUNTANTS],
        "enforced_mark": ENFORCED_MARK, "unit_label": unit_label,
        "alerts": status.budget_alerts[:ALERTS_SHOWN], "alerts_more": max(0, len(status.budget_alerts) - ALERTS_SHOWN),
        "details": details, "entry_limit": limit,
        "latest_eval": latest_eval, "evaluation": evaluation,
        "collapse": COLLAPSE_ABOVE, "content_hash": report.document["content_hash"]["value"],
        "single": len(report.owners) == 1,
        "banner_notes": banner_notes(status),
    }


def banner(report: Report) -> tuple[str, str]:
    """The banner's CSS class and verdict line, from the decision's level (one rule: :mod:`.decision`).

    Red when anything is not intact; amber when an owner is near or over a budget, a guarantee is weak
    (owner-level too) or another problem stands; green otherwise.
    """
    status = report.status
    level = report.decision.level if report.decision else ("red" if not status.intact else
                                                           ("green" if status.ok else "amber"))
    if level == "red" or not status.intact:
        return "broken", "LEDGER NOT INTACT \u2014 TAMPERING OR DAMAGE DETECTED" if not status.intact else \
            "NOT INTACT: AN OWNER'S LEDGER CANNOT BE RELIED ON"
    if level == "amber":
        return ("problem" if not status.ok else "caution"), \
            ("INTACT, WITH PROBLEMS" if not status.ok else "INTACT, WITH CAUTIONS: SEE WHAT TO DECIDE")
    return "intact", "INTACT"


# --------------------------------------------------------------------------- rendering


@lru_cache(maxsize=1)
def environment():
    """The jinja2 environment: package templates, autoescaping on for everything."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("privfl.privacy.report", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(eps=fmt_eps, when=fmt_when, pct=percent, num=fmt_num, odds=odds_text, odds_short=odds_short,
                       event=event_text, setting=setting_text, value=value_text, unit_label=unit_label,
                       rounds_left=rounds_left_text)
    env.globals.update(ev_short=ev.SHORT, ev_descriptions=ev.DESCRIPTIONS)
    return env


def render_html(report: Report, figures: list | None = None) -> str:
    """The whole page; ``figures``: pictures already drawn (default: drawn now; ``[]``: none)."""
    if figures is None:
        from privfl.privacy.report.plots import report_figures

        figures = report_figures(report)
    return environment().get_template("report.html.j2").render(**_view(report, figures))


def write_html(report: Report, path: str | Path, figures: list | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(report, figures), encoding="utf-8")
    return path


__all__ = ["ENFORCED_MARK", "HTML_ENTRY_ROWS", "compared", "entry_limit", "environment", "fmt_eps", "render_html",
           "rounds_left_text", "setting_text", "write_html"]
