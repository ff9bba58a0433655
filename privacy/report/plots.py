"""The report's pictures, drawn with matplotlib's object API on the Agg canvas.

No pyplot and no global backend switch: figures are plain ``Figure`` objects, so
drawing a report never changes the backend of the program that asked for it.  Every
plot is drawn from the report document (the same numbers as the JSON).
"""

from __future__ import annotations

import io
import math
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

LEGEND_MAX_OWNERS = 12


def _num(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return math.nan  # None, "inf": not drawable


def _colours(n: int) -> list:
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    cmap = colormaps["viridis"]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


def _single_run(doc: dict[str, Any]) -> str | None:
    runs = {r["run_id"] for o in doc["owners"] for r in o["runs"]}
    return next(iter(runs)) if len(runs) == 1 else None


def cumulative_epsilon_figure(doc: dict[str, Any]) -> Figure:
    """Cumulative epsilon of each owner over its releases, against its budget."""
    owners = doc["owners"]
    by_round = _single_run(doc) is not None
    fig = Figure(figsize=(8, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colours = _colours(len(owners))
    budgets = {o["epsilon_budget"] for o in owners if o["epsilon_budget"] is not None}
    x_max = 1.0
    for owner, colour in zip(owners, colours):
        xs, ys, rx, ry = [0.0], [0.0], [], []
        count = 0
        start = None
        for row in owner["entries"]:
            if row["kind"] == "charge":
                count += 1
                x = float(row["round"]) if by_round else float(count)
                if start is None and by_round:
                    xs, ys = [x - 1], [0.0]
                start = x
                xs.append(x)
                ys.append(_num(row["epsilon_cumulative"]))
            else:
                rx.append(float(row["round"]) if by_round else count + 0.5)
                ry.append(_num(row["epsilon_cumulative"]))
        x_max = max([x_max, *xs, *rx])
        label = owner["owner_id"] if len(owners) <= LEGEND_MAX_OWNERS else None
        width = 1.8 if len(owners) <= LEGEND_MAX_OWNERS else 0.9
        ax.plot(xs, ys, marker="o" if len(xs) <= 30 and len(owners) <= 10 else None, markersize=3,
                linewidth=width, color=colour, label=label, alpha=0.95 if len(owners) <= 20 else 0.6)
        if rx:
            ax.scatter(rx, ry, marker="x", s=40, color=colour, zorder=5, linewidths=2)
        if len(budgets) > 1 and owner["epsilon_budget"] is not None:
            ax.axhline(owner["epsilon_budget"], color=colour, linestyle="--", linewidth=0.8, alpha=0.7)
    if len(budgets) == 1:
        budget = budgets.pop()
        ax.axhline(budget, color="#c0392b", linestyle="--", linewidth=1.6, label=f"budget \u03b5 = {budget:g}")
    if any(o["refusals"] for o in owners):
        ax.scatter([], [], marker="x", color="#333333", label="refused (no budget)")
    accountants = ", ".join(doc["summary"]["accountants"]) or "?"
    deltas = ", ".join(f"{d:g}" for d in doc["summary"]["deltas"]) or "?"
    ax.set_title(f"Cumulative \u03b5 per data owner (accountant {accountants}, \u03b4 = {deltas})", fontsize=11)
    ax.set_xlabel("round" if by_round else "release number in the owner's ledger (all runs)")
    ax.set_ylabel("cumulative \u03b5 (lifetime)")
    ax.set_xlim(left=0, right=x_max + 0.5)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.85,
                  ncol=2 if len(owners) > 8 and len(owners) <= LEGEND_MAX_OWNERS else 1)
    if by_round:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(owners) > LEGEND_MAX_OWNERS:
        ax.text(0.99, 0.02, f"{len(owners)} owners (one line each)", transform=ax.transAxes, ha="right",
                fontsize=8, color="#555555")
    fig.tight_layout()
    return fig


def budget_left_figure(doc: dict[str, Any]) -> Figure:
    """Epsilon spent and left of each owner's budget."""
    owners = doc["owners"]
    names = [o["owner_id"] for o in owners]
    spent = [_num(o["epsilon_spent"]) for o in owners]
    budget = [_num(o["epsilon_budget"]) for o in owners]
    left = [max(b - s, 0.0) if not (math.isnan(b) or math.isnan(s)) else 0.0 for s, b in zip(spent, budget)]
    over = [max(s - b, 0.0) if not (math.isnan(b) or math.isnan(s)) else 0.0 for s, b in zip(spent, budget)]
    within = [min(s, b) if not math.isnan(s) and not math.isnan(b) else (0.0 if math.isnan(s) else s)
              for s, b in zip(spent, budget)]
    horizontal = len(owners) <= 30
    if horizontal:
        fig = Figure(figsize=(8, max(2.2, 0.42 * len(owners) + 1.2)), dpi=100)
    else:
        fig = Figure(figsize=(min(20, 2 + 0.14 * len(owners)), 4.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    positions = list(range(len(owners)))
    bar = ax.barh if horizontal else ax.bar
    kw = "left" if horizontal else "bottom"
    bar(positions, within, color="#2e86c1", label="\u03b5 spent")
    bar(positions, left, color="#abebc6", label="\u03b5 left", **{kw: within})
    if any(over):
        bar(positions, over, color="#c0392b", label="over budget", **{kw: within})
    if horizontal:
        ax.set_yticks(positions, names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("\u03b5 (lifetime budget = whole bar)")
        for i, (s, b) in enumerate(zip(spent, budget)):
            text = f"{s:.3g} of {b:g} spent, {b - s:.3g} left" if not (math.isnan(s) or math.isnan(b)) else "n/a"
            ax.text((b if not math.isnan(b) else 0) * 1.01 + 0.01, i, text, va="center", fontsize=7.5)
        xmax = max([v for v in budget + spent if not math.isnan(v)] or [1.0])
        ax.set_xlim(0, xmax * 1.45)
    else:
        ax.set_xticks(positions, names, rotation=90, fontsize=6)
        ax.set_ylabel("\u03b5 (lifetime budget = whole bar)")
        ax.set_xlim(-1, len(owners))
    ax.set_title("Privacy budget spent and left per data owner", fontsize=11)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.85)
    ax.grid(True, axis="x" if horizontal else "y", alpha=0.3)
    fig.tight_layout()
    return fig


def privacy_utility_figure(doc: dict[str, Any]) -> Figure | None:
    """Test accuracy over rounds beside epsilon, and accuracy against epsilon."""
    history = doc.get("history")
    if not history or not history["rounds"]:
        return None
    rounds = history["rounds"]
    xs = [r["round"] for r in rounds]
    acc = [_num(r["test_accuracy"]) for r in rounds]
    eps_max = [_num(r["epsilon_max"]) for r in rounds]
    eps_med = [_num(r["epsilon_median"]) for r in rounds]
    eps_min = [_num(r["epsilon_min"]) for r in rounds]
    has_eps = any(not math.isnan(e) for e in eps_max)
    fig = Figure(figsize=(10, 3.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1)
    ax.plot(xs, acc, color="#1e8449", marker="o", markersize=3, label="test accuracy")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("test accuracy", color="#1e8449")
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.set_title("Accuracy and \u03b5 over rounds", fontsize=11)
    if has_eps:
        ax2 = ax.twinx()
        ax2.plot(xs, eps_max, color="#2e86c1", label="\u03b5 max over owners")
        ax2.fill_between(xs, eps_min, eps_max, color="#2e86c1", alpha=0.15, label="\u03b5 range over owners")
        ax2.plot(xs, eps_med, color="#2e86c1", linestyle=":", label="\u03b5 median")
        ax2.set_ylabel("cumulative \u03b5", color="#2e86c1")
        ax2.set_ylim(bottom=0)
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7.5, loc="lower right")
    right = fig.add_subplot(1, 2, 2)
    if has_eps:
        right.plot(eps_max, acc, color="#6c3483", marker="o", markersize=3)
        for x, y, r in zip(eps_max, acc, xs):
            if len(xs) <= 12 or r in (xs[0], xs[-1]) or r % max(1, len(xs) // 6) == 0:
                if not (math.isnan(x) or math.isnan(y)):
                    right.annotate(str(r), (x, y), textcoords="offset points", xytext=(3, -9), fontsize=7)
        right.set_xlabel("cumulative \u03b5 (max over owners)")
        right.set_title("Privacy\u2013utility: accuracy against \u03b5 (labels: round)", fontsize=11)
    else:
        right.text(0.5, 0.5, "no ledger run matches this history:\n\u03b5 not shown", ha="center", va="center")
        right.set_title("Privacy\u2013utility", fontsize=11)
    right.set_ylabel("test accuracy")
    right.set_ylim(0, 1)
    right.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def report_figures(doc: dict[str, Any]) -> list[tuple[str, str, Figure]]:
    """(key, caption, figure) for every picture the report has."""
    figures = []
    if doc["owners"]:
        figures.append(("cumulative_epsilon",
                        "Cumulative (lifetime) epsilon of each owner after each of its releases, recomputed from the "
                        "ledger's DP events; dashed: the budget; x: a release refused for lack of budget.",
                        cumulative_epsilon_figure(doc)))
        figures.append(("budget_left", "Epsilon spent (blue) and left (green) of each owner's lifetime budget.",
                        budget_left_figure(doc)))
    utility = privacy_utility_figure(doc)
    if utility is not None:
        figures.append(("privacy_utility",
                        "Test accuracy of the global model per round (run history) beside the owners' cumulative "
                        "epsilon after that round (ledger); right: accuracy against epsilon.", utility))
    return figures


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
