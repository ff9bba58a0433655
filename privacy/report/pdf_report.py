"""The report as PDF, from the same model: A4 pages written by :mod:`.pdf_writer`.

Why these choices:

- **Fonts embedded**: the text is set in DejaVu Sans and DejaVu Sans Mono (the TrueType
  fonts matplotlib ships), embedded in the file as TrueType font programs
  (``/FontFile2``), so it prints and archives the same everywhere and Greek letters
  (epsilon, delta) need no spelling out.
- **Readable**: no text below :data:`MIN_FONT_PT` (9 pt) -- every style in
  :data:`STYLES` and the footer; the pictures are the PNGs the HTML embeds.
- **Bounded length**: a PDF is for reading, the JSON and CSV are for every number.  The
  owners table lists at most :data:`MAX_OWNER_ROWS` owners (highest share of budget
  used first; a row per privacy unit, PLD and RDP side by side), per-owner detail is given for at most :data:`MAX_DETAIL_OWNERS` owners
  (all when few; else those needing attention) with each owner's latest
  :data:`MAX_ENTRIES_PER_OWNER` entries, and the PDF says where the rest is.
- **Fast**: matplotlib's PDF backend lays out embedded-TrueType text one character at
  a time in Python (seconds for a 100-owner report); :mod:`.pdf_writer` writes a line
  of text as one operator.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from privfl.privacy.report.html_report import (
    ENFORCED_MARK,
    banner,
    compared,
    event_text,
    fmt_eps,
    fmt_when,
    rounds_left_text,
)
from privfl.privacy.report.model import COMPARED_ACCOUNTANTS, OwnerStatement, Report, UnitAccount, unit_label
from privfl.privacy.report.pdf_writer import PdfDocument
from privfl.privacy.report.sections import Code, Figure, Paragraph, Section, build_sections
from privfl.privacy.report.status import banner_notes
from privfl.privacy.report.words import fig, odds_text, percent

MIN_FONT_PT = 9.0
MAX_OWNER_ROWS = 300
MAX_DETAIL_OWNERS = 20
MAX_ENTRIES_PER_OWNER = 40  # a 20-round run's entries all fit; the JSON and CSV hold every entry
MAX_TABLE_ROWS = 60  # history rounds, refusals, files, evaluation rows
PAGE = (8.27, 11.69)  # A4, inches
MARGIN = 0.6
RED, GREEN, ORANGE, GREY, BLACK = "#b03a2e", "#1e8449", "#ca6f1e", "#5d6d7e", "#000000"
TONES = {"ok": GREEN, "near": ORANGE, "bad": RED, "muted": GREY, "": BLACK}  # the shared sections' tones

# font, size (pt), line height (in)
STYLES: dict[str, dict[str, Any]] = {
    "title": dict(font="bold", size=16, height=0.32),
    "h1": dict(font="bold", size=13, height=0.27),
    "h2": dict(font="bold", size=11, height=0.22),
    "verdict": dict(font="bold", size=13, height=0.26),
    "body": dict(font="sans", size=9.5, height=0.168),
    "small": dict(font="sans", size=9, height=0.158),
    "mono": dict(font="mono", size=9, height=0.156),
}
FOOTER_PT = 9.0
TEXT_WIDTH_PT = (PAGE[0] - 2 * MARGIN) * 72
TABLE_WIDTH = int(TEXT_WIDTH_PT / (0.602 * STYLES["mono"]["size"]))  # DejaVu Sans Mono: 0.602 em per character


def _eps(value: Any) -> str:
    return fmt_eps(value)  # the one rounding rule (words.fig), as the HTML


def _tone(tone: str) -> str:
    """A shared section's tone name, or a colour already (``#rrggbb``)."""
    return tone if tone.startswith("#") else TONES.get(tone, BLACK)


def _rgb(colour: str) -> tuple[float, float, float]:
    colour = colour.lstrip("#")
    return tuple(int(colour[i:i + 2], 16) / 255 for i in (0, 2, 4))  # type: ignore[return-value]


def _fonts() -> dict[str, str]:
    from matplotlib.font_manager import FontProperties, findfont

    return {"sans": findfont(FontProperties(family="DejaVu Sans"), fallback_to_default=True),
            "bold": findfont(FontProperties(family="DejaVu Sans", weight="bold"), fallback_to_default=True),
            "mono": findfont(FontProperties(family="DejaVu Sans Mono"), fallback_to_default=True)}


class _Pages:
    """Text flowed onto A4 pages (inches from the bottom-left corner; ``y`` is the top of the next line)."""

    def __init__(self, doc: PdfDocument, footer: str) -> None:
        self.doc = doc
        self.footer = footer
        self.page_number = 0
        self.open = False
        self.y = 0.0

    def _new_page(self) -> None:
        self.close_page()
        self.doc.new_page(PAGE[0] * 72, PAGE[1] * 72)
        self.open = True
        self.page_number += 1
        self.y = PAGE[1] - MARGIN

    def close_page(self) -> None:
        if not self.open:
            return
        text = self._fit(f"{self.footer} \u2014 page {self.page_number}", "sans", FOOTER_PT, TEXT_WIDTH_PT)
        self.doc.text(MARGIN * 72, 0.32 * 72, text, "sans", FOOTER_PT, _rgb(GREY))
        self.open = False

    def _fit(self, text: str, font: str, size: float, width: float) -> str:
        f = self.doc.fonts[font]
        if f.width(text, size) <= width:
            return text
        while text and f.width(text + "\u2026", size) > width:
            text = text[:-1]
        return text + "\u2026"

    def _room(self, inches: float) -> None:
        if not self.open or self.y - inches < MARGIN + 0.25:
            self._new_page()

    def line(self, text: str, style: str = "body", color: str = BLACK, indent: float = 0.0) -> None:
        st = STYLES[style]
        self._room(st["height"])
        baseline = self.y - st["size"] * 0.95 / 72
        self.doc.text((MARGIN + indent) * 72, baseline * 72, text, st["font"], st["size"], _rgb(color))
        self.y -= st["height"]

    def text(self, text: str, style: str = "body", color: str = BLACK, indent: float = 0.0) -> None:
        st = STYLES[style]
        for piece in self.wrap(str(text), st["font"], st["size"], TEXT_WIDTH_PT - indent * 72):
            self.line(piece, style, color, indent)

    def wrap(self, text: str, font: str, size: float, width: float) -> list[str]:
        f = self.doc.fonts[font]
        space = f.width(" ", size)
        lines: list[str] = []
        for paragraph in text.split("\n"):
            current: list[str] = []
            used = 0.0
            for word in paragraph.split():
                w = f.width(word, size)
                while w > width and word:  # a word longer than the line: cut it
                    if current:
                        lines.append(" ".join(current))
                        current, used = [], 0.0
                    cut = len(word)
                    while cut > 1 and f.width(word[:cut], size) > width:
                        cut -= 1
                    lines.append(word[:cut])
                    word = word[cut:]
                    w = f.width(word, size)
                if not word:
                    continue
                if current and used + space + w > width:
                    lines.append(" ".join(current))
                    current, used = [], 0.0
                used += (space if current else 0.0) + w
                current.append(word)
            lines.append(" ".join(current))
        return lines

    def gap(self, inches: float = 0.08) -> None:
        self.y -= inches

    def heading(self, text: str, level: str = "h1") -> None:
        self._room(STYLES[level]["height"] + 4 * STYLES["body"]["height"] + 0.16)
        self.gap(0.12)
        self.text(text, level)
        self.gap(0.05)

    def table(self, headers: list[str], rows: list[list[Any]], colours: list[str] | None = None,
              max_width: int = TABLE_WIDTH, colour_columns: tuple[int, ...] | None = None) -> None:
        """A table whose cells wrap (never cut); a row's colour paints only ``colour_columns`` (default: all)."""
        cells = [[str(c) for c in row] for row in rows]
        tones = None
        if colours:
            tones = [[(colours[i] or BLACK) if colour_columns is None or c in colour_columns else BLACK
                      for c in range(len(headers))] for i in range(len(cells))]
        self.wrapped_table(headers, cells, tones, max_width)

    def wrapped_table(self, headers: list[str], rows: list[list[str]], tones: list[list[str]] | None = None,
                      max_width: int = TABLE_WIDTH, below: list[str] | None = None,
                      below_tones: list[str] | None = None, below_header: str = "") -> None:
        """A table whose long cells wrap onto several lines (never cut), each cell in its own colour."""
        st = STYLES["mono"]
        char = 0.602 * st["size"] / 72  # inches per character of DejaVu Sans Mono
        # a header wraps too: a column is as wide as its longest cell (or its header's longest word)
        natural = [max([max(map(len, h.split() or [""]))] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
        widths = list(natural)
        rest = sum(natural[:-1]) + 2 * (len(natural) - 1)
        if len(headers) > 2 and natural[-1] > 30 and max_width - rest < 30:
            # the last column (a long text, e.g. "what to do") is too narrow beside the others: it goes on the
            # lines under its row, indented, at the full width
            below = [r[-1] for r in rows]
            self.wrapped_table(headers[:-1] + [""], [r[:-1] + [""] for r in rows],
                               [t[:-1] + [""] for t in tones] if tones else None, max_width, below,
                               [t[-1] if t else "" for t in tones] if tones else None, headers[-1])
            return
        while sum(widths) + 2 * (len(widths) - 1) > max_width and max(widths) > 8:
            widest = widths.index(max(widths))
            widths[widest] -= 1

        def cells(row: list[str]) -> list[list[str]]:
            return [textwrap.wrap(c, max(w, 1), break_long_words=True, break_on_hyphens=False) or [""]
                    for c, w in zip(row, widths)]

        def draw(row: list[str], colours: list[str]) -> None:
            wrapped = cells(row)
            height = max(len(c) for c in wrapped)
            self._room(st["height"] * height)
            for k in range(height):
                baseline = self.y - st["size"] * 0.95 / 72
                x = MARGIN
                for col, (lines, w) in enumerate(zip(wrapped, widths)):
                    if k < len(lines) and lines[k]:
                        self.doc.text(x * 72, baseline * 72, lines[k], "mono", st["size"], _rgb(colours[col]))
                    x += (w + 2) * char
                self.y -= st["height"]

        grey = [GREY] * len(headers)
        self._room(st["height"] * min(len(rows) + 1, 4))
        draw(headers, grey)
        for i, row in enumerate(rows):
            if self.y - st["height"] < MARGIN + 0.25:
                self._new_page()
                draw(headers, grey)
            tone = (tones[i] if tones and i < len(tones) else [])
            draw(row, [_tone(tone[c] if c < len(tone) else "") for c in range(len(headers))])
            if below is not None:
                colour = _tone(below_tones[i] if below_tones else "")
                for piece in textwrap.wrap(f"{below_header}: {below[i]}", max_width - 4) or [""]:
                    self._room(st["height"])
                    self.doc.text((MARGIN + 4 * char) * 72, (self.y - st["size"] * 0.95 / 72) * 72, piece, "mono",
                                  st["size"], _rgb(colour))
                    self.y -= st["height"]
        self.gap(0.06)

    def banner(self, verdict: str, headline: str, color: str) -> None:
        lines = self.wrap(headline, "sans", STYLES["body"]["size"], TEXT_WIDTH_PT - 0.3 * 72)
        height = STYLES["verdict"]["height"] + STYLES["body"]["height"] * len(lines) + 0.2
        self._room(height + 0.1)
        top = self.y - 0.05
        r, g, b = _rgb(color)
        self.doc.rect(MARGIN * 72, (top - height) * 72, (PAGE[0] - 2 * MARGIN) * 72, height * 72,
                      fill=(1 - 0.12 * (1 - r), 1 - 0.12 * (1 - g), 1 - 0.12 * (1 - b)), stroke=(r, g, b),
                      line_width=2.5)
        self.y = top - 0.08
        self.line(verdict, "verdict", color, indent=0.12)
        for piece in lines:
            self.line(piece, "body", BLACK, indent=0.12)
        self.y = top - height - 0.1

    def figure(self, png: bytes, width_in: float, height_in: float, caption: str) -> None:
        """A PNG picture scaled to the page width (a new page when it does not fit), its caption below."""
        usable_w, usable_h = PAGE[0] - 2 * MARGIN, PAGE[1] - 2 * MARGIN - 0.8
        scale = min(usable_w / width_in, usable_h / height_in)
        w, h = width_in * scale, height_in * scale
        caption_lines = self.wrap(caption, "sans", STYLES["small"]["size"], TEXT_WIDTH_PT)
        below = STYLES["small"]["height"] * len(caption_lines) + 0.2
        left = self.y - (MARGIN + 0.25) - below - 0.1 if self.open else 0.0
        if h > left >= 0.6 * h:  # shrink a little rather than leave most of a page empty
            w, h = w * left / h, left
        self._room(h + below)
        self.y -= h + 0.05
        self.doc.image(png, MARGIN * 72, self.y * 72, w * 72, h * 72)
        self.gap(0.06)
        for piece in caption_lines:
            self.line(piece, "small", GREY)
        self.gap(0.1)


def _detail_owners(report: Report) -> list[OwnerStatement]:
    ranked = report.owners_by_budget_used()
    if len(ranked) <= MAX_DETAIL_OWNERS:
        return ranked
    attention = [o for o in ranked if any(u.budget_status in ("over", "near") or u.unsupported_event
                                          for u in o.unit_views())
                 or not o.integrity.intact or o.purpose_check.status == "mismatch"]
    return attention[:MAX_DETAIL_OWNERS]


def _compared_text(unit: UnitAccount) -> str:
    parts = []
    for (figure, _, enforced), a in zip(compared(unit, tuple(x.accountant for x in unit.epsilon_by_accountant)),
                                        unit.epsilon_by_accountant):
        parts.append(f"{a.accountant.upper()} {figure}" + (f"{ENFORCED_MARK} (enforced)" if enforced else ""))
    return "; ".join(parts)


def _owner_detail(p: _Pages, o: OwnerStatement) -> None:
    integ = o.integrity
    views = o.unit_views()
    used = "; ".join(f"{percent(u.budget_used_fraction)} of the {u.label} budget" for u in views) \
        if len(views) > 1 else f"{percent(o.budget_used_fraction)} of the budget"
    p.heading(f"{o.owner_id}: {integ.verdict}, {used} used", "h2")
    for u in views:
        delta = f"{u.delta:g}" if u.delta is not None else "-"
        lead = "Lifetime" if len(views) == 1 else f"{u.label.capitalize()} (protects {u.protects}): lifetime"
        about = "any protected record" if u.privacy_unit == "record" else "whether the owner took part"
        p.text(f"{lead} \u03b5 {_eps(u.epsilon_spent)} of {_eps(u.epsilon_budget)} ({_eps(u.epsilon_remaining)} "
               f"left) at \u03b4 = {delta}, {u.accountant} accountant ({u.epsilon_spent_basis}); {_compared_text(u)}. "
               f"Odds about {about} shift by at most {odds_text(u.epsilon_spent)}: {u.strength or 'n/a'} by the "
               "tiers commonly used in production systems (a convention, not law).")
        prefix = "" if len(views) == 1 else f"{u.label.capitalize()}: "
        if u.experiment:
            p.text(f"{prefix}this experiment: \u03b5 {_eps(u.experiment.epsilon)} ({u.experiment.note}).")
        if u.outlook:
            left = u.outlook.rounds_left
            p.text(f"{prefix}what is next: " + (f"{'at least ' if u.outlook.at_least else ''}{left} more round(s) at "
                                                "the current plan; " if left is not None else "")
                   + u.outlook.note + ".")
    check = o.purpose_check
    if check.status == "mismatch":
        p.text(f"Undeclared purpose: {len(check.undeclared)} entr{'y' if len(check.undeclared) == 1 else 'ies'} "
               f"signed with {'; '.join(check.undeclared_purposes)}; the processing record declares "
               f"{'; '.join(check.declared or [])}.", color=RED)
    if o.federated_evaluation and o.federated_evaluation.latest:
        e = o.federated_evaluation.latest
        p.text(f"Federated evaluation, round {e.round}: accuracy {_num(e.accuracy)}, loss {_num(e.loss)} on "
               f"{e.num_examples if e.num_examples is not None else '?'} examples (not covered by \u03b5).")
    p.text(f"Source {o.source.ledger} ({o.source.ledger_kind} ledger{'' if o.source.chain_complete else ', partial'}"
           f"); key {integ.key_fingerprint[:16]}\u2026 "
           f"{'supplied independently' if integ.key_independently_supplied else 'read from the ledger file'}"
           + (f"; head entry {integ.head['sequence']} {integ.head['hash'][:16]}\u2026" if integ.head else ""),
           "small", GREY)
    if integ.problem:
        p.text(f"Problem: {integ.problem}", color=RED)
    shown = o.entries[-MAX_ENTRIES_PER_OWNER:]
    if len(o.entries) > len(shown):
        p.text(f"The latest {len(shown)} of {len(o.entries)} entries; every entry is in the JSON and CSV versions "
               "of this report.", "small", GREY)
    rows, colours = [], []
    for r in shown:
        match = {True: "ok", False: "WRONG", None: ""}[r.epsilon_stated_matches]
        unit = "owner" if r.privacy_unit == "owner" else "record"
        rows.append([r.sequence, r.kind, unit, r.run_id, r.round, fmt_when(r.timestamp)[5:16], event_text(r.event),
                     _eps(r.epsilon_release), _eps(r.epsilon_cumulative), match, _eps(r.epsilon_remaining)])
        colours.append(RED if (r.epsilon_stated_matches is False or r.purpose_declared is False) else BLACK)
    p.table(["seq", "kind", "unit", "run", "rnd", "time UTC", "release", "\u03b5 alone", "\u03b5 cumul.", "stated",
             "\u03b5 left"], rows, colours, colour_columns=(9,))


def shared_section(p: _Pages, section: Section, images: dict | None = None) -> None:
    """One section of the shared section model (:mod:`.sections`): the HTML template walks the same list."""
    p.heading(section.heading)
    for block in section.blocks:
        if isinstance(block, Figure):
            if images and block.name in images:
                f = images[block.name]
                p.figure(f.png, f.width_in, f.height_in, f.caption)
        elif isinstance(block, Code):
            for line in block.text.splitlines():
                p.line(line, "mono")
            p.gap(0.06)
        elif isinstance(block, Paragraph):
            if block.strong and not block.text:
                p.heading(block.strong, "h2")
            else:
                style = "small" if block.tone == "muted" else "body"
                p.text(block.strong + block.text, style, TONES.get(block.tone, BLACK))
        else:
            p.wrapped_table(block.headers, block.rows, block.cell_tones)


def _num(value: Any) -> str:
    return "-" if value is None else fig(value)


def _owners(p: _Pages, report: Report, images: dict) -> None:
    s = report.summary
    p.text(f"A row per owner and privacy unit (record: record-level, DP-SGD; owner: owner-level, DP-FedAvg), each "
           f"against its own budget. Columns: \u03b5 life (the unit's charges composed by the owner's own "
           f"accountant); {' and '.join(a.upper() for a in COMPARED_ACCOUNTANTS)} (the same charges under each; "
           f"{ENFORCED_MARK}: the accountant the owner enforces its budget with; n/a: PLD does not support fixed-size "
           "sampling); " + ("\u03b5 exp (this experiment's charges alone); " if s.experiment_id else "")
           + "budget; used (share of the budget); status; left (rounds left at the current plan); rel/ref (releases "
           "/ refused); ledger (its verdict; UNDECL.: entries signed with a purpose the processing record does not "
           "declare).", "small", GREY)
    ranked = report.owners_by_budget_used()
    exp = bool(s.experiment_id)
    headers = ["owner", "unit", "\u03b5 life"] + [a.upper() for a in COMPARED_ACCOUNTANTS] + \
        (["\u03b5 exp"] if exp else []) + ["budget", "used", "status", "left", "rel/ref", "ledger"]
    rows, colours = [], []
    for o in ranked[:MAX_OWNER_ROWS]:
        bad_owner = not o.integrity.intact or o.purpose_check.status == "mismatch"
        for i, u in enumerate(o.unit_views()):
            figures = [("n/a" if figure.startswith("n/a") else figure + (ENFORCED_MARK if enforced else ""))
                       for figure, _, enforced in compared(u)]
            rows.append([o.owner_id if i == 0 else "", u.privacy_unit, _eps(u.epsilon_spent)] + figures
                        + ([_eps(u.experiment.epsilon if u.experiment else None)] if exp else []) + [
                _eps(u.epsilon_budget), percent(u.budget_used_fraction), u.budget_status, rounds_left_text(u),
                f"{u.charges}/{u.refusals}",
                (o.integrity.verdict + (" UNDECL." if o.purpose_check.status == "mismatch" else "")) if i == 0
                else ""])
            colours.append(RED if (u.budget_status == "over" or bad_owner) else
                           ORANGE if u.budget_status == "near" else BLACK)
    p.table(headers, rows, colours, colour_columns=(headers.index("used"), headers.index("status"),
                                                    headers.index("ledger")))
    if len(ranked) > MAX_OWNER_ROWS:
        p.text(f"The {MAX_OWNER_ROWS} owners with the highest share used of {len(ranked)}; every owner is in the "
               "HTML, JSON and CSV versions of this report.", "small", GREY)
    for key in ("budget_used", "cumulative_epsilon"):
        if key in images:
            f = images[key]
            p.figure(f.png, f.width_in, f.height_in, f.caption)


def _detail(p: _Pages, report: Report, images: dict) -> None:
    detail = _detail_owners(report)
    if len(detail) < len(report.owners):
        p.text(f"Detail for the {len(detail)} owner(s) that need attention (over or near the budget, a ledger not "
               f"intact, an undeclared purpose) of {len(report.owners)}; every owner's detail is in the HTML, and "
               "every entry in the JSON and CSV versions of this report.", "small", GREY)
    for o in detail:
        _owner_detail(p, o)


# The bodies of the sections not yet data (sections.py marks them "own"); their headings come from the list.
OWN_SECTIONS = {"owners": _owners, "detail": _detail}


def render_pdf(report: Report, path: Path, figures: list | None = None) -> None:
    if figures is None:
        from privfl.privacy.report.plots import report_figures

        figures = report_figures(report)
    images = {f.key: f for f in figures}
    status, s = report.status, report.summary
    doc = PdfDocument(_fonts(), title=report.title, author="privfl report",
                      subject=f"privfl.privacy-budget-report {report.document['schema_version']}")
    p = _Pages(doc, f"{report.title} \u2014 {report.generated_at}")
    p.text(report.title, "title")
    p.text(f"Generated {report.generated_at} by privfl {report.generator['versions'].get('privfl') or ''}. "
           f"{report.scope.note[0].upper() + report.scope.note[1:]}. Every \u03b5 is recomputed from the DP "
           "events in the ledger with the accountant each entry names. JSON content hash "
           f"{report.content_hash}" + (f", signed by key {report.signature.key_fingerprint[:16]}\u2026"
                                       if report.signature else "") + ".", "small", GREY)
    p.gap(0.1)
    kind, verdict = banner(report)
    p.banner(verdict, status.headline, {"broken": RED, "problem": ORANGE, "caution": ORANGE}.get(kind, GREEN))
    for problem in status.problems[:15]:
        p.text(f"\u2022 {problem}", color=RED)
    if len(status.problems) > 15:
        p.text(f"\u2026 {len(status.problems) - 15} more problems: see the JSON version.", color=RED)
    for warning in banner_notes(status)[:6]:
        p.text(f"\u2022 note: {warning}", "small", ORANGE)
    for section in build_sections(report):
        if section.own:
            p.heading(section.heading)
            OWN_SECTIONS[section.key](p, report, images)
        else:
            shared_section(p, section, images)
    p.close_page()
    doc.save(path)


def write_pdf(report: Report, path: str | Path, figures: list | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    render_pdf(report, path, figures)
    return path


__all__ = ["FOOTER_PT", "MAX_DETAIL_OWNERS", "MAX_ENTRIES_PER_OWNER", "MAX_OWNER_ROWS", "MIN_FONT_PT", "STYLES",
           "render_pdf", "write_pdf"]
