"""Benchmark the privacy ledger: appends, verification and epsilon recomputation.

    python -m bench.ledger_bench            # full run (~17 min here: mostly PRV and distinct settings hitting limits)
    python -m bench.ledger_bench --quick    # smaller sizes, tight time limits (about 30 s)

Prints tables and writes ``--out`` (default bench/results/ledger.json) with one row
per measurement (``measure`` = append, verify or epsilon):

- append: entries appended per second by ``OwnerLedger.charge`` end to end: recompute
  the cumulative epsilon from all stored events, sign (Ed25519), insert and commit
  durably (WAL, synchronous=FULL: one fsync per entry), per accountant;
- verify: seconds per 10,000 entries for ``verify`` (signatures, chain, columns) with
  the stated epsilons recomputed for every entry (``all``), the last (``last``) or none,
  on an RDP ledger with 20 distinct settings, caches cold;
- epsilon: recomputing one owner's epsilon from 1,000 and 10,000 events, per
  accountant, caches cold, in three shapes: ``merged`` (every round the same noise and
  rate, so merge_repeats folds them into one setting), ``varied`` (rounds cycling
  through a few dozen settings, as over many runs) and ``distinct`` (every event a new
  setting: the worst case; full mode only).  Each measurement runs in a forked child
  with a time limit and a memory cap (``--memory-gib``): Opacus's PRV needs memory that
  grows with the total number of steps composed.
"""

from __future__ import annotations

import multiprocessing
import queue
import random
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the bench package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS_DIR, parser, print_table, write_results  # noqa: E402
from privfl.privacy.accountants import ACCOUNTANT_NAMES, get_accountant  # noqa: E402
from privfl.privacy.events import PoissonSubsampledGaussian as Event  # noqa: E402
from privfl.privacy.keys import generate_key  # noqa: E402
from privfl.privacy.ledger import OwnerLedger, update_hash, verify  # noqa: E402

NAME = "ledger_bench"
DELTA = 1e-5


def clear_caches() -> None:
    """Forget every cached RDP curve, PLD and epsilon, so timings are cold."""
    from privfl.privacy.accountants import opacus_backed, pld

    for cached in (opacus_backed._rdp_per_step, opacus_backed._cached_epsilon, pld._step_pld, pld._event_pld,
                   pld._merged_epsilon):
        cached.cache_clear()


def settings_pool(count: int, seed: int) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    return [(round(rng.uniform(0.8, 3.0), 4), round(rng.uniform(0.002, 0.05), 5)) for _ in range(count)]


def make_events(shape: str, n: int, varied_settings: int) -> list[Event]:
    rng = random.Random(n)
    if shape == "merged":
        return [Event(1.1, 0.01, rng.randint(5, 50)) for _ in range(n)]
    pool = settings_pool(n if shape == "distinct" else varied_settings, seed=1)
    return [Event(s, q, rng.randint(5, 50)) for s, q in (pool[i % len(pool)] for i in range(n))]


def _charge(ledger: OwnerLedger, r: int, setting: tuple[float, float], accountant: str) -> None:
    ledger.charge("bench", r, Event(*setting, 10), clipping_norm=1.0, delta=DELTA, epsilon_budget=1e9,
                  accountant=accountant, update_hash=update_hash(str(r).encode()))


def bench_appends(folder: Path, count: int, accountant: str, settings_count: int = 5) -> dict:
    pool = settings_pool(settings_count, seed=2)
    with OwnerLedger.open(folder / f"append-{accountant}.db", "owner", generate_key()) as ledger:
        for r in range(len(pool)):  # warm the per-setting caches; not timed
            _charge(ledger, r, pool[r], accountant)
        start = time.perf_counter()
        for r in range(len(pool), len(pool) + count):
            _charge(ledger, r, pool[r % len(pool)], accountant)
        elapsed = time.perf_counter() - start
    return {"measure": "append", "accountant": accountant, "entries": count, "distinct_settings": len(pool),
            "seconds": elapsed, "entries_per_second": count / elapsed}


def bench_verify(folder: Path, count: int) -> list[dict]:
    path, key, pool = folder / "verify.db", generate_key(), settings_pool(20, seed=3)
    with OwnerLedger.open(path, "owner", key) as ledger:
        for r in range(count):
            _charge(ledger, r, pool[r % len(pool)], "rdp")
    rows = []
    for mode in ("none", "last", "all"):
        clear_caches()
        start = time.perf_counter()
        report = verify(path, key.public_key(), epsilon_check=mode)
        elapsed = time.perf_counter() - start
        assert report.ok, report.summary()
        rows.append({"measure": "verify", "accountant": "rdp", "epsilon_check": mode, "entries": count,
                     "distinct_settings": len(pool), "file_bytes": path.stat().st_size, "seconds": elapsed,
                     "seconds_per_10000_entries": elapsed * 10_000 / count})
    return rows


def _epsilon_worker(name: str, events: list[Event], memory_bytes: int, results) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    clear_caches()
    try:
        start = time.perf_counter()
        epsilon = get_accountant(name).epsilon(events, DELTA)
        results.put({"seconds": time.perf_counter() - start, "epsilon": epsilon})
    except MemoryError:
        results.put({"failed": f"out of memory (cap {memory_bytes / 2**30:.0f} GiB)"})


def bench_epsilon(sizes: list[int], shapes: list[str], varied_settings: int, limit_s: float,
                  memory_gib: float) -> list[dict]:
    """Each measurement in a forked child: cold caches, a memory cap and a time limit."""
    context = multiprocessing.get_context("fork")
    rows = []
    for name in ACCOUNTANT_NAMES:
        for shape in shapes:
            for n in sizes:
                events = make_events(shape, n, varied_settings)
                row = {"measure": "epsilon", "accountant": name, "shape": shape, "events": n,
                       "distinct_settings": len({(e.noise_multiplier, e.sample_rate) for e in events}),
                       "total_steps": sum(e.steps for e in events)}
                results = context.Queue()
                child = context.Process(target=_epsilon_worker,
                                        args=(name, events, int(memory_gib * 2**30), results))
                child.start()
                try:
                    row.update(results.get(timeout=limit_s))
                except queue.Empty:
                    row["failed"] = f"over the {limit_s:.0f} s limit"
                child.kill()
                child.join()
                if "seconds" in row:
                    row["ms"] = row["seconds"] * 1000
                rows.append(row)
                state = row.get("failed") or f"{row['ms']:.1f} ms"
                print(f"  {name:>4} {shape:>8} {n:>6} events ({row['distinct_settings']} settings): {state}",
                      flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = parser(NAME, __doc__.splitlines()[0])
    p.set_defaults(out=RESULTS_DIR / "ledger.json")
    p.add_argument("--memory-gib", type=float, default=6.0,
                   help="memory cap of each epsilon measurement (default 6)")
    args = p.parse_args(argv)
    settings = {
        "appends": {"rdp": 200 if args.quick else 2000, "pld": 50 if args.quick else 500,
                    "prv": 10 if args.quick else 100},
        "verify_entries": 1000 if args.quick else 10_000,
        "epsilon_sizes": [1000, 10_000],
        "epsilon_shapes": ["merged", "varied"] if args.quick else ["merged", "varied", "distinct"],
        "varied_settings": 20 if args.quick else 50,
        "epsilon_limit_s": 5.0 if args.quick else 120.0,
        "memory_gib": args.memory_gib,
        "delta": DELTA,
    }
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        print("appending (recompute epsilon, sign, durable commit) ...", flush=True)
        appends = [bench_appends(Path(tmp), n, name) for name, n in settings["appends"].items()]
        print_table(appends, [("accountant", "accountant", ""), ("entries", "entries", "d"),
                              ("entries_per_second", "entries/s", ".1f")])
        print(f"\nverifying {settings['verify_entries']} entries ...", flush=True)
        verifies = bench_verify(Path(tmp), settings["verify_entries"])
        print_table(verifies, [("epsilon_check", "epsilon check", ""), ("seconds", "s", ".2f"),
                               ("seconds_per_10000_entries", "s per 10,000", ".2f")])
    results += appends + verifies
    print("\nrecomputing one owner's epsilon (cold caches) ...", flush=True)
    epsilons = bench_epsilon(settings["epsilon_sizes"], settings["epsilon_shapes"], settings["varied_settings"],
                             settings["epsilon_limit_s"], args.memory_gib)
    print_table(epsilons, [("accountant", "accountant", ""), ("shape", "shape", ""), ("events", "events", "d"),
                           ("distinct_settings", "settings", "d"), ("ms", "ms", ".1f"), ("epsilon", "epsilon", ".4g"),
                           ("failed", "not measured", "")])
    results += epsilons
    write_results(args.out, NAME, quick=args.quick, settings=settings, results=results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
