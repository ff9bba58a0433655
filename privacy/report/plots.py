"""The report's pictures, drawn once from the model and embedded (as PNG) in the HTML and the PDF.

No pyplot and no global backend switch: figures are plain ``Figure`` objects on the
Agg canvas, so drawing a report never changes the backend of the program that asked
for it.  Each picture is drawn from the model (the same numbers as the JSON) and
stays readable from one owner to a thousand: past :data:`MANY` owners, per-owner
lines become one line collection and per-owner bars a distribution plus the owners
that need attention.  Record-level and owner-level epsilons are different guarantees
with different budgets: the lifetime curves get one panel per privacy unit, and the
budget bars one bar per owner and unit, labelled with the unit.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter
from privfl.privacy.report.model import (
    NEAR_BUDGET_FRACTION,
    PRIVACY_UNITS,
    OwnerStatement,
    Report,
    UnitAccount,
    unit_label,
)

LEGEND_MAX_OWNERS = 12
MANY = 30  # more owners than this: distributions and the top owners, not one bar each
TOP = 25
DPI = 100
FONT = 9
BLUE, GREEN, RED, ORANGE, GREY, PURPLE = "#2e86c1", "#1e8449", "#c0392b", "#ca6f1e", "#5d6d7e", "#6c3483"


@dataclass
class RenderedFigure:
    """A picture as PNG bytes, with its caption and size (inches) for the PDF."""

    key: str
    caption: str
    png: bytes
    width_in: float
    height_in: float


def _num(value: Any) -> float:
    """A figure as a chart draws it: NaN (left out) for None and for an infinite epsilon (a release without DP),
    which no axis can hold; the tables and the decision box say "infinite" in words."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return math.nan


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _colours(n: int) -> list:
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    cmap = colormaps["viridis"]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


def _row_unit(row) -> str:
    return row.privacy_unit if row.privacy_unit in PRIVACY_UNITS else "record"


def _single_run(owners: list[OwnerStatement], unit: str | None = None) -> bool:
    return len({r.run_id for o in owners for r in o.entries if unit is None or _row_unit(r) == unit}) <= 1


def _track(owner: OwnerStatement, by_round: bool, unit: str | None = None
           ) -> tuple[list[float], list[float], list[float], list[float]]:
    xs: list[float] = []
    ys: list[float] = []
    rx: list[float] = []
    ry: list[float] = []
    count = 0
    for row in owner.entries:
        if unit is not None and _row_unit(row) != unit:
            continue
        if row.kind == "charge":
            count += 1
            x = float(row.round) if by_round else float(count)
            if not xs:
                xs, ys = [x - 1], [0.0]
            xs.append(x)
            ys.append(_num(row.epsilon_cumulative))
        else:
            rx.append(float(row.round) if by_round else count + 0.5)
            ry.append(_num(row.epsilon_cumulative))
    return xs or [0.0], ys or [0.0], rx, ry


def _report_units(report: Report) -> list[str]:
    present = {u.privacy_unit for o in report.owners for u in o.unit_views()}
    return [u for u in PRIVACY_UNITS if u in present]


def _view(owner: OwnerStatement, unit: str) -> UnitAccount | None:
    return next((v for v in owner.unit_views() if v.privacy_unit == unit), None)


def cumulative_epsilon_figure(report: Report) -> Figure:
    """Cumulative (lifetime) epsilon of each owner over its releases, against its budget: one panel per unit."""
    units = _report_units(report)
    if not units:  # owners without entries: one empty panel
        fig = _figure(8, 4.2)
        _cumulative_panel(fig.add_subplot(1, 1, 1), report, [(o, o.unit_views()[0]) for o in report.owners], None)
        fig.tight_layout()
        return fig
    fig = _figure(8, 4.2 * len(units))
    for index, unit in enumerate(units):
        ax = fig.add_subplot(len(units), 1, index + 1)
        members = [(o, v) for o in report.owners for v in [_view(o, unit)] if v is not None]
        _cumulative_panel(ax, report, members, unit if len(units) > 1 else None)
    fig.tight_layout()
    return fig


LINES_MAX_OWNERS = 4  # more owners than this: a distribution (median and range), not one line per owner


def _carried(tracks: list[tuple[list[float], list[float]]]) -> tuple[list[float], list[list[float]]]:
    """Each owner's lifetime epsilon at every x any owner has, carried forward from its last release."""
    grid = sorted({x for xs, _ in tracks for x in xs})
    columns: list[list[float]] = []
    for x in grid:
        values = []
        for xs, ys in tracks:
            last = None
            for tx, ty in zip(xs, ys):
                if tx <= x:
                    last = ty
                else:
                    break
            if last is not None and not math.isnan(last):
                values.append(last)
        columns.append(values)
    return grid, columns


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _cumulative_panel(ax, report: Report, members: list[tuple[OwnerStatement, UnitAccount]],
                      unit: str | None) -> None:
    """Up to LINES_MAX_OWNERS owners: a line each; more: the owners' median and range over releases, the owners
    near or over their budget drawn alone (named when few), and the budget marked -- never a line per owner."""
    owners = [o for o, _ in members]
    by_round = _single_run(owners, unit)
    budgets = {v.epsilon_budget for _, v in members if v.epsilon_budget is not None}
    tracks = [(o, v, *_track(o, by_round, unit)) for o, v in members]
    few = len(owners) <= LINES_MAX_OWNERS
    if few:
        for (owner, view, xs, ys, rx, ry), colour in zip(tracks, _colours(len(owners))):
            ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, markersize=3, linewidth=1.8, color=colour,
                    label=owner.owner_id)
            if rx:
                ax.scatter(rx, ry, marker="x", s=40, color=colour, zorder=5, linewidths=2)
    else:
        grid, columns = _carried([(xs, ys) for _, _, xs, ys, _, _ in tracks])
        keep = [i for i, c in enumerate(columns) if c]
        xs_g = [grid[i] for i in keep]
        lows = [min(columns[i]) for i in keep]
        highs = [max(columns[i]) for i in keep]
        ax.fill_between(xs_g, lows, highs, color=BLUE, alpha=0.18, step="post",
                        label=f"range over the {len(owners)} owners")
        ax.step(xs_g, [_median(columns[i]) for i in keep], where="post", color=BLUE, linewidth=1.8,
                label="median owner")
        flagged = [(o, v, xs, ys) for o, v, xs, ys, _, _ in tracks if v.budget_status in ("over", "near")]
        for level, colour in (("over", RED), ("near", ORANGE)):
            lines = [(o, xs, ys) for o, v, xs, ys in flagged if v.budget_status == level]
            for i, (o, xs, ys) in enumerate(lines):
                ax.step(xs, ys, where="post", color=colour, linewidth=1.0, alpha=0.9,
                        label=(f"{level} budget: {o.owner_id}" if len(lines) <= 3 else
                               f"{level} budget ({len(lines)} owners)") if (len(lines) <= 3 or i == 0) else None)
        rx = [x for *_, xs_r, _ in tracks for x in xs_r]
        ry = [y for *_, ys_r in tracks for y in ys_r]
        if rx:
            ax.scatter(rx, ry, marker="x", s=20, color="#333333", zorder=5, linewidths=1, label="refused")
    x_max = max([1.0] + [x for _, _, xs, _, rx, _ in tracks for x in (*xs, *rx)])
    ys_all = [y for _, _, _, ys, _, _ in tracks for y in ys if not math.isnan(y)]
    for i, budget in enumerate(sorted(budgets)):
        ax.axhline(budget, color=RED, linestyle="--", linewidth=1.6 if len(budgets) == 1 else 1.0,
                   label=(f"budget \u03b5 = {budget:g}" if len(budgets) == 1 else
                          (f"budgets \u03b5 = {', '.join(f'{b:g}' for b in sorted(budgets))}" if i == 0 else None)))
    if len(budgets) == 1:
        budget = next(iter(budgets))
        ax.axhline(budget * NEAR_BUDGET_FRACTION, color=ORANGE, linestyle=":", linewidth=1.2,
                   label=f"{NEAR_BUDGET_FRACTION:.0%} of the budget")
    if few and any(v.refusals for _, v in members):
        ax.scatter([], [], marker="x", color="#333333", label="refused (no budget)")
    accountants = ", ".join(sorted({a for _, v in members for a in (v.accountants or [v.accountant]) if a})) or "?"
    deltas = ", ".join(f"{d:g}" for d in sorted({v.delta for _, v in members if v.delta is not None})) or "?"
    what = "Lifetime \u03b5" if unit is None else f"{unit_label(unit).capitalize()} lifetime \u03b5"
    ax.set_title(f"{what} {'per data owner' if few else 'over the data owners'} (accountant {accountants}, "
                 f"\u03b4 = {deltas})", fontsize=11)
    ax.set_xlabel("round" if by_round else "release number in the owner's ledger (all runs)", fontsize=FONT)
    ax.set_ylabel("cumulative \u03b5 (lifetime)" if unit is None else f"{unit_label(unit)} \u03b5 (lifetime)",
                  fontsize=FONT)
    ax.set_xlim(left=0, right=x_max + 0.5)
    ax.set_ylim(0, max(ys_all + [max(budgets, default=1.0)]) * 1.08)
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=FONT)
    ax.legend(fontsize=FONT - 1, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.85)
    if by_round:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _colour(unit: UnitAccount) -> str:
    return {"over": RED, "near": ORANGE}.get(unit.budget_status, BLUE)


def budget_used_figure(report: Report) -> Figure:
    """Share of each owner's budget used, per privacy unit, highest first (many owners: distribution and the top)."""
    several = len(_report_units(report)) > 1
    ranked = [(o, v) for o in report.owners for v in o.unit_views() if v.budget_used_fraction is not None]
    ranked.sort(key=lambda m: (-m[1].budget_used_fraction, m[0].owner_id, m[1].privacy_unit))
    few = len(ranked) <= MANY and len(report.owners) <= MANY

    def name(owner: OwnerStatement, view: UnitAccount) -> str:
        return f"{owner.owner_id} ({view.privacy_unit})" if several else owner.owner_id

    if few:
        fig = _figure(8, max(2.0, 0.34 * len(ranked) + 1.3))
        ax = fig.add_subplot(1, 1, 1)
        bar_axes = ax
        shown = ranked
    else:
        fig = _figure(10, 4.8)
        hist = fig.add_subplot(1, 2, 1)
        bins = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 150]
        if several:
            for unit, colour in zip(_report_units(report), (BLUE, PURPLE, GREEN)):
                shares = [min(v.budget_used_fraction, 1.5) * 100 for _, v in ranked if v.privacy_unit == unit]
                hist.hist(shares, bins=bins, color=colour, edgecolor="white", alpha=0.6, label=unit_label(unit))
            hist.legend(fontsize=FONT - 1, loc="upper right")
        else:
            hist.hist([min(v.budget_used_fraction, 1.5) * 100 for _, v in ranked], bins=bins, color=BLUE,
                      edgecolor="white")
        hist.axvline(NEAR_BUDGET_FRACTION * 100, color=ORANGE, linestyle=":", linewidth=1.4)
        hist.axvline(100, color=RED, linestyle="--", linewidth=1.4)
        hist.set_xlabel("share of the budget used (%; last bin: over)", fontsize=FONT)
        hist.set_ylabel("owners" if not several else "owners, per privacy unit", fontsize=FONT)
        hist.set_title(f"All {len(report.owners)} owners", fontsize=11)
        hist.tick_params(labelsize=FONT)
        bar_axes = fig.add_subplot(1, 2, 2)
        shown = ranked[:TOP]
    positions = list(range(len(shown)))
    used = [v.budget_used_fraction * 100 if not math.isinf(v.budget_used_fraction) else 150.0 for _, v in shown]
    bar_axes.barh(positions, used, color=[_colour(v) for _, v in shown])
    bar_axes.set_yticks(positions, [name(o, v) for o, v in shown], fontsize=FONT if len(shown) <= 20 else FONT - 1)
    bar_axes.invert_yaxis()
    bar_axes.axvline(NEAR_BUDGET_FRACTION * 100, color=ORANGE, linestyle=":", linewidth=1.4,
                     label=f"{NEAR_BUDGET_FRACTION:.0%}: near")
    bar_axes.axvline(100, color=RED, linestyle="--", linewidth=1.4, label="100%: budget")
    bar_axes.xaxis.set_major_formatter(PercentFormatter())
    bar_axes.set_xlim(0, max([110.0] + [u * 1.05 for u in used]))
    bar_axes.set_xlabel("share of the lifetime budget used" + (" (each unit against its own budget)" if several
                                                               else ""), fontsize=FONT)
    bar_axes.tick_params(labelsize=FONT)
    if few:
        for i, (owner, view) in enumerate(shown):
            bar_axes.text(min(used[i], 150) + 1.5, i, f"\u03b5 {view.epsilon_spent:.3g} of {view.epsilon_budget:g}",
                          va="center", fontsize=FONT - 1)
        bar_axes.set_xlim(0, max([135.0] + [u * 1.3 for u in used]))
        bar_axes.set_title("Privacy budget used per data owner" + (" and privacy unit" if several else "")
                           + " (highest first)", fontsize=11)
    else:
        bar_axes.set_title(f"The {len(shown)} {'budgets' if several else 'owners'} with the highest share used",
                           fontsize=11)
    bar_axes.legend(fontsize=FONT - 1, loc="lower right", framealpha=0.85)
    bar_axes.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def privacy_utility_figure(report: Report) -> Figure | None:
    """Test accuracy over rounds beside epsilon, and accuracy against epsilon."""
    history = report.history
    if not history or not history.rounds:
        return None
    rounds = history.rounds
    xs = [r.round for r in rounds]
    acc = [_num(r.test_accuracy) for r in rounds]
    eps_max = [_num(r.epsilon_max) for r in rounds]
    eps_med = [_num(r.epsilon_median) for r in rounds]
    eps_min = [_num(r.epsilon_min) for r in rounds]
    has_eps = any(not math.isnan(e) for e in eps_max)
    fig = _figure(10, 3.8)
    ax = fig.add_subplot(1, 2, 1)
    ax.plot(xs, acc, color=GREEN, marker="o", markersize=3, label="test accuracy")
    ax.set_xlabel("round", fontsize=FONT)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("test accuracy", color=GREEN, fontsize=FONT)
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=FONT)
    ax.set_title("Accuracy and \u03b5 over rounds", fontsize=11)
    if has_eps:
        ax2 = ax.twinx()
        ax2.plot(xs, eps_max, color=BLUE, label="\u03b5 max over owners")
        ax2.fill_between(xs, eps_min, eps_max, color=BLUE, alpha=0.15, label="\u03b5 range over owners")
        ax2.plot(xs, eps_med, color=BLUE, linestyle=":", label="\u03b5 median")
        ax2.set_ylabel("lifetime \u03b5", color=BLUE, fontsize=FONT)
        budgets = sorted({o.epsilon_budget for o in report.owners if o.epsilon_budget is not None})
        for i, budget in enumerate(budgets):
            ax2.axhline(budget, color=RED, linestyle="--", linewidth=1.2,
                        label=f"budget \u03b5 = {', '.join(f'{b:g}' for b in budgets)}" if i == 0 else None)
        ax2.set_ylim(0, max([e for e in eps_max if not math.isnan(e)] + budgets + [1.0]) * 1.08)
        ax2.tick_params(labelsize=FONT)
        lines, lines2 = ax.get_legend_handles_labels(), ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=FONT - 1, loc="lower right")
    right = fig.add_subplot(1, 2, 2)
    if has_eps:
        right.plot(eps_max, acc, color=PURPLE, marker="o", markersize=3)
        for x, y, r in zip(eps_max, acc, xs):
            if (len(xs) <= 12 or r in (xs[0], xs[-1]) or r % max(1, len(xs) // 6) == 0) \
                    and not (math.isnan(x) or math.isnan(y)):
                right.annotate(str(r), (x, y), textcoords="offset points", xytext=(3, -9), fontsize=FONT - 1)
        right.set_xlabel("lifetime \u03b5 (max over owners)", fontsize=FONT)
        right.set_title("Accuracy against \u03b5 (labels: round)", fontsize=11)
    else:
        right.text(0.5, 0.5, "no ledger run matches this history:\n\u03b5 not shown", ha="center", va="center")
        right.set_title("Privacy\u2013utility", fontsize=11)
    right.set_ylabel("test accuracy", fontsize=FONT)
    right.set_ylim(0, 1)
    right.grid(True, alpha=0.3)
    right.tick_params(labelsize=FONT)
    fig.tight_layout()
    return fig


def evaluation_figure(report: Report) -> Figure | None:
    """Federated evaluation: over rounds (aggregate, owners' range) and per owner at the latest round."""
    history = report.history
    evaluation = history.federated_evaluation if history else None
    if evaluation is None:
        return None
    over_rounds = len(evaluation.rounds) >= 2  # one round is a point, not a line: only the per-owner panel
    fig = _figure(10 if over_rounds else 6, 3.8)
    right = fig.add_subplot(1, 2 if over_rounds else 1, 2 if over_rounds else 1)
    if over_rounds:
        _evaluation_over_rounds(fig.add_subplot(1, 2, 1), evaluation)
    _evaluation_per_owner(right, report)
    right.set_title("Per owner, latest round (lowest first)" if over_rounds else
                    f"Per owner, round {evaluation.rounds[0].round if evaluation.rounds else '?'} (lowest first)",
                    fontsize=11)
    fig.tight_layout()
    return fig


def _evaluation_over_rounds(ax, evaluation) -> None:
    xs = [r.round for r in evaluation.rounds]
    ax.plot(xs, [_num(r.accuracy) for r in evaluation.rounds], color=GREEN, marker="o", markersize=3,
            label="accuracy (weighted by examples)")
    lows, highs = [_num(r.accuracy_min) for r in evaluation.rounds], [_num(r.accuracy_max) for r in evaluation.rounds]
    if any(not math.isnan(v) for v in lows):
        ax.fill_between(xs, lows, highs, color=GREEN, alpha=0.15, label="range over owners")
    ax.set_ylim(0, 1)
    ax.set_xlabel("round", fontsize=FONT)
    ax.set_ylabel("accuracy on the owners' data", fontsize=FONT)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=FONT)
    ax.legend(fontsize=FONT - 1, loc="lower right")
    ax.set_title("Federated evaluation over rounds", fontsize=11)


def _evaluation_per_owner(right, report: Report) -> None:
    latest = [(o.owner_id, o.federated_evaluation.latest.accuracy) for o in report.owners
              if o.federated_evaluation and o.federated_evaluation.latest
              and o.federated_evaluation.latest.accuracy is not None]
    if len(latest) <= MANY:
        latest.sort(key=lambda x: x[1])
        right.barh(range(len(latest)), [a for _, a in latest], color=GREEN)
        right.set_yticks(range(len(latest)), [o for o, _ in latest], fontsize=FONT if len(latest) <= 20 else FONT - 1)
        right.set_xlim(0, 1)
        right.set_xlabel("accuracy at each owner's latest evaluation", fontsize=FONT)
    else:
        right.hist([a for _, a in latest], bins=20, range=(0, 1), color=GREEN, edgecolor="white")
        right.set_xlabel(f"accuracy at the latest evaluation ({len(latest)} owners)", fontsize=FONT)
        right.set_ylabel("owners", fontsize=FONT)
    right.tick_params(labelsize=FONT)
    right.grid(True, axis="x", alpha=0.3)


def png_bytes(fig: Figure, dpi: int = DPI) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _render(key: str, caption: str, fig: Figure) -> RenderedFigure:
    width, height = fig.get_size_inches()
    return RenderedFigure(key, caption, png_bytes(fig), float(width), float(height))


def figure_plan(report: Report) -> list[tuple[str, str, Callable[[Report], Figure | None]]]:
    """(key, caption, draw) of every picture the report has, in the order the report shows them."""
    plan: list[tuple[str, str, Callable[[Report], Figure | None]]] = []
    several = len(_report_units(report)) > 1
    single = len(report.owners) == 1  # one owner's statement: its figures are in its table, not in a one-bar chart
    if report.owners and not single:
        plan.append((
            "budget_used", f"Share of each owner's lifetime privacy budget used, highest first; orange from "
            f"{NEAR_BUDGET_FRACTION:.0%} (near), red over the budget."
            + (" Record-level and owner-level budgets are shown apart (the unit in brackets)." if several else ""),
            budget_used_figure))
    if report.owners:
        plan.append((
            "cumulative_epsilon", ("Lifetime (cumulative) epsilon of the owner after each of its releases" if single
                                   else "Lifetime (cumulative) epsilon of the owners after each release (up to "
                                   f"{LINES_MAX_OWNERS} owners: a line each; more: the median owner and the range, "
                                   "owners near or over their budget drawn alone)")
            + ", recomputed from the ledger's DP events; dashed: the budget; dotted: 80% of it; x: a release refused "
            "for lack of budget." + (" One panel per privacy unit: each unit is composed from its own charges."
                                     if several else ""), cumulative_epsilon_figure))
    history = report.history
    if history and history.rounds:
        plan.append((
            "privacy_utility", "Test accuracy of the global model per round (run history) beside the owners' "
            "lifetime epsilon after that round (ledger); right: accuracy against epsilon.", privacy_utility_figure))
    if history and history.federated_evaluation is not None:
        plan.append((
            "federated_evaluation", "Federated evaluation on the owners' own data (run history): a release the "
            "DP-SGD epsilon does not cover.", evaluation_figure))
    return plan


def _draw(report: Report, plan: list[tuple[str, str, Callable[[Report], Figure | None]]]) -> list[RenderedFigure]:
    drawn = []
    for key, caption, draw in plan:
        fig = draw(report)
        if fig is not None:
            drawn.append(_render(key, caption, fig))
    return drawn


def report_figures(report: Report) -> list[RenderedFigure]:
    """Every picture the report has, drawn once (PNG), in the order the report shows them."""
    return _draw(report, figure_plan(report))


__all__ = ["RenderedFigure", "budget_used_figure", "cumulative_epsilon_figure", "evaluation_figure", "figure_plan",
           "png_bytes",
           "privacy_utility_figure", "report_figures"]
