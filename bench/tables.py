"""Markdown tables from the benchmarks' JSON results, for docs/benchmarks.md.

    python -m bench.tables                      # every results file in bench/results/
    python -m bench.tables bench/results/scale.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/tables.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS_DIR, fmt


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(k), spec) for k, _, spec in columns) + " |")
    return "\n".join(lines)


def _pm(mean: float | None, sd: float | None, spec: str = ".3f") -> str:
    return "-" if mean is None else f"{mean:{spec}} ± {sd:{spec}}"


def privacy_utility(data: dict[str, Any]) -> str:
    rows = []
    for r in data["results"]:
        rows.append({**r, "acc": _pm(r["accuracy_mean"], r["accuracy_std"]),
                     "range": f"{r['accuracy_min']:.3f}–{r['accuracy_max']:.3f}",
                     "eps_range": ("-" if r["epsilon_max_owner"] is None else
                                   f"{r['epsilon_min_owner']:.2f}–{r['epsilon_max_owner']:.2f}")})
    return table(rows, [("path", "path", ""), ("setting", "split", ""), ("target", "target ε", ""),
                        ("seeds", "seeds", "d"), ("noise_multiplier", "σ", ".2f"),
                        ("eps_range", "final ε per owner (RDP, min–max)", ""), ("epsilon_pld", "max ε (PLD)", ".2f"),
                        ("acc", "test accuracy (mean ± sd)", ""), ("range", "min–max", ""),
                        ("mean_hospital_accuracy", "mean per-hospital acc", ".3f")])


def client_step(data: dict[str, Any]) -> str:
    rows = [dict(r, ratio=(f"{r['epoch_ratio']:.2f}x" if r.get("epoch_ratio") else "-"),
                 shape=f"{r['model']} n={r['records']} bs={r['batch_size']}") for r in data["results"]]
    out = table(rows, [("shape", "case", ""), ("mode", "mode", ""), ("epoch_ms", "ms/epoch", ".1f"),
                       ("ratio", "× non-private", ""), ("round_ms", "ms/round (E=1, incl. make_private)", ".1f"),
                       ("max_rss_mib", "peak RSS MiB", ".0f"), ("train_rss_increase_mib", "RSS over baseline MiB", ".0f"),
                       ("meets_1_5x", "≤ 1.5×", "")])
    for prof in data.get("profiles", []):
        if "ms_per_call" not in prof:
            continue
        out += (f"\n\nProfile, {prof['model']} n={prof['records']} bs={prof['batch_size']} {prof['mode']} "
                "(cProfile, ms per call, E=1):\n\n")
        out += table([{"part": k, "ms": v} for k, v in prof["ms_per_call"].items()],
                     [("part", "part", ""), ("ms", "ms", ".2f")])
    return out


def overhead(data: dict[str, Any]) -> str:
    rows = data["results"]
    out = table(rows, [("owners", "owners", "d"), ("dp", "DP", ""), ("central_wall_s", "(a) central s", ".2f"),
                       ("privfl_wall_s", "(b) privfl s", ".1f"), ("plain_wall_s", "(c) plain Flower s", ".1f"),
                       ("b_over_a_wall", "b/a", ".1f"), ("b_over_c_wall", "b/c", ".2f")])
    out += "\n\n" + table(rows, [
        ("owners", "owners", "d"), ("dp", "DP", ""), ("central_round_s", "(a) s/round", ".3f"),
        ("inproc_round_s", "(a') privfl in-process s/round", ".3f"),
        ("plain_inproc_round_s", "(a'') plain in-process s/round", ".3f"), ("inproc_privfl_over_plain", "a'/a''", ".2f"),
        ("privfl_steady_s", "(b) s/round", ".3f"), ("plain_steady_s", "(c) s/round", ".3f"),
        ("b_over_c_steady", "b/c per round", ".2f"), ("b_over_c_rounds", "b/c all rounds", ".2f")])
    phases = []
    for r in rows:
        for kind in ("privfl", "plain"):
            x = r[kind]
            phases.append({"case": f"{r['owners']} {'DP' if r['dp'] else 'non-DP'}", "kind": kind, **x["phases"],
                           "to_initial_eval_s": x.get("to_initial_eval_s"), "round1_s": x.get("round1_s"),
                           "rounds_s": x.get("rounds_s"), "pss": x.get("peak_tree_pss_mib")})
    out += "\n\n" + table(phases, [
        ("case", "case", ""), ("kind", "run", ""), ("setup_before_superlink_s", "before SuperLink s", ".2f"),
        ("superlink_start_s", "SuperLink start s", ".2f"), ("submit_s", "flwr run s", ".2f"),
        ("to_initial_eval_s", "start → round-0 eval s", ".1f"), ("round1_s", "round 1 s", ".1f"),
        ("rounds_s", "round-0 eval → last round s", ".1f"), ("save_log_s", "flwr log s", ".2f"),
        ("stop_tree_s", "stop tree s", ".2f"), ("after_stop_s", "after stop s", ".2f"), ("pss", "peak PSS MiB", ".0f")])
    return out


def scale(data: dict[str, Any]) -> str:
    return table(data["results"], [
        ("framework", "run", ""), ("owners", "owners", "d"), ("wall_s", "wall s", ".1f"),
        ("to_initial_eval_s", "to round 0 s", ".1f"), ("round1_s", "round 1 s", ".1f"),
        ("steady_round_s", "s/round (2..N)", ".2f"), ("rounds_per_min_steady", "rounds/min", ".1f"),
        ("rounds_per_min_incl_round1", "rounds/min incl. round 1", ".1f"),
        ("peak_tree_rss_mib", "peak RSS sum MiB", ".0f"), ("peak_tree_pss_mib", "peak PSS MiB", ".0f"),
        ("peak_processes", "processes", "d")])


RENDER = {"privacy_utility": privacy_utility, "client_step": client_step, "overhead": overhead, "scale": scale}


def main(argv: list[str] | None = None) -> int:
    paths = [Path(a) for a in (argv if argv is not None else sys.argv[1:])] or sorted(RESULTS_DIR.glob("*.json"))
    for path in paths:
        data = json.loads(path.read_text())
        render = RENDER.get(data.get("benchmark"))
        if render is None:
            continue
        m = data["machine"]
        print(f"### {data['benchmark']} ({path.name}, {data['created']}, quick={data['quick']}, "
              f"device {m['accelerator']['device']}: {m['accelerator']['name']})\n")
        print(render(data))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
