"""The report as one self-contained HTML file: inline CSS, plots as base64 PNG, no script.

Nothing is fetched when the file opens (no external CSS, fonts, scripts or images), so
it reads the same offline, in an archive, or attached to an e-mail.  A ledger that
failed verification turns the banner at the top red and says which entry is bad.
"""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path
from typing import Any

from privfl.privacy.report import evidence as ev
from privfl.privacy.report.build import Report

CSS = """
:root { --ink:#1b2631; --muted:#5d6d7e; --line:#d5d8dc; --ok:#1e8449; --bad:#b03a2e; --warn:#9a7d0a; }
* { box-sizing: border-box; }
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; color: var(--ink);
       margin: 0 auto; padding: 0 2rem 3rem; line-height: 1.45; font-size: 15px; max-width: 1280px; }
.scroll { overflow-x: auto; }
.when { white-space: nowrap; }
h1 { font-size: 1.6rem; margin: 1.2rem 0 0.2rem; }
h2 { font-size: 1.25rem; border-bottom: 2px solid var(--line); padding-bottom: 0.2rem; margin-top: 2.2rem; }
h3 { font-size: 1.05rem; margin: 1.4rem 0 0.4rem; }
.meta, .caption, .small { color: var(--muted); font-size: 0.85rem; }
.banner { margin: 1rem 0; padding: 0.9rem 1.2rem; border-radius: 6px; font-size: 1.05rem; }
.banner.intact { background: #e9f7ef; border: 2px solid var(--ok); }
.banner.broken { background: #fdedec; border: 3px solid var(--bad); }
.banner.problem { background: #fef5e7; border: 2px solid #ca6f1e; }
.banner .verdict { font-weight: 700; font-size: 1.3rem; }
.banner.intact .verdict { color: var(--ok); }
.banner.broken .verdict { color: var(--bad); }
.banner ul { margin: 0.4rem 0 0; }
.banner-notes { margin-top: 0.5rem; padding: 0.3rem 0.8rem; border-left: 4px solid var(--warn); background: #fef9e7;
                font-size: 0.9rem; }
.warnings { background: #fef9e7; border-left: 4px solid var(--warn); padding: 0.5rem 1rem; margin: 0.6rem 0; }
nav { font-size: 0.9rem; margin: 0.5rem 0 1rem; }
nav a { margin-right: 0.9rem; color: #1f618d; }
.cards { display: flex; flex-wrap: wrap; gap: 0.7rem; margin: 0.8rem 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 0.5rem 0.8rem; min-width: 150px; }
.card .k { color: var(--muted); font-size: 0.8rem; }
.card .v { font-size: 1.25rem; font-weight: 600; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.86rem; }
th, td { border: 1px solid var(--line); padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f4f6f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.bad td { background: #fdedec; }
.mono { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 0.8rem; }
.ev { display: inline-block; border-radius: 3px; padding: 0 0.35rem; font-size: 0.72rem; white-space: nowrap;
      border: 1px solid; }
.ev-ledger-verified, .ev-recomputed, .ev-checked-at-report-time { color: var(--ok); border-color: var(--ok); }
.ev-ledger-unverified { color: #fff; background: var(--bad); border-color: var(--bad); }
.ev-owner-declared, .ev-owner-signed-partial { color: #6c3483; border-color: #6c3483; }
.ev-run-history { color: #1f618d; border-color: #1f618d; }
.ev-privfl-design { color: var(--muted); border-color: var(--muted); }
.ev-not-declared { color: var(--warn); border-color: var(--warn); }
.st { font-weight: 600; }
.st-met { color: var(--ok); } .st-failed, .st-not-met { color: var(--bad); }
.st-partly-met, .st-limitation { color: #ca6f1e; } .st-not-evidenced, .st-not-checked { color: var(--muted); }
span.ok { color: var(--ok); font-weight: 600; } span.bad { color: var(--bad); font-weight: 700; }
figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
details { margin: 0.3rem 0; } summary { cursor: pointer; font-weight: 600; }
.registry { border: 1px solid var(--line); border-radius: 6px; padding: 0.4rem 1rem; margin: 0.8rem 0; }
pre { background: #f4f6f7; padding: 0.6rem; overflow-x: auto; font-size: 0.8rem; }
@media print { nav { display: none; } details { display: block; } }
"""


def _e(value: Any) -> str:
    return escape("" if value is None else str(value))


def _eps(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if value == "inf":
        return "\u221e"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}g}"
    return _e(value)


def _when(timestamp: str | None) -> str:
    """An ISO UTC timestamp as 'YYYY-MM-DD HH:MM:SS' (the column or card says UTC)."""
    return _e((timestamp or "").replace("T", " ").removesuffix("Z"))


def _badge(evidence: str) -> str:
    return f'<span class="ev ev-{_e(evidence)}" title="{_e(ev.DESCRIPTIONS.get(evidence, ""))}">' \
           f'{_e(ev.SHORT.get(evidence, evidence))}</span>'


def _value(value: Any) -> str:
    if value is None:
        return '<span class="small">not declared</span>'
    if isinstance(value, list):
        if not value:
            return '<span class="small">none</span>'
        if all(isinstance(v, dict) for v in value):
            return "<br>".join(_e(setting_text(v)) for v in value)
        return "<ul>" + "".join(f"<li>{_e(v)}</li>" for v in value) + "</ul>"
    if isinstance(value, float):
        return _eps(value)
    return _e(value)


def _table(headers: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(row) + "</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _td(value: Any, num: bool = False, raw: bool = False) -> str:
    content = value if raw else _e(value)
    return f'<td class="num">{content}</td>' if num else f"<td>{content}</td>"


def render_html(report: Report, figures: list[tuple[str, str, Any]] | None = None) -> str:
    from privfl.privacy.report.plots import png_bytes, report_figures  # matplotlib: only when drawing

    doc = report.document
    status = doc["status"]
    s = doc["summary"]
    figures = report_figures(doc) if figures is None else figures
    images = {key: (caption, base64.b64encode(png_bytes(fig)).decode("ascii")) for key, caption, fig in figures}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(doc['title'])}</title><style>{CSS}</style></head><body>",
    ]
    parts.append(_banner(status))
    parts.append(f"<h1>{_e(doc['title'])}</h1>")
    versions = ", ".join(f"{k} {v}" for k, v in doc["generator"]["versions"].items() if v)
    parts.append(f'<p class="meta">Generated {_e(doc["generated_at"])} by {_e(doc["generator"]["name"])} ({_e(versions)}). '
                 f'Schema {_e(doc["report_type"])} {_e(doc["schema_version"])}. Every epsilon here is recomputed from '
                 "the DP events in the ledger with the accountant each entry names.</p>")
    sections = [("summary", "Summary"), ("budgets", "Budgets per owner"), ("utility", "Privacy and utility"),
                ("refusals", "Refused releases"), ("integrity", "Ledger integrity"), ("registry", "Epsilon registry"),
                ("gdpr", "GDPR"), ("limitations", "What this report cannot prove"), ("entries", "All entries"),
                ("recompute", "How to recompute")]
    if not doc.get("history"):
        sections = [x for x in sections if x[0] != "utility"]
    parts.append("<nav>" + "".join(f'<a href="#{k}">{_e(t)}</a>' for k, t in sections) + "</nav>")

    # -- summary
    spent_max = s["epsilon_spent_max"]
    cards = [
        ("Verdict", f'<span class="{"ok" if status["intact"] else "bad"}">{_e(status["verdict"])}</span>'),
        ("Data owners", _e(s["owners"])),
        ("Releases (charges)", _e(s["charges"])),
        ("Refused releases", _e(s["refusals"])),
        ("Highest \u03b5 spent", f"{_eps(spent_max)} <span class='small'>({_e(s['epsilon_spent_max_owner'])})</span>"
         if spent_max is not None else "n/a"),
        ("\u03b4", _e(", ".join(f"{d:g}" for d in s["deltas"]))),
        ("Privacy unit", _e(", ".join(s["privacy_units"]))),
        ("Accountant", _e(", ".join(s["accountants"]))),
        ("Period (UTC)", f"<span class='small'>{_when(s['first_entry'])}<br>to {_when(s['last_entry'])}</span>"),
    ]
    if s.get("final_test_accuracy") is not None:
        cards.append(("Final test accuracy", f"{s['final_test_accuracy']:.3f}"))
    parts.append('<h2 id="summary">Summary</h2><div class="cards">' + "".join(
        f'<div class="card"><div class="k">{k}</div><div class="v">{v}</div></div>' for k, v in cards) + "</div>")
    parts.append(f"<p><b>In words.</b> {_e(s['in_words'])}</p>")
    parts.append("<p class='small'>Each value is labelled with where it comes from: "
                 f"{_badge(ev.LEDGER_VERIFIED)} and {_badge(ev.RECOMPUTED)} are proven by the verified ledger; "
                 f"{_badge(ev.OWNER_DECLARED)} is the owner's statement; {_badge(ev.PRIVFL_DESIGN)} is what the "
                 f"software does by construction, not evidenced by the ledger; {_badge(ev.RUN_HISTORY)} comes "
                 "from the unsigned run history. See <a href='#recompute'>Evidence labels</a>.</p>")
    parts.append(f"<p>Ledger files: {s['ledger_files']}; entries: {s['entries']}; runs: "
                 f"{_e(', '.join(s['runs']) or 'none')}; mechanisms: {_e(', '.join(s['mechanisms']) or 'none')}."
                 + (f" Owners over budget: <span class='bad'>{_e(', '.join(s['owners_over_budget']))}</span>."
                    if s["owners_over_budget"] else "") + "</p>")

    # -- budgets
    parts.append('<h2 id="budgets">Budgets per owner</h2>')
    for key in ("cumulative_epsilon", "budget_left"):
        if key in images:
            parts.append(_figure(*images[key]))
    parts.append("<p>Per owner: what its ledger says was spent, under which guarantee, and what is left of its "
                 "lifetime budget. Hover over a label for where a value comes from.</p>")
    rows, classes = [], []
    for o in doc["owners"]:
        integ = o["integrity"]
        verdict = f'<span class="{"ok" if integ["intact"] else "bad"}">{_e(integ["verdict"])}</span>'
        key = (f'key <span class="mono">{_e((integ["key_fingerprint"] or "")[:12])}\u2026</span> '
               + ("supplied" if integ["key_independently_supplied"] else "<b>from the file</b>"))
        unit = ", ".join(o["privacy_units"]) or "unspecified"
        params = "<br>".join(
            _e(f"\u03c3={st['noise_multiplier']:g}" + (f" q={st['sample_rate']:.4g}" if st["sample_rate"] else "")
               + f" C={st['clipping_norm']:g}") + f"<br><span class='small'>{st['steps_total']} steps in "
            f"{st['releases']} release{'s' if st['releases'] != 1 else ''}</span>"
            for st in o["mechanism_settings"] if st["noise_multiplier"] is not None)
        used = o["budget_used_fraction"]
        delta_text = f"{o['delta']:g}" if o["delta"] is not None else "-"
        spent_ev = integ["evidence"] if not integ["intact"] else (
            ev.RECOMPUTED if o["epsilon_spent_basis"] == ev.RECOMPUTED else ev.OWNER_SIGNED_PARTIAL)
        rows.append([
            _td(f"<b class='when'>{_e(o['owner_id'])}</b>", raw=True),
            _td(f"{_eps(o['epsilon_spent'])}<br>{_badge(spent_ev)}", num=True, raw=True),
            _td(_eps(o["epsilon_budget"]), num=True), _td(_eps(o["epsilon_remaining"]), num=True),
            _td(f"{used * 100:.0f}%" if isinstance(used, float) else "-", num=True),
            _td(f"{o['charges']} / {o['refusals']}", num=True),
            _td(unit), _td(params or "-", raw=True),
            _td(f"{_e(o['accountant'])}<br>\u03b4 = {delta_text}", raw=True),
            _td(f"<span class='when'>{_when(o['first_entry'])}</span><br><span class='when'>"
                f"{_when(o['last_entry'])}</span>", raw=True),
            _td("; ".join(o["purposes"])), _td(f"{verdict}<br><span class='small'>{key}</span>", raw=True)])
        classes.append("bad" if (not integ["intact"] or o["over_budget"]) else "")
    parts.append(_table(["owner", "\u03b5 spent", "budget", "\u03b5 left", "used", "releases / refused",
                         "privacy unit", "mechanism (DP-SGD)", "accountant, \u03b4", "first / last entry (UTC)",
                         "purpose", "ledger"], rows, classes))

    # -- utility
    history = doc.get("history")
    if history:
        parts.append('<h2 id="utility">Privacy and utility</h2>')
        parts.append(f"<p>Run history {_badge(ev.RUN_HISTORY)} <span class='mono'>{_e(history['source'])}</span>, "
                     f"experiment {_e(history['experiment'])} (status {_e(history['status'])}). {_e(history['note'])}.</p>")
        if "privacy_utility" in images:
            parts.append(_figure(*images["privacy_utility"]))
        rows = [[_td(r["round"], num=True),
                 _td(f"{r['test_accuracy']:.4f}" if r["test_accuracy"] is not None else "-", num=True),
                 _td(f"{r['test_loss']:.4f}" if r["test_loss"] is not None else "-", num=True),
                 _td(r["participants"], num=True), _td(r["refused"], num=True),
                 _td(_eps(r["epsilon_min"]), num=True), _td(_eps(r["epsilon_median"]), num=True),
                 _td(_eps(r["epsilon_max"]), num=True)] for r in history["rounds"]]
        parts.append("<details><summary>Per round</summary>" + _table(
            ["round", "test accuracy", "test loss", "owners trained", "refused", "\u03b5 min", "\u03b5 median",
             "\u03b5 max"], rows) + "</details>")

    # -- refusals
    parts.append('<h2 id="refusals">Refused releases</h2>')
    refusals = [(o["owner_id"], r) for o in doc["owners"] for r in o["refused_releases"]]
    if refusals:
        parts.append("<p>Each row is a release the owner refused because it would have crossed its budget (or for "
                     "the reason given). A refusal releases nothing and is never charged.</p>")
        parts.append(_table(["owner", "run", "round", "time (UTC)", "\u03b5 spent then", "requested release",
                             "reason"], [[
                                 _td(owner), _td(r["run_id"]), _td(r["round"], num=True),
                                 _td(f"<span class='when'>{_when(r['timestamp'])}</span>", raw=True),
                                 _td(_eps(r["epsilon_spent_before"]), num=True),
                                 _td(_event_text(r["requested_event"])), _td(r["reason"])]
                                 for owner, r in refusals]))
    else:
        parts.append("<p>No release was refused.</p>")

    # -- integrity
    parts.append('<h2 id="integrity">Ledger integrity</h2>')
    parts.append("<p>Each file was verified with <span class='mono'>privfl.privacy.ledger.verify</span>: SQLite "
                 "integrity and schema, every Ed25519 signature, the sha256 hash chain, the indexed columns against "
                 "the signed bytes. Every cumulative epsilon an entry states was compared with this report's "
                 "recomputation from the events (the check verify makes). Owner ledgers were also checked against "
                 "the receipts the federation ledger holds (detects entries removed from the end).</p>")
    rows, classes = [], []
    for lg in doc["ledgers"]:
        fps = "<br>".join(f"{_e(o)}: <span class='mono'>{_e(fp[:16])}\u2026</span>"
                          for o, fp in list(lg["key_fingerprints"].items())[:6])
        if len(lg["key_fingerprints"]) > 6:
            fps += f"<br>\u2026 and {len(lg['key_fingerprints']) - 6} more"
        rows.append([
            _td(lg["path"]), _td(lg["ledger_kind"]), _td(len(lg["owners"]), num=True), _td(lg["entries"], num=True),
            _td(f'<span class="{"ok" if lg["intact"] else "bad"}">{_e(lg["verdict"])}</span>'
                + (f"<br>{_e(lg['problem'])}" if lg["problem"] else ""), raw=True),
            _td(f"{lg['entries_checked']} / {lg['epsilons_checked']}", num=True),
            _td("yes" if lg["keys_independently_supplied"] else
                f"<b>no</b> ({len(lg['owners_with_supplied_keys'])} of {len(lg['owners'])})", raw=True),
            _td(fps, raw=True),
            _td("<br>".join(_e(n) for n in lg["notes"][:5]) + (f"<br>\u2026 {len(lg['notes']) - 5} more"
                                                                 if len(lg["notes"]) > 5 else ""), raw=True)])
        classes.append("" if lg["intact"] else "bad")
    parts.append(_table(["file", "kind", "owners", "entries", "verdict", "entries / epsilons checked",
                         "keys supplied independently", "key fingerprints (sha256 of the public key)", "notes"],
                        rows, classes))
    if status["warnings"]:
        parts.append('<div class="warnings"><b>Notes</b><ul>' + "".join(f"<li>{_e(w)}</li>" for w in status["warnings"])
                     + "</ul></div>")

    # -- registry
    parts.append('<h2 id="registry">Epsilon registry</h2>')
    parts.append("<p>The fields proposed for an &ldquo;epsilon registry&rdquo; by Dwork, Kohli and Mulligan "
                 "(&ldquo;Differential Privacy in Practice: Expose Your Epsilons!&rdquo;, Journal of Privacy and "
                 "Confidentiality, 2019): what the guarantee is, what it protects, what was released, how releases "
                 "compose, over which period, and who set the budget. Owners with the same entries share a card.</p>")
    parts.append(_registry(doc["owners"]))

    # -- GDPR
    parts.append('<h2 id="gdpr">GDPR</h2>')
    parts.append("<h3>Record of processing activities (Art. 30)</h3>")
    for section in doc["gdpr"]["article_30"]:
        who = ", ".join(section["owners"]) or "no owner in this report"
        source = (f"processing record <span class='mono'>{_e(section['record'])}</span>"
                  + (f" ({_e(section['record_id'])})" if section["record_id"] else "")
                  + (f", last reviewed {_e(section['last_reviewed'])}" if section["last_reviewed"] else "")
                  if section["record"] else
                  "<b>no processing record given</b> (pass <span class='mono'>--processing-record record.toml</span>;"
                  " see docs/report-schema.md)")
        parts.append(f"<p>Owners: {_e(_short_list(who))}. Source: {source}.</p>")
        parts.append(_table(["", "reference", "value", "source"], [[
            _td(i["label"]), _td(i["reference"]), _td(_value(i["value"]), raw=True), _td(_badge(i["evidence"]), raw=True)]
            for i in section["items"]]))
    for key, title in (("article_25", "Data protection by design and by default (Art. 25)"),
                       ("article_32", "Security of processing (Art. 32)")):
        parts.append(f"<h3>{_e(title)}</h3>")
        parts.append(_table(["measure", "reference", "status", "evidence", "detail"], [[
            _td(m["measure"]), _td(m["reference"]),
            _td(f'<span class="st st-{_e(m["status"].replace(" ", "-"))}">{_e(m["status"])}</span>', raw=True),
            _td(_badge(m["evidence"]), raw=True), _td(m["detail"])] for m in doc["gdpr"][key]]))

    # -- limitations
    parts.append('<h2 id="limitations">What this report cannot prove</h2><ul>'
                 + "".join(f"<li>{_e(n)}</li>" for n in doc["limitations"]) + "</ul>")

    # -- entries
    parts.append('<h2 id="entries">All entries</h2>')
    parts.append("<p>Every entry of every owner, with the numbers each figure is computed from. "
                 "&ldquo;\u03b5 alone&rdquo;: the release by itself; &ldquo;\u03b5 cumulative&rdquo;: all the "
                 "owner's charges so far composed (per-release epsilons do not add up to it: composition is "
                 "tighter than a sum); &ldquo;stated&rdquo;: what the signed entry says, checked against the "
                 "recomputation.</p>")
    for o in doc["owners"]:
        parts.append(_owner_entries(o))

    # -- recompute
    rec = doc["recompute"]
    parts.append('<h2 id="recompute">How to recompute</h2>')
    parts.append(f"<p>{_e(rec['how'])}</p><pre>{_e(rec['python'])}</pre>")
    parts.append(f"<p class='small'>Stated and recomputed epsilons are compared to a relative {rec['epsilon_rel_tol']:g} "
                 f"(absolute {rec['epsilon_abs_tol']:g}). Neighbouring relation: {_e(rec['neighbouring_relation'])}. "
                 "The JSON version of this report holds every number and the signed entry bytes.</p>")
    parts.append("<h3>Evidence labels</h3>" + _table(["label", "meaning"], [
        [_td(_badge(k), raw=True), _td(v)] for k, v in doc["evidence_levels"].items()]))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _banner(status: dict[str, Any]) -> str:
    kind = "intact" if status["intact"] and status["ok"] else ("broken" if not status["intact"] else "problem")
    verdict = "LEDGER NOT INTACT \u2014 TAMPERING OR DAMAGE DETECTED" if not status["intact"] else (
        "INTACT" if status["ok"] else "INTACT, WITH PROBLEMS")
    items = "".join(f"<li>{_e(p)}</li>" for p in status["problems"][:20])
    more = f"<li>\u2026 {len(status['problems']) - 20} more</li>" if len(status["problems"]) > 20 else ""
    listing = f"<ul>{items}{more}</ul>" if items else ""
    notes = "".join(f"<li>{_e(w)}</li>" for w in status["warnings"][:6])
    if len(status["warnings"]) > 6:
        notes += f"<li>\u2026 {len(status['warnings']) - 6} more under Ledger integrity</li>"
    notes = f'<div class="banner-notes"><b>Notes</b><ul>{notes}</ul></div>' if notes else ""
    return (f'<div class="banner {kind}" id="verdict" role="alert"><div class="verdict">{verdict}</div>'
            f"<div>{_e(status['headline'])}</div>{listing}{notes}</div>")


def _figure(caption: str, data: str) -> str:
    return (f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{data}">'
            f'<figcaption class="caption">{_e(caption)}</figcaption></figure>')


def _event_text(event: dict[str, Any] | None) -> str:
    if not event or event.get("noise_multiplier") is None:
        return (event or {}).get("type", "-") or "-"
    text = f"\u03c3={event['noise_multiplier']:g}"
    if event.get("sample_rate") is not None:
        text += f" q={event['sample_rate']:.4g} steps={event['steps']}"
    return text


def _short_list(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[:limit] + "\u2026"


PER_OWNER_FIELDS = {"epsilon", "epsilon_remaining", "time_period", "releases", "mechanism_parameters"}


def _registry(owners: list[dict[str, Any]]) -> str:
    groups: dict[str, list[dict[str, Any]]] = {}
    for o in owners:
        shared = [i for i in o["epsilon_registry"] if i["field"] not in PER_OWNER_FIELDS]
        groups.setdefault(json.dumps(shared, sort_keys=True, default=str), []).append(o)
    out = []
    for members in groups.values():
        first = members[0]
        names = ", ".join(m["owner_id"] for m in members)
        rows = []
        for item in first["epsilon_registry"]:
            if item["field"] in PER_OWNER_FIELDS and len(members) > 1:
                values = "; ".join(f"{m['owner_id']}: {_registry_value(_item(m, item['field']))}" for m in members[:12])
                if len(members) > 12:
                    values += f"; \u2026 ({len(members)} owners: see Budgets per owner)"
                rows.append([_td(item["label"]), _td(values), _td(_badge(item["evidence"]), raw=True)])
            else:
                rows.append([_td(item["label"]), _td(_value(item["value"]) if not isinstance(item["value"], float)
                                                     else _eps(item["value"]), raw=True),
                             _td(_badge(item["evidence"]), raw=True)])
        out.append(f'<div class="registry"><h3>{_e(_short_list(names, 300))}</h3>'
                   + _table(["field", "value", "source"], rows) + "</div>")
    return "".join(out)


def _item(owner: dict[str, Any], field: str) -> Any:
    return next(i["value"] for i in owner["epsilon_registry"] if i["field"] == field)


def setting_text(setting: dict[str, Any]) -> str:
    """One mechanism setting of a registry, e.g. 'sigma=1 q=0.07692 C=1: 260 steps in 20 releases'."""
    if setting.get("noise_multiplier") is None:
        return str(setting.get("mechanism", "?"))
    text = f"\u03c3={setting['noise_multiplier']:g}"
    if setting.get("sample_rate") is not None:
        text += f" q={setting['sample_rate']:.4g}"
    text += f" C={setting['clipping_norm']:g}: {setting['steps_total']} steps in {setting['releases']} release"
    return text + ("s" if setting["releases"] != 1 else "")


def _registry_value(value: Any) -> str:
    if isinstance(value, list):
        return "; ".join(setting_text(x) if isinstance(x, dict) else str(x) for x in value)
    return _eps(value) if isinstance(value, (float, int)) or value == "inf" else str(value)


def _owner_entries(o: dict[str, Any]) -> str:
    integ = o["integrity"]
    head = integ["head"]
    lines = [
        f"source <span class='mono'>{_e(o['source']['ledger'])}</span> ({_e(o['source']['ledger_kind'])} ledger"
        + ("" if o["source"]["chain_complete"] else ", partial chain") + ")",
        f"key <span class='mono'>{_e(integ['key_fingerprint'])}</span> "
        + ("(supplied independently)" if integ["key_independently_supplied"] else "(read from the ledger file)"),
        f"head: entry {head['sequence']}, sha256 <span class='mono'>{_e(head['hash'])}</span>" if head else "empty",
    ]
    if integ["checked_against"]:
        lines.append("checked against " + ", ".join(f"<span class='mono'>{_e(p)}</span>" for p in integ["checked_against"]))
    if integ["problem"]:
        lines.append(f"<span class='bad'>{_e(integ['problem'])}</span>")
    rows, classes = [], []
    for r in o["entries"]:
        match = r["epsilon_stated_matches"]
        rows.append([
            _td(r["sequence"], num=True), _td(r["kind"]), _td(r["run_id"]), _td(r["round"], num=True),
            _td(f"<span class='when'>{_when(r['timestamp'])}</span>", raw=True), _td(_event_text(r["event"])),
            _td(f"{r['clipping_norm']:g}", num=True),
            _td(r["privacy_unit"]), _td(f"{r['delta']:g}", num=True), _td(r["accountant"]),
            _td(_eps(r["epsilon_release"], 6), num=True), _td(_eps(r["epsilon_cumulative"], 6), num=True),
            _td(_eps(r["epsilon_cumulative_stated"], 6) + (" \u2713" if match else (" \u2717" if match is False else "")),
                num=True),
            _td(f"{r['epsilon_budget']:g}", num=True), _td(_eps(r["epsilon_remaining"], 6), num=True),
            _td(r["refusal_reason"] or r["purpose"]),
            _td(f"<span class='mono'>{_e(r['entry_hash'][:12])}\u2026</span>", raw=True)])
        classes.append("bad" if match is False else "")
    verdict = f'<span class="{"ok" if integ["intact"] else "bad"}">{_e(integ["verdict"])}</span>'
    summary = (f"{_e(o['owner_id'])}: {o['charges']} releases, {o['refusals']} refused, \u03b5 {_eps(o['epsilon_spent'])}"
               f" of {_eps(o['epsilon_budget'])} \u2014 {verdict}")
    table = _table(["seq", "kind", "run", "round", "time (UTC)", "release", "clip C", "unit", "\u03b4", "acct",
                    "\u03b5 alone", "\u03b5 cumulative", "stated", "budget", "\u03b5 left", "purpose / reason",
                    "entry sha256"], rows, classes)
    return f"<details><summary>{summary}</summary><p class='small'>{'<br>'.join(lines)}</p>{table}</details>"


def write_html(report: Report, path: str | Path, figures: list | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(report, figures), encoding="utf-8")
    return path
