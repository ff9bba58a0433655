"""The Markdown tables of docs/benchmarks.md section 1 (privacy against utility), from the JSON results.

    python -m bench.pu_tables    # reads bench/results/privacy_utility{,_flower,_planning}.json, pu_tuning.jsonl,
                                 # pu_diagnostics.json; prints the tables
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS_DIR

# (split, target) -> (metric, threshold): the targets.
TARGETS = {
    ("digits-iid", 1.0): ("accuracy", 0.80), ("digits-iid", 3.0): ("accuracy", 0.90),
    ("digits-dirichlet", 1.0): ("accuracy", 0.60), ("digits-dirichlet", 3.0): ("accuracy", 0.80),
    ("heart-disease", 1.0): ("mean_hospital_accuracy", 0.79),
}


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS_DIR / name
    return json.loads(path.read_text()) if path.exists() else None


def _range(row: dict[str, Any], key: str) -> str:
    if row.get(key) is None:
        return "-"
    low, high = row.get(f"{key}_min"), row.get(f"{key}_max")
    return f"{row[key]:.3f} ({low:.3f}–{high:.3f})"


def main_table(results: dict[str, Any], flower: dict[str, Any] | None) -> str:
    flower_runs = {(r["setting"], r["target"]): r for r in (flower or {}).get("runs", [])}
    lines = [("| split | target ε | recipe | σ (every owner) | owners' final ε / target, PLD (min–max) | max ε, RDP "
              "| test accuracy, mean (min–max) | mean of the centres' accuracy | Flower run (seed 0): accuracy, ε | "
              "target |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["results"]:
        target = row["target"]
        setting = row["setting"]
        sigma = "-" if row.get("sigma_min") is None else (
            f"{row['sigma_min']:.2f}" if abs(row["sigma_max"] - row["sigma_min"]) < 1e-9
            else f"{row['sigma_min']:.2f}–{row['sigma_max']:.2f}")
        ratio = "-" if row.get("epsilon_ratio_min") is None else \
            f"{row['epsilon_ratio_min']:.4f}–{row['epsilon_ratio_max']:.4f}"
        rdp = "-" if row.get("epsilon_rdp_max") is None else f"{row['epsilon_rdp_max']:.3f}"
        accuracy = f"{row['accuracy_mean']:.3f} ({row['accuracy_min']:.3f}–{row['accuracy_max']:.3f})"
        hospital = "-"
        if row.get("mean_hospital_accuracy") is not None:
            hospital = (f"{row['mean_hospital_accuracy']:.3f} ({row['mean_hospital_accuracy_min']:.3f}–"
                        f"{row['mean_hospital_accuracy_max']:.3f})")
        f = flower_runs.get((setting, target))
        flower_cell = "-"
        if f:
            value = f.get("mean_hospital_accuracy", f["accuracy"])
            flower_cell = (f"{value:.3f}" + (" (centres)" if "mean_hospital_accuracy" in f else "")
                           + f", ε {f['epsilon_pld_min']:.3f}–{f['epsilon_pld_max']:.3f}")
        verdict = "-"
        if isinstance(target, float) and (setting, target) in TARGETS:
            metric, threshold = TARGETS[(setting, target)]
            value = row["mean_hospital_accuracy"] if metric == "mean_hospital_accuracy" else row["accuracy_mean"]
            verdict = (f"≥ {threshold:.2f}: **met** (+{value - threshold:.3f})" if value >= threshold
                       else f"≥ {threshold:.2f}: **missed** by {threshold - value:.3f}")
        label = setting + (" (central DP)" if "/pooled" in setting and isinstance(target, float) else "")
        recipe = row["recipe"] if isinstance(target, float) else "non-private"
        lines.append(f"| {label} | {target} | {recipe} | {sigma} | {ratio} | {rdp} | {accuracy} | {hospital} | "
                     f"{flower_cell} | {verdict} |")
    return "\n".join(lines)


def _bar(ratio: float, width: int = 20) -> str:
    filled = ratio * width
    return "█" * int(filled) + ("▌" if filled - int(filled) >= 0.5 else "")


def planning_figure(planning: dict[str, Any], target: float = 1.0, seed: int = 0) -> str:
    runs = {r["planning"]: r for r in planning["runs"] if r["target"] == target and r["seed"] == seed}
    one, own = runs["one-sigma"], runs["per-owner"]
    lines = [("| owner | records | q | one σ for all: σ | final ε / target | | per-owner planning: σ | "
              "final ε / target | |"), "|---|---|---|---|---|---|---|---|---|"]
    owners = sorted(own["sigma_by_owner"], key=lambda o: own["records_by_owner"][o])
    for o in owners:
        n = own["records_by_owner"][o]
        q = 1 / max(1, -(-n // own["batch_size"]))
        r1 = one["epsilon_pld_by_owner"][o] / target
        r2 = own["epsilon_pld_by_owner"][o] / target
        lines.append(f"| {o} | {n} | {q:.3g} | {one['sigma_by_owner'][o]:.2f} | {r1:.3f} | `{_bar(r1)}` | "
                     f"{own['sigma_by_owner'][o]:.2f} | {r2:.4f} | `{_bar(r2)}` |")
    return "\n".join(lines)


def planning_summary(planning: dict[str, Any]) -> str:
    lines = [("| target ε | planning | σ across owners and seeds | owners' final ε / target (min–max, 5 seeds) | "
              "test accuracy, mean (min–max) |"), "|---|---|---|---|---|"]
    for row in planning["results"]:
        lines.append(f"| {row['target']} | {row['planning']} | {row['sigma_min']:.2f}–{row['sigma_max']:.2f} | "
                     f"{row['epsilon_ratio_min']:.3f}–{row['epsilon_ratio_max']:.3f} | "
                     f"{row['accuracy_mean']:.3f} ({row['accuracy_min']:.3f}–{row['accuracy_max']:.3f}) |")
    return "\n".join(lines)


def tuning_table() -> str:
    from bench.pu_tuning import summary

    lines = ["| split | target ε | configurations tried | best on the tuning seeds (mean, min–max) | chosen recipe |",
             "|---|---|---|---|---|"]
    for (setting, target), cell in sorted(summary().items()):
        best = cell["best"]
        r = best["recipe"]
        recipe = (f"{r['model']}, {r['num_rounds']} rounds x {r['local_epochs']} epoch, batch {r['batch_size']}, "
                  f"lr {r['learning_rate']}, momentum {r['momentum']}, clip {r['max_grad_norm']}")
        lines.append(f"| {setting} | {target:g} | {cell['configurations']} | {best['score']:.3f} "
                     f"({best['score_min']:.3f}–{best['score_max']:.3f}) | {recipe} |")
    return "\n".join(lines)


def diagnostics_table() -> str:
    diagnostics = _load("pu_diagnostics.json")
    if not diagnostics:
        return ""
    lines = ["| recipe | case | metric | mean (min–max), seeds 0-4 |", "|---|---|---|---|"]
    for d in diagnostics:
        lines.append(f"| {d['experiment']} | {d['case']} | {d.get('metric', 'accuracy')} | {d['mean']:.3f} "
                     f"({d['min']:.3f}–{d['max']:.3f}) |")
    return "\n".join(lines)


def main() -> int:
    results = _load("privacy_utility.json")
    if results:
        print(main_table(results, _load("privacy_utility_flower.json")), end="\n\n")
    planning = _load("privacy_utility_planning.json")
    if planning:
        print(planning_figure(planning), end="\n\n")
        print(planning_summary(planning), end="\n\n")
    print(tuning_table(), end="\n\n")
    print(diagnostics_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
