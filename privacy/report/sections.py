"""The report as an ordered list of sections, built once and walked by the HTML template and the PDF writer.

Why: a section written twice (a template and a PDF function) drifts: its headings, its
columns and its rounding differ.  Here a section is data -- a heading and an ordered list of
blocks (a paragraph with a tone, a table with a tone per row and per cell) -- and both
renderers only lay it out.  Every figure in it is text made by :func:`~.words.fig`, the one
rounding rule, so the HTML and the PDF print the same digits.

:func:`build_sections` is the whole report in reading order, so the two formats have the same
headings in the same order.  Every section is data (paragraphs, tables, figures by name -- each
renderer embeds the chart its own way -- and code) except two marked ``own`` (:func:`_own`): the
owners table and the per-owner detail take their heading and place from here, but their bodies
are still written by each renderer (the HTML lists every column, links and collapsible
statements; the PDF's monospaced page holds fewer columns).

Tones: ``""`` (plain), ``ok`` (green), ``near`` (amber), ``bad`` (red), ``muted``.  A table
colours a *cell* (``cell_tones``), never a whole row, so "INTACT" is never painted amber.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from privfl.privacy.report.model import Report
from privfl.privacy.report.words import fig

TONE = {"red": "bad", "amber": "near", "green": "ok"}
REFUSAL_ROWS = 100  # refusals listed; the JSON and CSV hold every one
DECISION_ROWS = 40  # rows of the decision box listed (worst first); the JSON and CSV hold every one
REGISTRY_CARDS = 20  # groups of owners with the same registry entries; the JSON holds every owner's
HISTORY_ROWS = 100  # rounds of the run history and of federated evaluation listed (evenly spaced beyond)
EVALUATION_OWNERS = 100  # owners listed at their latest evaluation (lowest accuracy first)
LEDGER_ROWS = 120  # ledger files listed (not intact first); the JSON holds every one
ATTACKER_ROWS = 20  # rows of the attacker's-terms table: the highest epsilons of each unit and any delta warning


@dataclass
class Paragraph:
    text: str
    tone: str = ""
    strong: str = ""  # a lead-in printed in bold before the text

    kind: str = "paragraph"


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    cell_tones: list[list[str]] = field(default_factory=list)  # per row, per cell (empty: plain)
    caption: str = ""
    numeric: tuple[int, ...] = ()  # columns of figures (the HTML aligns them right)
    strong: tuple[int, ...] = ()  # columns printed in bold (the HTML; the PDF's monospaced tables have no bold)

    kind: str = "table"

    def tone(self, row: int, cell: int) -> str:
        if row < len(self.cell_tones) and cell < len(self.cell_tones[row]):
            return self.cell_tones[row][cell]
        return ""


@dataclass
class Figure:
    """A chart by name (a key of :func:`~.plots.report_figures`); each renderer embeds the picture its own way."""
    name: str

    kind: str = "figure"


@dataclass
class Code:
    """Lines to type, set in a monospaced font."""
    text: str

    kind: str = "code"


@dataclass
class Section:
    key: str  # the HTML anchor
    heading: str
    blocks: list[Paragraph | Table | Figure | Code]
    tone: str = ""  # the section's frame (the decision box: its banner colour)
    own: bool = False  # body not yet data: each renderer writes it under this heading (see :func:`_own`)
    csv: bool = True  # also written to the CSV as text lines (the CSV rows already hold the other sections' figures)


def _own(key: str, heading: str) -> Section:
    """A section whose heading and place come from here but whose body each renderer still writes."""
    return Section(key, heading, [], own=True, csv=False)


def _decision(report: Report) -> Section | None:
    d = report.decision
    if d is None:
        return None
    blocks: list[Paragraph | Table] = [
        Paragraph(d.banner + ". " + " ".join(r[0].upper() + r[1:] + "." for r in d.reasons), TONE[d.level],
                  strong=d.level.upper() + ": "),
        Paragraph(f"{d.requester}; coordinator key {d.requester_key}.", strong="Requester: "),
    ]
    purposes = sorted({p for row in d.rows for p in row.purposes})
    if purposes:
        blocks.append(Paragraph("; ".join(purposes) + ".", strong="Purpose(s) signed in the ledgers: "))
    rows, tones = [], []
    for r in d.rows[:DECISION_ROWS]:
        left = "n/a" if r.rounds_left is None else (f"\u2265 {r.rounds_left:,}" if r.rounds_left_at_least
                                                     else f"{r.rounds_left:,}")
        rows.append([r.owner_id, r.label, fig(r.epsilon_spent), fig(r.epsilon_budget), fig(r.epsilon_remaining), left,
                     r.strength or "n/a", r.level.upper(), r.action])
        tone = TONE[r.level]
        tones.append(["", "", "", "", "", "", "near" if r.strength == "weak" else "", tone, tone])
    blocks.append(Table(["owner", "privacy unit", "\u03b5 spent", "budget", "\u03b5 left", "rounds left",
                         "strength", "verdict", "what to do"], rows, tones))
    if len(d.rows) > DECISION_ROWS:
        rest = d.rows[DECISION_ROWS:]
        levels = ", ".join(f"{sum(1 for r in rest if r.level == lv)} {lv}" for lv in ("red", "amber", "green")
                           if any(r.level == lv for r in rest))
        blocks.append(Paragraph(f"\u2026 and {len(rest):,} more owner \u00d7 unit rows ({levels}); every row is in "
                                "the JSON (decision.rows) and CSV (kind = decision) versions.", "muted"))
    counts = ", ".join(f"{name}: {n}" for name, n in d.tier_counts.items())
    blocks.append(Paragraph(f"Figures per strength tier, record-level and owner-level alike: {counts} (tiers are "
                            "conventions, not law).", "muted"))
    return Section("decision", "What to decide", blocks, TONE[d.level])


def _attacker(report: Report) -> Section | None:
    d = report.decision
    if d is None:
        return None
    blocks: list[Paragraph | Table] = [Paragraph(d.attacker)]
    shown = _attacker_rows(d.rows)
    rows, tones = [], []
    for r in shown:
        certainty = "n/a" if r.attacker_certainty is None else (
            "over 99.9%" if r.attacker_certainty > 0.999 else f"{r.attacker_certainty * 100:.1f}%")
        rows.append([r.owner_id, r.label, fig(r.epsilon_spent), certainty, fig(r.delta),
                     fig(r.records) if r.records else "not declared", fig(r.delta_times_n)])
        tones.append(["", "", "", "", "", "", "near" if r.delta_warning else ""])
    blocks.append(Table(["owner", "privacy unit", "\u03b5", "50/50 attacker: at most", "\u03b4", "records n",
                         "\u03b4 \u00d7 n"], rows, tones))
    if len(shown) < len(d.rows):
        blocks.append(Paragraph(f"The {len(shown)} highest epsilons (and any delta warning) of {len(d.rows):,} "
                                "owner \u00d7 unit figures; the JSON holds every one.", "muted"))
    for r in [r for r in d.rows if r.delta_warning][:ATTACKER_ROWS]:
        if r.delta_warning:
            blocks.append(Paragraph(f"owner {r.owner_id}: {r.delta_warning}.", "near"))
    blocks.append(Paragraph("Delta should be well below 1/n: the guarantee may fail entirely with probability delta "
                            "for each record, so over n records up to delta \u00d7 n. Declare n under [dataset] "
                            "records in the processing record to see it.", "muted"))
    return Section("attacker", "Epsilon and delta in an attacker's terms", blocks)


def _attacker_rows(rows: list) -> list:
    if len(rows) <= ATTACKER_ROWS:
        return list(rows)
    warned = [r for r in rows if r.delta_warning]
    ranked = sorted((r for r in rows if not r.delta_warning), key=lambda r: -(r.epsilon_spent or 0.0))
    return (warned + ranked)[:ATTACKER_ROWS]


def _channels(report: Report) -> Section:
    rows = [[c.channel, c.released, c.coverage, c.detail, c.source] for c in report.release_channels]
    tones = [["", "", {"DP, charged": "ok", "post-processing": "ok", "not released": "ok", "no DP": "near",
                       "not covered": "near", "limited": "near"}.get(c.coverage, ""), "", ""]
             for c in report.release_channels]
    return Section("channels", "Every release channel and how it is covered", [
        Paragraph("Epsilon covers the charged model updates (and the final model, computed from them). Everything "
                  "else that leaves an owner is listed here with what covers it."),
        Table(["channel", "released", "covered by", "detail", "source"], rows, tones)])


def _empirical(report: Report) -> Section | None:
    audit = report.empirical_audit
    if audit is None:
        return None
    rows = [[u.privacy_unit, fig(u.claimed_epsilon), fig(u.lower_bound),
             "n/a" if u.confidence is None else f"{fig(u.confidence * 100)}%", u.meaning] for u in audit.units]
    tones = [["", "", "bad" if u.exceeds_claim else "", "", "bad" if u.exceeds_claim else ""] for u in audit.units]
    return Section("empirical", "Empirical audit: a lower bound beside the claim", [
        Paragraph(f"{audit.source}" + (f", experiment {audit.experiment}" if audit.experiment else "") + "."),
        Table(["privacy unit", "claimed \u03b5", "empirical lower bound", "confidence", "what it means"], rows, tones),
        Paragraph(audit.note, "muted")])


def _dpia(report: Report) -> Section | None:
    p = report.dpia
    if not p:
        return None
    blocks: list[Paragraph | Table] = [Paragraph(
        "A data protection impact assessment (Art. 35) and record of processing (Art. 30) for this processing, to "
        "file. Items marked owner-declared come from the processing record; the rest from the verified ledgers or "
        "privfl's design." + (f" DPIA reference: {p['reference']}." if p.get("reference") else ""))]
    blocks.append(Paragraph("", strong="The processing"))
    blocks.append(Table(["item", "value", "source"], [[i["item"], str(i["value"]), i["source"]]
                                                      for i in p["processing"]],
                        [["", "", "near" if i["source"] == "not-declared" else ""] for i in p["processing"]]))
    blocks.append(Paragraph("", strong="Risks, likelihood, severity and residual risk after DP"))
    blocks.append(Table(["risk", "likelihood", "severity", "measures", "residual risk"],
                        [[r["risk"], r["likelihood"], r["severity"], r["measures"], r["residual"]] for r in p["risks"]],
                        [["", "", "", "", "bad" if r["residual"].lower().startswith("high") else
                          ("near" if r["residual"].startswith(("medium", "not")) else "ok")] for r in p["risks"]]))
    blocks.append(Paragraph("", strong="Data subjects' rights"))
    blocks.append(Table(["right", "what it means here"], [[r["right"], r["meaning"]] for r in p["rights"]]))
    blocks.append(Paragraph("", strong="Roles"))
    blocks.append(Table(["role", "who", "note"], [[r["role"], r["who"], r["note"]] for r in p["roles"]]))
    blocks.append(Paragraph("", strong="Budget by purpose"))
    blocks.append(Table(["purpose", "privacy unit", "owners", "charges", "refused"],
                        [[r["purpose"], r["privacy_unit"], fig(r["owners"]), fig(r["charges"]), fig(r["refusals"])]
                         for r in p["budget_by_purpose"]]))
    blocks.append(Paragraph("", strong="Budget by experiment"))
    blocks.append(Table(["experiment (run id)", "privacy units", "owners", "charges", "refused",
                         "largest lifetime \u03b5 rise", "purposes"],
                        [[r["experiment"], ", ".join(r["privacy_units"]), fig(r["owners"]), fig(r["charges"]),
                          fig(r["refusals"]), fig(r["epsilon_rise_max"]), "; ".join(r["purposes"])]
                         for r in p["budget_by_experiment"]]))
    blocks.append(Paragraph("", strong="DPO's opinion and sign-off"))
    blocks.append(Table(["", "to be filled in by the DPO"], [
        ["opinion of the DPO", "________________________________"], ["decision", "approve / approve with "
                                                                      "conditions / refuse"],
        ["signed by", "________________________________"], ["date", "____-__-__"],
        ["next review", "____-__-__"]]))
    return Section("dpia", "DPIA and record of processing (Art. 30, 35)", blocks)


def _refusals(report: Report) -> Section:
    from privfl.privacy.report.html_report import event_text, fmt_when
    from privfl.privacy.report.model import unit_label

    refusals = [(o, r) for o in report.owners_by_budget_used() for r in o.refused_releases]
    if not refusals:
        return Section("refusals", "Refused releases", [Paragraph("No release was refused.")])
    rows = [[o.owner_id, unit_label(r.privacy_unit), r.run_id, fig(r.round), fmt_when(r.timestamp),
             fig(r.epsilon_spent_before), event_text(r.requested_event), r.reason] for o, r in refusals[:REFUSAL_ROWS]]
    blocks: list[Paragraph | Table] = [
        Paragraph(f"{len(refusals):,} release(s) refused. Each row is a release the owner refused because it would "
                  "have crossed its budget (or for the reason given). A refusal releases nothing and is never "
                  "charged; the refusal itself (signed, with its reason) reaches the coordinator."),
        Table(["owner", "privacy unit", "run", "round", "time (UTC)", "\u03b5 of the unit spent then",
               "requested release", "reason"], rows)]
    if len(refusals) > REFUSAL_ROWS:
        blocks.append(Paragraph(f"\u2026 {len(refusals) - REFUSAL_ROWS:,} more in the JSON and CSV versions.",
                                "muted"))
    return Section("refusals", "Refused releases", blocks)


def _limitations(report: Report) -> Section:
    return Section("limitations", "What this report cannot prove",
                   [Paragraph(note, strong="\u2022 ") for note in report.limitations])


def _meaning(report: Report) -> Section:
    words, s = report.plain_words, report.summary
    counts = report.decision.tier_counts if report.decision else {
        t.name: sum(1 for o in report.owners if o.strength == t.name) for t in words.tiers}
    owners = {u.privacy_unit: u.owners for u in s.units}
    blocks: list[Paragraph | Table | Figure | Code] = [
        Paragraph(words.epsilon),
        Table(["\u03b5", "worst-case change of anyone's odds"], [[fig(x["epsilon"]), x["text"]]
                                                                for x in words.odds_examples], numeric=(0,)),
        Paragraph(f"{words.tiers_source[0].upper() + words.tiers_source[1:]}.", strong="How strong? "),
        Table(["tier", "\u03b5", "meaning", "figures here (owner \u00d7 unit, record- and owner-level)"],
              [[t.name, f"\u2264 {fig(t.up_to)}" if t.up_to is not None else "above", t.meaning,
                fig(counts.get(t.name, 0))] for t in words.tiers], numeric=(3,), strong=(0,)),
        Paragraph("Record-level and owner-level epsilons are different guarantees, each with its own budget; they "
                  "are never added together.", strong="What each privacy unit protects. "),
        Table(["privacy unit", "protects", "owners here"], [[m.label, m.protects, fig(owners.get(m.privacy_unit, 0))]
                                                            for m in words.privacy_units],
              numeric=(2,), strong=(0,)),
        Paragraph(words.accountants, strong="PLD and RDP. "),
        Paragraph(words.privacy_unit, strong="One record is not one patient. ")]
    if report.history and report.history.federated_evaluation:
        blocks.append(Paragraph(words.evaluation, strong="Evaluation is a separate release. "))
    return Section("meaning", "What epsilon means", blocks, csv=False)


EVIDENCE_NOTE = ("Each value is labelled with where it comes from: ledger-verified and recomputed are proven by the "
                 "verified ledger; owner-declared is the owner's statement; privfl-design is what the software does "
                 "by construction, not evidenced by the ledger; run-history comes from the unsigned run history.")


def _glance(report: Report) -> Section:
    from privfl.privacy.report.html_report import ALERTS_SHOWN, fmt_eps, fmt_when
    from privfl.privacy.report.model import unit_label
    from privfl.privacy.report.words import percent

    s, status = report.summary, report.status
    cards: list[tuple[str, str, str]] = [("verdict", status.verdict, "ok" if status.intact else "bad")]
    if len(report.owners) != 1:
        cards.append(("data owners", fig(s.owners), ""))
    cards.append(("over budget", fig(len(s.owners_over_budget)), "bad" if s.owners_over_budget else ""))
    cards.append((f"near budget (\u2265 {percent(status.near_budget_fraction)} used)", fig(len(s.owners_near_budget)),
                  "near" if s.owners_near_budget else ""))
    if len(s.units) > 1:
        cards += [(f"highest {u.label} \u03b5 (lifetime)", "n/a" if u.epsilon_spent_max is None else
                   f"{fmt_eps(u.epsilon_spent_max)} ({u.epsilon_spent_max_owner})", "") for u in s.units]
    else:
        cards.append(("highest \u03b5 spent (lifetime)", "n/a" if s.epsilon_spent_max is None else
                      f"{fmt_eps(s.epsilon_spent_max)} ({s.epsilon_spent_max_owner})", ""))
    cards += [(f"{u.label} releases / refused", f"{fig(u.charges)} / {fig(u.refusals)}", "") for u in s.units]
    cards += [("\u03b4", ", ".join(f"{d:g}" for d in s.deltas), ""), ("privacy unit", ", ".join(s.privacy_units), ""),
              ("accountant", ", ".join(s.accountants), ""),
              ("period (UTC)", f"{fmt_when(s.first_entry)} to {fmt_when(s.last_entry)}", "")]
    if s.experiment_id:
        cards.append(("this experiment", s.experiment_id, ""))
    if s.final_test_accuracy is not None:
        cards.append(("final test accuracy", fig(s.final_test_accuracy), ""))
    blocks: list[Paragraph | Table | Figure | Code] = [
        Table(["", ""], [[k, v] for k, v, _ in cards], [["", tone] for _, _, tone in cards]),
        Paragraph(s.in_words, strong="In words. ")]
    alerts = status.budget_alerts
    if alerts:
        blocks.append(Paragraph("", strong="Over budget or near it (highest share used first; what to do: see What "
                                           "to decide)"))
        blocks.append(Table(["owner", "privacy unit", "status", "budget used", "\u03b5 spent", "budget",
                             "rounds left at the current plan"],
                            [[a.owner_id, unit_label(a.privacy_unit), a.level, percent(a.budget_used_fraction),
                              fmt_eps(a.epsilon_spent), fmt_eps(a.epsilon_budget),
                              "n/a" if a.rounds_left is None else fig(a.rounds_left)] for a in alerts[:ALERTS_SHOWN]],
                            [["", "", "bad" if a.level == "over" else "near", "bad" if a.level == "over" else "near",
                              "", "", ""] for a in alerts[:ALERTS_SHOWN]], numeric=(3, 4, 5, 6)))
        if len(alerts) > ALERTS_SHOWN:
            blocks.append(Paragraph(f"\u2026 and {len(alerts) - ALERTS_SHOWN:,} more: see the owners table.", "muted"))
    else:
        blocks.append(Paragraph("No owner is over or near a budget (see What to decide above).", "muted"))
    blocks.append(Paragraph(EVIDENCE_NOTE, "muted"))
    return Section("glance", "At a glance", blocks, csv=False)


def _num(value) -> str:
    return "-" if value is None else fig(value)


def _spaced(rows: list) -> list:
    """At most HISTORY_ROWS rows, evenly spaced, the last one kept."""
    if len(rows) <= HISTORY_ROWS:
        return list(rows)
    return rows[:: len(rows) // HISTORY_ROWS + 1] + rows[-1:]


def _evaluation(report: Report) -> Section | None:
    evaluation = report.history.federated_evaluation if report.history else None
    if evaluation is None:
        return None
    from privfl.privacy.report import evidence as ev

    latest = sorted(((o, o.federated_evaluation.latest) for o in report.owners
                     if o.federated_evaluation and o.federated_evaluation.latest),
                    key=lambda x: (x[1].accuracy is None, x[1].accuracy or 0.0, x[0].owner_id))
    rounds = _spaced(evaluation.rounds)
    blocks: list[Paragraph | Table | Figure | Code] = [
        Paragraph(f"{evaluation.note} [{ev.SHORT.get(evaluation.evidence, evaluation.evidence)}]", "near",
                  strong="Not covered by epsilon. "),
        Figure("federated_evaluation"),
        Paragraph("", strong=f"Per owner, latest round ({len(latest):,} owners, lowest accuracy first)"),
        Table(["owner", "round", "accuracy", "loss", "examples"],
              [[o.owner_id, fig(e.round), _num(e.accuracy), _num(e.loss), _num(e.num_examples)]
               for o, e in latest[:EVALUATION_OWNERS]], numeric=(1, 2, 3, 4))]
    if len(latest) > EVALUATION_OWNERS:
        blocks.append(Paragraph(f"The {EVALUATION_OWNERS} lowest of {len(latest):,}; every owner's is in the JSON "
                                "version.", "muted"))
    blocks += [
        Paragraph("", strong=f"Over rounds ({len(evaluation.rounds):,}"
                  + (f", {len(rounds)} shown" if len(rounds) < len(evaluation.rounds) else "") + ")"),
        Table(["round", "accuracy", "loss", "examples", "owners evaluated", "accuracy min", "accuracy max"],
              [[fig(e.round), _num(e.accuracy), _num(e.loss), _num(e.num_examples), fig(e.owners_evaluated),
                _num(e.accuracy_min), _num(e.accuracy_max)] for e in rounds], numeric=(0, 1, 2, 3, 4, 5, 6))]
    return Section("evaluation", "Federated evaluation (run history, unsigned)", blocks, csv=False)


def _utility(report: Report) -> Section | None:
    history = report.history
    if history is None:
        return None
    from privfl.privacy.report import evidence as ev
    from privfl.privacy.report.html_report import fmt_eps

    rounds = _spaced(history.rounds)
    return Section("utility", "Privacy and utility (run history, unsigned)", [
        Paragraph(f"Run history [{ev.SHORT.get(history.evidence, history.evidence)}] {history.source}, experiment "
                  f"{history.experiment}" + (f" (id {history.experiment_id})" if history.experiment_id else "")
                  + f", status {history.status}. {history.note}."),
        Figure("privacy_utility"),
        Paragraph("", strong=f"Per round ({len(history.rounds):,}"
                  + (f", {len(rounds)} shown" if len(rounds) < len(history.rounds) else "") + ")"),
        Table(["round", "test accuracy", "test loss", "owners trained", "refused", "\u03b5 min", "\u03b5 median",
               "\u03b5 max"],
              [[fig(h.round), _num(h.test_accuracy), _num(h.test_loss), fig(h.participants), fig(h.refused),
                fmt_eps(h.epsilon_min), fmt_eps(h.epsilon_median), fmt_eps(h.epsilon_max)] for h in rounds],
              numeric=tuple(range(8)))], csv=False)


def _integrity(report: Report) -> Section:
    from pathlib import Path

    ledgers = sorted(report.ledgers, key=lambda lg: lg.intact)  # not intact first (a stable sort keeps the order)
    rows, tones = [], []
    for lg in ledgers[:LEDGER_ROWS]:
        parts = Path(lg.path).parts
        fps = sorted(lg.key_fingerprints.values())
        keys = f"{fps[0][:12]}\u2026" if len(fps) == 1 else (f"{len(fps)} keys (per owner below)" if fps else "")
        notes = "; ".join(lg.notes[:3]) + (f"; \u2026 {len(lg.notes) - 3} more" if len(lg.notes) > 3 else "")
        rows.append([lg.owner_id or (f"{len(lg.owners)} owners" if lg.ledger_kind == "federation" else "-"),
                     "/".join(parts[-2:]) if len(parts) >= 2 else lg.path, lg.ledger_kind, fig(lg.entries),
                     f"{fig(lg.entries_checked)} / {fig(lg.epsilons_checked)}",
                     "yes" if lg.keys_independently_supplied else
                     f"no ({len(lg.owners_with_supplied_keys)} of {len(lg.owners)})",
                     lg.verdict, keys or "-", notes])
        tones.append(["", "", "", "", "", "" if lg.keys_independently_supplied else "near", "ok" if lg.intact else "bad",
                      "", ""])
    intact = sum(1 for lg in report.ledgers if lg.intact)
    blocks: list[Paragraph | Table | Figure | Code] = [
        Paragraph("Each file was verified with privfl.privacy.ledger.verify: SQLite integrity and schema, every "
                  "Ed25519 signature, the sha256 hash chain, the indexed columns against the signed bytes. Every "
                  "cumulative epsilon an entry states was compared with this report's recomputation from the events. "
                  "Owner ledgers were also checked against the receipts the federation ledger holds (detects entries "
                  "removed from the end)."),
        Paragraph(f"{len(report.ledgers):,} ledger file(s): {intact:,} intact."),
        Table(["owner", "file", "kind", "entries", "entries / \u03b5 checked", "keys supplied independently",
               "verdict", "key (sha256 of the public key)", "notes"], rows, tones, numeric=(3, 4))]
    if len(ledgers) > LEDGER_ROWS:
        blocks.append(Paragraph(f"\u2026 {len(ledgers) - LEDGER_ROWS:,} more files, all intact; every file is in the "
                                "JSON version.", "muted"))
    blocks += [Paragraph(f"{lg.path}: {lg.problem}", "bad") for lg in ledgers if lg.problem]
    blocks += [Paragraph(w, "muted", strong="Note: ") for w in report.status.warnings]
    return Section("integrity", "Ledger integrity", blocks, csv=False)


def _registry(report: Report) -> Section:
    from privfl.privacy.report import evidence as ev
    from privfl.privacy.report.html_report import registry_groups

    cards = registry_groups(report.owners)
    blocks: list[Paragraph | Table | Figure | Code] = [Paragraph(
        "The fields proposed for an \u201cepsilon registry\u201d by Dwork, Kohli and Mulligan (\u201cDifferential "
        "Privacy in Practice: Expose Your Epsilons!\u201d, Journal of Privacy and Confidentiality, 2019): what the "
        "guarantee is, what it protects, what was released, how releases compose, over which period, and who set the "
        "budget. Owners with the same entries share a card.")]
    for card in cards[:REGISTRY_CARDS]:
        blocks.append(Paragraph("", strong=f"Owners: {card['names']}"))
        rows = []
        for row in card["rows"]:
            value = row["value"]
            value = "not declared" if value is None else (value if isinstance(value, str) else
                                                          ("; ".join(value) or "none"))
            rows.append([row["label"], value, ev.SHORT.get(row["evidence"], row["evidence"])])
        blocks.append(Table(["field", "value", "source"], rows))
    if len(cards) > REGISTRY_CARDS:
        blocks.append(Paragraph(f"\u2026 {len(cards) - REGISTRY_CARDS:,} more groups of owners: every owner's registry "
                                "entries are in the JSON version.", "muted"))
    return Section("registry", "Epsilon registry (Dwork, Kohli and Mulligan 2019)", blocks, csv=False)


MEASURE_TONE = {"met": "ok", "failed": "bad", "not met": "bad", "partly met": "near", "limitation": "near"}


def _gdpr(report: Report) -> Section:
    from privfl.privacy.report import evidence as ev
    from privfl.privacy.report.html_report import value_text

    def value(v) -> str:
        v = value_text(v)
        if v is None:
            return "not declared"
        return v if isinstance(v, str) else ("; ".join(v) or "none")

    blocks: list[Paragraph | Table | Figure | Code] = [Paragraph("", strong="Record of processing activities (Art. 30)")]
    for part in report.gdpr["article_30"]:
        owners = ", ".join(part["owners"]) or "no owner in this report"
        owners = owners if len(owners) <= 400 else owners[:400] + "\u2026"
        if part["record"]:
            source = f"processing record {part['record']}" + (f" ({part['record_id']})" if part.get("record_id") else "") \
                + (f", last reviewed {part['last_reviewed']}" if part.get("last_reviewed") else "")
        else:
            source = ("no processing record given (pass --processing-record record.toml; see "
                      "docs/report-schema.md)")
        blocks.append(Paragraph(f"Owners: {owners}. Source: {source}."))
        blocks.append(Table(["", "reference", "value", "source"],
                            [[i["label"], i["reference"], value(i["value"]), ev.SHORT.get(i["evidence"], i["evidence"])]
                             for i in part["items"]],
                            [["", "", "near" if i["value"] is None else "", ""] for i in part["items"]]))
    for key, title in (("article_25", "Data protection by design and by default (Art. 25)"),
                       ("article_32", "Security of processing (Art. 32)")):
        measures = report.gdpr[key]
        blocks.append(Paragraph("", strong=title))
        blocks.append(Table(["measure", "reference", "status", "evidence", "detail"],
                            [[m["measure"], m["reference"], m["status"], ev.SHORT.get(m["evidence"], m["evidence"]),
                              m["detail"]] for m in measures],
                            [["", "", MEASURE_TONE.get(m["status"], ""), "", ""] for m in measures]))
    return Section("gdpr", "GDPR", blocks, csv=False)


def _recompute(report: Report) -> Section:
    from privfl.privacy.report import evidence as ev

    r = report.recompute
    signed = f"; signed (Ed25519) by key {report.signature.key_fingerprint}" if report.signature else ""
    return Section("recompute", "How to check", [
        Paragraph(r["how"]),
        Code(r["python"]),
        Paragraph(f"Stated and recomputed epsilons are compared to a relative {r['epsilon_rel_tol']:g} (absolute "
                  f"{r['epsilon_abs_tol']:g}). Neighbouring relation: {r['neighbouring_relation']}. The JSON version "
                  "of this report holds every number and the signed entry bytes.", "muted"),
        Paragraph("The JSON version carries a sha256 content hash of its canonical form "
                  f"({report.document['content_hash']['canonicalization']}): {report.content_hash}{signed}. Check it "
                  "with: privfl report --verify-report report.json --public-key SIGNER.pub", "muted"),
        Paragraph("", strong="Evidence labels"),
        Table(["label", "meaning"], [[f"{ev.SHORT.get(k, k)} ({k})", v] for k, v in report.evidence_levels.items()]),
    ], csv=False)


def build_sections(report: Report) -> list[Section]:
    """The whole report in reading order, the decision box first: both renderers walk this list."""
    built = [_decision(report), _attacker(report),
             _glance(report),
             _meaning(report),
             _own("owners", "Owners (highest share of budget used first)"),
             _evaluation(report),
             _utility(report),
             _refusals(report),
             _integrity(report),
             _registry(report),
             _gdpr(report),
             _channels(report), _empirical(report), _dpia(report), _limitations(report),
             _own("detail", "Per owner"),
             _recompute(report)]
    return [s for s in built if s is not None]


def section(sections: list[Section], key: str) -> Section | None:
    return next((s for s in sections if s.key == key), None)


def plain_text(section: Section) -> list[str]:
    """A section as lines of text (for the CSV and for tests)."""
    lines = [section.heading]
    for block in section.blocks:
        if isinstance(block, Paragraph):
            lines.append((block.strong + block.text).strip())
        elif isinstance(block, Code):
            lines.append(block.text)
        elif isinstance(block, Figure):
            continue
        else:
            lines.extend(" | ".join(row) for row in [block.headers, *block.rows])
    return [line for line in lines if line]


__all__ = ["Code", "Figure", "Paragraph", "Section", "Table", "build_sections", "plain_text", "section"]

