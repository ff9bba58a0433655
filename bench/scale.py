"""Scale: rounds per minute and peak memory of privfl's simulation with more and more owners.

privfl's real simulation (:func:`privfl.simulations.launcher.run_simulation`) of the
quickstart experiment (digits split IID, logistic regression, DP-SGD, every owner
trains every round) with 10, 100 and 1,000 simulated owners (1,437 training records, so
1,000 owners hold 1-2 records each).  Memory is the summed RSS and PSS of this process
and every process below it (SuperLink, simulation, Ray daemons and workers), read from
/proc every 0.25 s.  With ``--plain`` the same federation also runs through the plain
Flower app of ``bench/plain_flower`` (no privfl), to show which part of the growth is
Flower's.

    python -m bench.scale            # 10, 100, 1000 owners, 3 rounds, privfl and plain Flower
    python -m bench.scale --quick    # 10 and 50 owners, 2 rounds, privfl only
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/scale.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import parser, print_table, write_results
from bench.flower_runner import cleanup, run_plain_app, run_privfl, temp_root

NAME = "scale"


def main(argv: list[str] | None = None) -> int:
    p = parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--owners", type=int, nargs="+", help="federation sizes (default 10 100 1000; quick 10 50)")
    p.add_argument("--rounds", type=int, help="rounds (default 3; quick 2)")
    p.add_argument("--model", default="logreg", choices=["logreg", "mlp"])
    p.add_argument("--dp", choices=["on", "off"], default="on",
                   help="DP-SGD at every owner (default on; off = the same federation without DP)")
    p.add_argument("--plain", action=__import__("argparse").BooleanOptionalAction, default=None,
                   help="also run plain Flower (default: on, off with --quick)")
    p.add_argument("--run-root", type=Path, help="folder for the runs' Flower state (default: a temp folder, removed)")
    args = p.parse_args(argv)

    from privfl.config import ExperimentConfig

    owners_list = args.owners or ([10, 50] if args.quick else [10, 100, 1000])
    rounds = args.rounds or (2 if args.quick else 3)
    plain = args.plain if args.plain is not None else not args.quick
    root = args.run_root or temp_root("privfl-bench-scale-")
    results: list[dict[str, Any]] = []
    try:
        for owners in owners_list:
            config = ExperimentConfig(experiment=f"scale-{owners}", num_owners=owners, num_rounds=rounds,
                                      model=args.model, epsilon_budget=1e6,  # quickstart otherwise
                                      dp=args.dp == "on")
            runners = [("privfl", lambda: run_privfl(config, root / f"privfl-{owners}"))]
            if plain:
                plain_config = {"num-rounds": rounds, "local-epochs": config.local_epochs,
                                "batch-size": config.batch_size, "learning-rate": config.learning_rate,
                                "model": config.model, "seed": config.seed, "dp": config.dp,
                                "noise-multiplier": config.noise_multiplier, "max-grad-norm": config.max_grad_norm}
                runners.append(("plain-flower", lambda: run_plain_app(plain_config, owners, root / f"plain-{owners}")))
            for framework, run in runners:
                print(f"== {framework}: {owners} owners, {rounds} rounds", flush=True)
                r = run()
                row = {"framework": framework, "owners": owners, "rounds": rounds, "model": config.model,
                       "dp": config.dp, **r}
                row["rounds_per_min_incl_round1"] = 60.0 * rounds / r["rounds_s"] if r.get("rounds_s") else None
                row["rounds_per_min_wall"] = 60.0 * rounds / r["wall_s"]
                results.append(row)
                print(f"   wall {r['wall_s']:.1f}s, rounds {r.get('rounds_s', float('nan')):.1f}s, "
                      f"peak PSS {r['peak_tree_pss_mib']:.0f} MiB", flush=True)
    finally:
        cleanup(root)

    for row in results:  # growth relative to the smallest federation of the same framework
        first = next(r for r in results if r["framework"] == row["framework"])
        row["pss_growth_vs_smallest"] = row["peak_tree_pss_mib"] / first["peak_tree_pss_mib"]
        if row.get("steady_round_s") and first.get("steady_round_s"):
            row["round_time_growth_vs_smallest"] = row["steady_round_s"] / first["steady_round_s"]
    print()
    print_table(results, [
        ("framework", "framework", ""), ("owners", "owners", "d"), ("rounds", "rounds", "d"),
        ("wall_s", "wall s", ".1f"), ("to_initial_eval_s", "to round 0 s", ".1f"), ("round1_s", "round 1 s", ".1f"),
        ("steady_round_s", "s/round (2..N)", ".2f"), ("rounds_per_min_steady", "rounds/min", ".1f"),
        ("rounds_per_min_incl_round1", "rounds/min incl r1", ".1f"),
        ("peak_tree_rss_mib", "peak RSS sum MiB", ".0f"), ("peak_tree_pss_mib", "peak PSS MiB", ".0f"),
        ("peak_processes", "procs", "d"), ("final_test_accuracy", "acc", ".3f"),
    ], title=f"simulation at scale (digits IID, every owner every round, DP {args.dp})")
    write_results(args.out, NAME, quick=args.quick,
                  settings={"owners": owners_list, "rounds": rounds, "model": args.model, "plain": plain,
                            "experiment": "quickstart (batch 72, lr 5.0, sigma 2.3)", "dp": args.dp == "on",
                            "fraction_train": 1.0,
                            "client_resources_num_cpus": 1, "memory": "sum over the process tree, sampled every 0.25 s"},
                  results=results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
