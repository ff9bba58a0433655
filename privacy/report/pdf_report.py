"""The report as PDF, drawn with matplotlib alone (PdfPages: text pages and the figures).

No extra dependency: text is laid out line by line on A4 pages in the PDF core fonts
(Helvetica, Courier: nothing to embed, about ten times faster to write than embedded
TrueType), tables in Courier.  The core fonts' encoding has no Greek, so text pages
spell epsilon, delta and sigma out; the figures keep their own fonts.  The per-entry
appendix is capped at :data:`MAX_ENTRY_ROWS` rows; the JSON and CSV versions always
hold every entry.
"""

from __future__ import annotations

import json
import textwrap
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from privfl.privacy.report import evidence as ev
from privfl.privacy.report.build import Report
from privfl.privacy.report.html_report import PER_OWNER_FIELDS, setting_text
from privfl.privacy.report.plots import report_figures

MAX_ENTRY_ROWS = 1500
FIGURE_DPI = 150
# Characters the core fonts' WinAnsi encoding lacks, spelled out; anything else missing becomes "?".
_SPELLED = str.maketrans({"\u03b5": "eps", "\u03b4": "delta", "\u03c3": "sigma", "\u221e": "inf",
                          "\u2713": "ok", "\u2717": "X", "\u2264": "<=", "\u2265": ">=", "\u2212": "-"})


def _latin(text: str) -> str:
    text = str(text).translate(_SPELLED)
    return text.encode("cp1252", errors="replace").decode("cp1252")

PAGE = (8.27, 11.69)  # A4, inches
MARGIN = 0.55
RED, GREEN, ORANGE, GREY = "#b03a2e", "#1e8449", "#ca6f1e", "#5d6d7e"


def _eps(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if value == "inf":
        return "inf"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}g}"
    return str(value)


class _Pages:
    """Lines of text flowed onto A4 pages."""

    STYLES = {
        "title": dict(size=15, weight="bold", family="Helvetica", height=0.34),
        "h1": dict(size=12, weight="bold", family="Helvetica", height=0.30),
        "h2": dict(size=10, weight="bold", family="Helvetica", height=0.24),
        "body": dict(size=8.5, weight="medium", family="Helvetica", height=0.165),
        "mono": dict(size=6.3, weight="medium", family="Courier", height=0.113),
        "verdict": dict(size=13, weight="bold", family="Helvetica", height=0.30),
    }
    # Characters per line: Courier is 0.6 em wide, so 7.17 in of text at 6.3 pt hold 136.
    WRAP = {"body": 130, "mono": 135, "h2": 105, "h1": 85, "title": 70, "verdict": 70}
    TABLE_WIDTH = 135

    def __init__(self, pdf: PdfPages, footer: str) -> None:
        self.pdf = pdf
        self.footer = footer
        self.page_number = 0
        self.fig: Figure | None = None
        self.y = 0.0

    def _new_page(self) -> None:
        self.close_page()
        self.fig = Figure(figsize=PAGE)
        FigureCanvasAgg(self.fig)
        self.page_number += 1
        self.y = PAGE[1] - MARGIN

    def close_page(self) -> None:
        if self.fig is not None:
            self.fig.text(MARGIN / PAGE[0], 0.3 / PAGE[1], _latin(f"{self.footer} \u2014 page {self.page_number}"),
                          fontsize=6.5, color=GREY, family="Helvetica", fontweight="medium")
            with matplotlib.rc_context({"pdf.use14corefonts": True}):
                self.pdf.savefig(self.fig)
            self.fig = None

    def line(self, text: str, style: str = "body", color: str = "black", indent: float = 0.0) -> None:
        st = self.STYLES[style]
        if self.fig is None or self.y - st["height"] < MARGIN + 0.2:
            self._new_page()
        self.y -= st["height"]
        self.fig.text((MARGIN + indent) / PAGE[0], self.y / PAGE[1], _latin(text), fontsize=st["size"],
                      fontweight=st["weight"], family=st["family"], color=color, va="bottom")

    def text(self, text: str, style: str = "body", color: str = "black", indent: float = 0.0) -> None:
        width = self.WRAP[style] - int(indent * 14)
        for paragraph in str(text).split("\n"):
            for piece in textwrap.wrap(paragraph, width=width) or [""]:
                self.line(piece, style, color, indent)

    def gap(self, inches: float = 0.08) -> None:
        self.y -= inches

    def heading(self, text: str, level: str = "h1") -> None:
        needed = self.STYLES[level]["height"] + 4 * self.STYLES["body"]["height"]
        if self.fig is None or self.y - needed < MARGIN + 0.2:
            self._new_page()
        self.gap(0.12)
        self.line(text, level)
        self.gap(0.04)

    def table(self, headers: list[str], rows: list[list[Any]], max_width: int | None = None) -> None:
        max_width = max_width or self.TABLE_WIDTH
        cells = [[_latin(c) for c in row] for row in rows]
        widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
        while sum(widths) + 2 * len(widths) > max_width and max(widths) > 8:
            widest = widths.index(max(widths))
            widths[widest] -= 1

        def fmt(row: list[str]) -> str:
            return "  ".join((c if len(c) <= w else c[: max(w - 1, 1)] + "\u2026").ljust(w)
                             for c, w in zip(row, widths)).rstrip()

        self.line(fmt(headers), "mono", GREY)
        for row in cells:
            self.line(fmt(row), "mono", RED if row and row[-1].startswith("NOT") else "black")
        self.gap(0.06)

    def banner(self, verdict: str, headline: str, color: str) -> None:
        if self.fig is None:
            self._new_page()
        lines = textwrap.wrap(headline, width=self.WRAP["body"] - 4)
        height = 0.34 + 0.17 * len(lines) + 0.12
        top = self.y - 0.05
        self.fig.add_artist(Rectangle((MARGIN / PAGE[0], (top - height) / PAGE[1]), (PAGE[0] - 2 * MARGIN) / PAGE[0],
                                      height / PAGE[1], transform=self.fig.transFigure, facecolor=color, alpha=0.12,
                                      edgecolor=color, linewidth=2.5))
        self.y = top - 0.02
        self.line(verdict, "verdict", color, indent=0.12)
        for piece in lines:
            self.line(piece, "body", "black", indent=0.12)
        self.y = top - height - 0.08

    def figure(self, fig: Figure, caption: str) -> None:
        """The figure as an image on the A4 page (a new page when it does not fit), its caption below."""
        import io

        from matplotlib.image import imread

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=FIGURE_DPI)
        buffer.seek(0)
        pixels = imread(buffer, format="png")
        width_in, height_in = fig.get_size_inches()
        usable_w, usable_h = PAGE[0] - 2 * MARGIN, PAGE[1] - 2 * MARGIN - 0.6
        scale = min(1.0, usable_w / width_in, usable_h / height_in)
        w, h = width_in * scale, height_in * scale
        caption_h = 0.165 * len(textwrap.wrap(caption, self.WRAP["body"])) + 0.1
        if self.fig is None or self.y - h - caption_h < MARGIN + 0.2:
            self._new_page()
        self.y -= h + 0.05
        ax = self.fig.add_axes((MARGIN / PAGE[0], self.y / PAGE[1], w / PAGE[0], h / PAGE[1]))
        ax.imshow(pixels, interpolation="antialiased")
        ax.set_axis_off()
        self.text(caption, color=GREY)
        self.gap(0.1)


def render_pdf(report: Report, path: Path, figures: list | None = None) -> None:
    doc = report.document
    status = doc["status"]
    s = doc["summary"]
    figures = {key: (caption, fig) for key, caption, fig in
               (report_figures(doc) if figures is None else figures)}
    with PdfPages(path, metadata={"Title": doc["title"], "Author": "privfl report",
                                  "Subject": f"{doc['report_type']} {doc['schema_version']}",
                                  "CreationDate": datetime.now(timezone.utc)}) as pdf:
        p = _Pages(pdf, f"{doc['title']} \u2014 generated {doc['generated_at']}")
        p.line(doc["title"], "title")
        p.text(f"Generated {doc['generated_at']} by privfl "
               f"{doc['generator']['versions'].get('privfl') or ''}. Every epsilon is recomputed from the DP events in "
               "the ledger with the accountant each entry names.", color=GREY)
        p.gap(0.1)
        if not status["intact"]:
            p.banner("LEDGER NOT INTACT \u2014 TAMPERING OR DAMAGE DETECTED", status["headline"], RED)
        elif not status["ok"]:
            p.banner("INTACT, WITH PROBLEMS", status["headline"], ORANGE)
        else:
            p.banner("INTACT", status["headline"], GREEN)
        for problem in status["problems"][:30]:
            p.text(f"\u2022 {problem}", color=RED)
        for warning in status["warnings"]:
            p.text(f"\u2022 note: {warning}", color=ORANGE)

        p.heading("Summary")
        p.text(s["in_words"])
        p.gap(0.06)
        p.table(["", ""], [
            ["data owners", s["owners"]], ["releases (charges)", s["charges"]], ["refused releases", s["refusals"]],
            ["highest epsilon spent", f"{_eps(s['epsilon_spent_max'])} ({s['epsilon_spent_max_owner']})"],
            ["delta", ", ".join(f"{d:g}" for d in s["deltas"])], ["privacy unit", ", ".join(s["privacy_units"])],
            ["accountant", ", ".join(s["accountants"])], ["mechanisms", ", ".join(s["mechanisms"])],
            ["period", f"{s['first_entry']} to {s['last_entry']}"], ["runs", ", ".join(s["runs"])],
            ["final test accuracy", _eps(s.get("final_test_accuracy"))],
            ["owners over budget", ", ".join(s["owners_over_budget"]) or "none"]])

        p.heading("Budgets per owner")
        rows = []
        for o in doc["owners"]:
            used = o["budget_used_fraction"]
            rows.append([o["owner_id"], ",".join(o["privacy_units"]) or "unspecified", o["accountant"],
                         f"{o['delta']:g}" if o["delta"] is not None else "-", _eps(o["epsilon_spent"]),
                         _eps(o["epsilon_budget"]), _eps(o["epsilon_remaining"]),
                         f"{used * 100:.0f}%" if isinstance(used, float) else "-", o["charges"], o["refusals"],
                         "yes" if o["integrity"]["key_independently_supplied"] else "from file",
                         (o["integrity"]["key_fingerprint"] or "")[:16], o["integrity"]["verdict"]])
        p.table(["owner", "unit", "acct", "delta", "eps spent", "budget", "eps left", "used", "releases", "refused",
                 "key supplied", "key fingerprint", "ledger"], rows)
        settings = []
        for o in doc["owners"]:
            for st in o["mechanism_settings"]:
                settings.append([o["owner_id"], st["mechanism"], _eps(st["noise_multiplier"]),
                                 _eps(st["sample_rate"]), st["clipping_norm"], st["releases"], st["steps_total"]])
        p.heading("Mechanism parameters", "h2")
        p.table(["owner", "mechanism", "noise mult.", "sample rate", "clip norm", "releases", "steps total"], settings)
        for key in ("cumulative_epsilon", "budget_left"):
            if key in figures:
                p.figure(figures[key][1], figures[key][0])

        p.heading("Refused releases")
        refusals = [[o["owner_id"], r["run_id"], r["round"], r["timestamp"], _eps(r["epsilon_spent_before"]),
                     r["reason"]] for o in doc["owners"] for r in o["refused_releases"]]
        if refusals:
            p.table(["owner", "run", "round", "time (UTC)", "eps then", "reason"], refusals)
        else:
            p.text("No release was refused.")

        p.heading("Ledger integrity")
        p.text("Each file verified with privfl.privacy.ledger.verify: SQLite integrity and schema, every Ed25519 "
               "signature, the sha256 hash chain; every stated cumulative epsilon compared with this report's "
               "recomputation from the events; owner ledgers also checked against the federation ledger's copies of "
               "their receipts.")
        for lg in doc["ledgers"]:
            p.text(f"{lg['path']} ({lg['ledger_kind']}): {lg['verdict']}; {lg['entries']} entries, "
                   f"{lg['entries_checked']} checked, {lg['epsilons_checked']} epsilons recomputed; keys supplied "
                   f"independently: {'yes' if lg['keys_independently_supplied'] else 'no'}",
                   color=GREEN if lg["intact"] else RED)
            if lg["problem"]:
                p.text(f"first bad entry: {lg['problem']}", color=RED, indent=0.2)
            for note in lg["notes"][:5]:
                p.text(f"note: {note}", color=GREY, indent=0.2)

        history = doc.get("history")
        if history:
            p.heading("Privacy and utility (run history, unsigned)")
            p.text(f"{history['source']}: experiment {history['experiment']}, status {history['status']}. "
                   f"{history['note']}.")
            p.table(["round", "test acc.", "owners trained", "refused", "eps min", "eps median", "eps max"], [[
                r["round"], _eps(r["test_accuracy"]), r["participants"], r["refused"], _eps(r["epsilon_min"]),
                _eps(r["epsilon_median"]), _eps(r["epsilon_max"])] for r in history["rounds"]])
            if "privacy_utility" in figures:
                p.figure(figures["privacy_utility"][1], figures["privacy_utility"][0])

        p.heading("Epsilon registry (Dwork, Kohli and Mulligan 2019)")
        seen: dict[str, list[str]] = {}
        for o in doc["owners"]:
            key = json.dumps([i for i in o["epsilon_registry"]
                              if i["field"] not in PER_OWNER_FIELDS],
                             sort_keys=True, default=str)
            seen.setdefault(key, []).append(o["owner_id"])
        for o in doc["owners"]:
            group = next(g for g in seen.values() if o["owner_id"] in g)
            if group[0] != o["owner_id"]:
                continue
            p.heading(textwrap.shorten("Owners: " + ", ".join(group), 110), "h2")
            for item in o["epsilon_registry"]:
                value = item["value"]
                if item["field"] in PER_OWNER_FIELDS and len(group) > 1:
                    value = "per owner: see Budgets per owner"
                elif isinstance(value, list):
                    value = "; ".join(setting_text(x) if isinstance(x, dict) else str(x) for x in value) or "none"
                elif isinstance(value, float):
                    value = _eps(value)
                p.text(f"{item['label']} [{ev.SHORT.get(item['evidence'], item['evidence'])}]: "
                       f"{'not declared' if value is None else value}", indent=0.1)

        p.heading("GDPR: record of processing (Art. 30)")
        for section in doc["gdpr"]["article_30"]:
            p.text(f"Owners: {textwrap.shorten(', '.join(section['owners']) or 'none', 300)}. Source: "
                   + (f"processing record {section['record']}" if section["record"] else
                      "no processing record given (--processing-record; see docs/report-schema.md)"),
                   color=GREY)
            for item in section["items"]:
                value = item["value"]
                if isinstance(value, list):
                    value = "; ".join(map(str, value)) or "none"
                p.text(f"{item['label']} ({item['reference']}) [{ev.SHORT.get(item['evidence'], item['evidence'])}]: "
                       f"{'not declared' if value is None else value}", indent=0.1)
        for key, title in (("article_25", "GDPR: data protection by design and by default (Art. 25)"),
                           ("article_32", "GDPR: security of processing (Art. 32)")):
            p.heading(title)
            for m in doc["gdpr"][key]:
                colour = {"met": GREEN, "failed": RED, "not met": RED}.get(m["status"], ORANGE
                                                                       if m["status"] in ("partly met", "limitation")
                                                                       else GREY)
                p.text(f"{m['measure']} ({m['reference']}): {m['status'].upper()} "
                       f"[{ev.SHORT.get(m['evidence'], m['evidence'])}]", color=colour)
                p.text(m["detail"], indent=0.2)

        p.heading("What this report cannot prove")
        for note in doc["limitations"]:
            p.text(f"\u2022 {note}")
        p.heading("Evidence labels")
        for key, text in doc["evidence_levels"].items():
            p.text(f"{ev.SHORT.get(key, key)} ({key}): {text}", indent=0.1)
        p.heading("How to recompute")
        p.text(doc["recompute"]["how"])
        for line in doc["recompute"]["python"].splitlines():
            p.line(line, "mono")

        p.heading("All entries")
        total = sum(len(o["entries"]) for o in doc["owners"])
        if total > MAX_ENTRY_ROWS:
            p.text(f"{total} entries: the first {MAX_ENTRY_ROWS} are listed; the JSON and CSV versions of this report "
                   "hold every entry.", color=ORANGE)
        shown = 0
        for o in doc["owners"]:
            if shown >= MAX_ENTRY_ROWS:
                break
            rows = []
            for r in o["entries"][: MAX_ENTRY_ROWS - shown]:
                e = r["event"]
                release = (f"s={e['noise_multiplier']:g} q={e['sample_rate']:.4g} n={e['steps']}"
                           if e["sample_rate"] is not None else (f"s={e['noise_multiplier']:g}"
                                                                 if e["noise_multiplier"] is not None else e["type"]))
                match = {True: "ok", False: "MISMATCH", None: ""}[r["epsilon_stated_matches"]]
                rows.append([r["sequence"], r["kind"], r["run_id"], r["round"], r["timestamp"], release,
                             _eps(r["epsilon_release"], 5), _eps(r["epsilon_cumulative"], 6),
                             _eps(r["epsilon_cumulative_stated"], 6), match, _eps(r["epsilon_remaining"], 5)])
            shown += len(rows)
            p.heading(f"{o['owner_id']} ({o['integrity']['verdict']}, source {o['source']['ledger']})", "h2")
            p.table(["seq", "kind", "run", "round", "time (UTC)", "release", "eps alone", "eps cumul.", "stated",
                     "check", "eps left"], rows)
        p.close_page()


def write_pdf(report: Report, path: str | Path, figures: list | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    render_pdf(report, path, figures)
    return path
