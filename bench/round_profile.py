"""What privfl's per-round work costs, apart from Flower's runtime: the in-process grid, profiled.

privfl's real ServerApp and ClientApp run in one process through
:mod:`bench.inprocess_grid` (no SuperLink, no Ray, no serialisation, one thread), with
DP-SGD, for a number of owners and rounds; so does the plain Flower app of
``bench/plain_flower`` with the same owners, model and DP-SGD.  Reported:

* wall seconds per round of each (rounds 2..N, after a warm-up run), their ratio, and
  the first round (privfl's query round and each owner's first contact: policy, key,
  ledger);
* a cProfile of privfl's run split into the work privfl does per owner and round
  (policy and ledger open, the request checks, PLD accounting, DP-SGD itself, the
  release store, the ledger charge with its signature and fsync'ed commit, the receipt)
  and per round at the server (receipt checks, the federation ledger and registry
  commits, the history log, the checkpoint, aggregation, evaluation).  cProfile
  inflates Python-heavy code; the figures are for ranking, the wall times for sizing.

    python -m bench.round_profile                       # 10, 100, 1000 owners, 3 rounds
    python -m bench.round_profile --owners 10000 --rounds 2 --data synthetic
    python -m bench.round_profile --quick               # 10 owners, 2 rounds
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/round_profile.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import current_rss_mib, parser, print_table, write_results
from bench.flower_runner import PLAIN_APP, cleanup, temp_root

NAME = "round_profile"

# (label, file suffix, function name, per): inclusive cProfile seconds of the function, divided by
# owner-rounds ("owner") or rounds ("round").  Nested labels (indented) are parts of the one above.
CATEGORIES: tuple[tuple[str, str, str, str], ...] = (
    ("client: query (owner identifies itself, first round)", "client/evaluation.py", "run_query", "owner"),
    ("client: train round, whole", "client/round.py", "run_train_round", "owner"),
    ("  find the owner: policy read, key load, ledger open", "client/owner.py", "node_owner", "owner"),
    ("  owner's data", "client/owner.py", "data", "owner"),
    ("  request checks (policy, anchor)", "client/guard.py", "review_request", "owner"),
    ("  anchored head check", "client/round.py", "anchor_problem", "owner"),
    ("  noise plan (owner_plan)", "client/guard.py", "owner_plan", "owner"),
    ("  already charged? (charge_for)", "privacy/ledger/owner.py", "charge_for", "owner"),
    ("  budget decision (PLD accounting)", "client/guard.py", "decide_release", "owner"),
    ("  model check + weights + DP-SGD (_train)", "client/round.py", "_train", "owner"),
    ("    DP-SGD (train_locally)", "client/training.py", "train_locally", "owner"),
    ("  release store save", "client/release_store.py", "save", "owner"),
    ("  ledger charge (sign, append, fsync'ed commit)", "privacy/ledger/owner.py", "charge", "owner"),
    ("  receipt (entries since the anchor)", "client/round.py", "_receipt", "owner"),
    ("  reply (ArrayRecord)", "client/round.py", "_release", "owner"),
    ("client: federated evaluation (last round)", "client/evaluation.py", "run_evaluate_round", "owner"),
    ("server: configure round (sample, requests)", "server/strategy.py", "configure_train", "round"),
    ("server: aggregate round, whole", "server/strategy.py", "aggregate_train", "round"),
    ("  receipt checks (signature, anchor, hash)", "server/receipts.py", "accept", "round"),
    ("  federation ledger + registry commits", "server/receipts.py", "commit", "round"),
    ("server: history log (history.jsonl)", "server/history.py", "log_round", "round"),
    ("server: checkpoint", "server/checkpoint.py", "write_checkpoint", "round"),
    ("server: central evaluation", "server/evaluation.py", "evaluate_fn", "round"),
    ("server: start (enrol owners, keys, policies)", "simulations/owners.py", "enroll_simulated_owners", "run"),
    ("any: Ed25519 sign", "~", "<method 'sign' of 'cryptography.hazmat.bindings._rust.openssl.ed25519.Ed25519PrivateKey' objects>", "owner"),
    ("any: Ed25519 verify", "~", "<method 'verify' of 'cryptography.hazmat.bindings._rust.openssl.ed25519.Ed25519PublicKey' objects>", "owner"),
    ("any: SQLite execute (incl. fsync'ed COMMITs)", "~", "<method 'execute' of 'sqlite3.Connection' objects>", "owner"),
    ("any: os.fsync", "~", "<built-in method posix.fsync>", "owner"),
    ("any: PLD accountant", "privacy/accountants/pld.py", "epsilon", "owner"),
)


def _config(owners: int, rounds: int, dp: bool, model: str, data_dir: str, run_dir: Path):
    from privfl.config import ExperimentConfig

    extra = {"dataset": "folder", "data_dir": data_dir, "partitioning": "natural"} if data_dir else \
        {"dataset": "digits", "partitioning": "iid"}
    return ExperimentConfig(experiment=f"round-profile-{owners}", num_owners=owners, num_rounds=rounds, model=model,
                            epsilon_budget=1e6, dp=dp, run_dir=str(run_dir), **extra).to_mapping()


def _plain_config(owners: int, rounds: int, dp: bool, model: str, data_dir: str, work: Path) -> dict[str, Any]:
    from privfl.config import ExperimentConfig

    c = ExperimentConfig()
    return {"num-rounds": rounds, "local-epochs": c.local_epochs, "batch-size": c.batch_size,
            "learning-rate": c.learning_rate, "model": model, "seed": c.seed, "dp": dp,
            "noise-multiplier": c.noise_multiplier, "max-grad-norm": c.max_grad_norm,
            "progress-file": str(work / "progress.json"), "data-dir": data_dir}


def _apps(kind: str) -> tuple[Any, Any]:
    if kind == "privfl":
        import privfl.client.app
        import privfl.server.app

        return privfl.server.app.app, privfl.client.app.app
    if str(PLAIN_APP) not in sys.path:
        sys.path.insert(0, str(PLAIN_APP))
    import plainfl.client_app
    import plainfl.server_app

    return plainfl.server_app.app, plainfl.client_app.app


class _Rounds:
    """Per-round wall time of an in-process run: the grid's calls, grouped by the round they serve."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, float, float]] = []  # (message type, messages, start, end)

    def wrap(self, grid: Any) -> None:
        original = grid.send_and_receive

        def timed(messages, *, timeout=None):
            messages = list(messages)
            start = time.perf_counter()
            replies = original(messages, timeout=timeout)
            kind = messages[0].metadata.message_type if messages else "-"
            self.calls.append((kind, len(messages), start, time.perf_counter()))
            return replies

        grid.send_and_receive = timed


def run_inprocess(kind: str, owners: int, rounds: int, dp: bool, model: str, data_dir: str, work: Path, *,
                  profile: bool, warmup: bool = True) -> dict[str, Any]:
    """Warm-up (1 round), then a timed run of ``rounds`` rounds; optionally a profiled run of the same."""
    import bench.inprocess_grid as grid_module

    server_app, client_app = _apps(kind)

    def config(tag: str, n_rounds: int) -> dict[str, Any]:
        folder = work / tag
        folder.mkdir(parents=True, exist_ok=True)
        if kind == "privfl":
            return _config(owners, n_rounds, dp, model, data_dir, folder / "run")
        return _plain_config(owners, n_rounds, dp, model, data_dir, folder)

    rounds_seen = _Rounds()
    original_grid = grid_module.InProcessGrid

    class TimedGrid(original_grid):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            rounds_seen.wrap(self)

    if warmup:
        grid_module.run_apps(server_app, client_app, owners, config("warmup", 1))
    else:  # warm the imports and Opacus's first make_private with a small federation
        grid_module.run_apps(server_app, client_app, 2, {**config("warmup", 1), **(
            {"num-owners": 2, "dataset": "digits", "partitioning": "iid", "data-dir": ""} if kind == "privfl"
            else {"data-dir": ""})})
    rss_before = current_rss_mib()
    grid_module.InProcessGrid = TimedGrid
    try:
        timed = grid_module.run_apps(server_app, client_app, owners, config("timed", rounds))
    finally:
        grid_module.InProcessGrid = original_grid
    out: dict[str, Any] = {"kind": kind, "owners": owners, "rounds": rounds, "wall_s": timed["wall_s"],
                           "client_s": timed["client_s"], "server_s": timed["server_s"],
                           "rss_mib": current_rss_mib(), "rss_growth_mib": current_rss_mib() - rss_before}
    out.update(_per_round(rounds_seen.calls, timed["wall_s"], rounds))
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        grid_module.run_apps(server_app, client_app, owners, config("profiled", rounds))
        profiler.disable()
        out["profile"] = categorise(pstats.Stats(profiler), owners, rounds)
    return out


def _per_round(calls: list[tuple[str, int, float, float]], wall: float, rounds: int) -> dict[str, Any]:
    """First round (with the query round) and the mean of later rounds, from the train calls' spacing."""
    trains = [c for c in calls if c[0] == "train"]
    if len(trains) < 2:
        return {"round1_s": None, "steady_round_s": None}
    starts = [c[2] for c in trains]
    first_call = calls[0][2]
    steady = (starts[-1] - starts[0]) / (len(starts) - 1)  # start of round 1's training to round N's
    return {"round1_s": starts[1] - first_call, "steady_round_s": steady,
            "query_s": sum(c[3] - c[2] for c in calls if c[0] == "query"),
            "evaluate_s": sum(c[3] - c[2] for c in calls if c[0] == "evaluate")}


def categorise(stats: pstats.Stats, owners: int, rounds: int) -> list[dict[str, Any]]:
    rows = []
    for label, suffix, name, per in CATEGORIES:
        seconds = sum(v[3] for (f, _, fn), v in stats.stats.items()
                      if fn == name and (suffix == "~" and f == "~" or suffix != "~" and f.endswith(suffix)))
        calls = sum(v[1] for (f, _, fn), v in stats.stats.items()
                    if fn == name and (suffix == "~" and f == "~" or suffix != "~" and f.endswith(suffix)))
        divisor = {"owner": owners * rounds, "round": rounds, "run": 1}[per]
        rows.append({"part": label, "seconds": seconds, "calls": calls, "per": per,
                     "ms_per_unit": 1000 * seconds / divisor})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--owners", type=int, nargs="+", help="federation sizes (default 10 100 1000; quick 10)")
    p.add_argument("--rounds", type=int, help="rounds (default 3; quick 2)")
    p.add_argument("--model", default="logreg", choices=["logreg", "mlp"])
    p.add_argument("--dp", choices=["on", "off"], default="on")
    p.add_argument("--data", choices=["digits", "synthetic"], default="digits",
                   help="digits split IID (<= 1437 owners) or a synthetic folder of per-owner files (bench/synthetic.py)")
    p.add_argument("--records", type=int, default=10, help="synthetic: records per owner (default 10)")
    p.add_argument("--no-plain", action="store_true", help="privfl only")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--no-warmup", action="store_true",
                   help="warm up with 2 owners instead of a 1-round run of the full federation (large federations)")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    owners_list = args.owners or ([10] if args.quick else [10, 100, 1000])
    rounds = args.rounds or (2 if args.quick else 3)
    dp = args.dp == "on"
    root = temp_root("privfl-bench-round-")
    results = []
    try:
        for owners in owners_list:
            data_dir = ""
            if args.data == "synthetic" or owners > 1437:
                from bench.synthetic import write_folder

                data_dir = str(write_folder(root / f"data-{owners}", owners, args.records))
            row: dict[str, Any] = {"owners": owners, "rounds": rounds, "dp": dp, "model": args.model,
                                   "data": "synthetic" if data_dir else "digits"}
            print(f"== {owners} owners: privfl in-process", flush=True)
            row["privfl"] = run_inprocess("privfl", owners, rounds, dp, args.model, data_dir, root / f"privfl-{owners}",
                                          profile=not args.no_profile, warmup=not args.no_warmup)
            if not args.no_plain:
                print(f"== {owners} owners: plain in-process", flush=True)
                row["plain"] = run_inprocess("plain", owners, rounds, dp, args.model, data_dir,
                                             root / f"plain-{owners}", profile=False, warmup=not args.no_warmup)
            a, b = row["privfl"], row.get("plain")
            row.update(privfl_round_s=a["steady_round_s"], privfl_round1_s=a["round1_s"],
                       privfl_ms_per_owner_round=1000 * a["steady_round_s"] / owners if a["steady_round_s"] else None,
                       privfl_rss_mib=a["rss_mib"])
            if b:
                row.update(plain_round_s=b["steady_round_s"], plain_round1_s=b["round1_s"],
                           plain_ms_per_owner_round=1000 * b["steady_round_s"] / owners if b["steady_round_s"] else None,
                           ratio_round=a["steady_round_s"] / b["steady_round_s"] if b["steady_round_s"] else None,
                           extra_ms_per_owner_round=(1000 * (a["steady_round_s"] - b["steady_round_s"]) / owners
                                                     if b["steady_round_s"] else None))
            results.append(row)
            cleanup(root / f"privfl-{owners}")
            cleanup(root / f"plain-{owners}")
    finally:
        cleanup(root)
    print()
    print_table(results, [
        ("owners", "owners", "d"), ("privfl_round1_s", "privfl round 1 s", ".2f"),
        ("privfl_round_s", "privfl s/round", ".3f"), ("plain_round1_s", "plain round 1 s", ".2f"),
        ("plain_round_s", "plain s/round", ".3f"), ("ratio_round", "privfl/plain", ".2f"),
        ("privfl_ms_per_owner_round", "privfl ms/owner-round", ".2f"),
        ("plain_ms_per_owner_round", "plain ms/owner-round", ".2f"),
        ("extra_ms_per_owner_round", "privfl extra ms/owner-round", ".2f"), ("privfl_rss_mib", "RSS MiB", ".0f"),
    ], title=f"in-process rounds (one thread, DP {'on' if dp else 'off'}, {args.model})")
    for row in results:
        prof = row["privfl"].get("profile")
        if prof:
            print(f"\nprivfl, {row['owners']} owners x {rounds} rounds, cProfile (ms per owner-round or per round):")
            for r in prof:
                print(f"  {r['part']:<58} {r['ms_per_unit']:9.3f} ms/{r['per']:<5} ({r['calls']} calls)")
    write_results(args.out, NAME, quick=args.quick,
                  settings={"owners": owners_list, "rounds": rounds, "dp": dp, "model": args.model, "data": args.data,
                            "records_per_owner_synthetic": args.records, "torch_threads": 1,
                            "experiment": "quickstart settings (batch 72, lr 5.0, sigma 2.3), epsilon budget 1e6"},
                  results=results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
