"""Cost of privacy per client step: one local epoch, non-private vs DP-SGD per Opacus mode.

Every case runs in a subprocess of its own, so its peak memory (``ru_maxrss``) is its
own.  A case times privfl's real client path, :func:`privfl.client.training.train_locally`
(a fresh model wrapped by Opacus's PrivacyEngine, Poisson sampling, clipping, noise),
on digits records:

* ``round_ms``: one call with ``local_epochs = 1`` -- what an owner pays per round with
  one local epoch, including ``make_private`` (wrapping the model, the optimiser and the
  data loader) and copying the weights out;
* ``epoch_ms``: the marginal cost of one more epoch, ``(t(E=9) - t(E=1)) / 8`` -- the
  per-epoch compute with the per-round setup taken out;
* ``setup_ms = round_ms - epoch_ms``.

Each time is the 25th percentile of repeated calls (E=1 and E=9 interleaved), which
resists interference from other work on a shared machine better than the median (also
kept, as ``*_median_ms``).  Ratios are to the non-private case of the same model, data size and batch size.
All the modes of one (model, records, batch size) run in one subprocess, interleaved
call by call, so load from other work on a shared machine hits every mode alike
(``--isolate`` gives each mode its own subprocess instead, for its own peak memory).

Modes: ``nonprivate``; privfl's three (``hooks``, ``functorch``, ``ghost``, through
``train_locally``); and Opacus options privfl does not offer, through a copy of
``train_locally``'s loop (same loader, optimiser, loss, Poisson sampling): ``ew``
(expanded weights), and ``hooks-nowrap`` / ``ghost-nowrap`` (Opacus 1.6's
``make_private(wrap_model=False)``: hooks on the model itself, no GradSampleModule
wrapper in the forward pass).  The targets: DP-SGD within 2x of non-private for the
MLP at batch >= 64 (issue "privfl at the speed of plain Flower"); earlier, 1.5x.

    python -m bench.client_step            # logreg, MLP, CNN on 1,437 records at bs 16/32/64/128; MLP owner shares
    python -m bench.client_step --quick    # MLP, 144 records, bs 48
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/client_step.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO_ROOT, bench_env, median, parser, quantile, print_table, write_results

NAME = "client_step"
HI = 9  # local epochs of the long call; (t(HI) - t(1)) / (HI - 1) is one epoch
MODES = ("nonprivate", "auto", "hooks", "functorch", "ghost", "ew", "hooks-nowrap", "ghost-nowrap")
# "ew" (Opacus's expanded-weights mode) and the "-nowrap" variants (wrap_model=False) are
# not selectable in privfl's config; they are measured to show whether adding them would pay.
PRIVFL_MODES = ("auto", "hooks", "functorch", "ghost")  # auto: client/linear_dpsgd.py for linear models


def _replica_epoch(model: Any, data: Any, plan: Any, device: Any, *, seed: int, mode: str, wrap: bool) -> None:
    """``client.training.train_locally``'s loop with an Opacus option privfl does not offer."""
    import torch
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader

    from privfl.task import ClassificationLoss

    model = model.to(device)
    model.train()
    loader = DataLoader(data, batch_size=plan.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=plan.learning_rate, momentum=plan.momentum)
    criterion: Any = ClassificationLoss()
    engine = PrivacyEngine(accountant="rdp")
    common = dict(module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=plan.noise_multiplier,
                  max_grad_norm=plan.max_grad_norm, poisson_sampling=True,
                  noise_generator=torch.Generator(device=device).manual_seed(seed), grad_sample_mode=mode,
                  wrap_model=wrap)
    if mode == "ghost":
        hooks, optimizer, criterion, loader = engine.make_private(criterion=criterion, **common)
    else:
        hooks, optimizer, loader = engine.make_private(**common)
    forward = hooks if wrap else model  # wrap_model=False: the model itself, hooks attached to it
    for _ in range(plan.local_epochs):
        for features, labels in loader:
            features, labels = features.to(device), labels.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(forward(features), labels)
            loss.backward()
            optimizer.step()
    if not wrap:
        hooks.cleanup()


def run_case(case: dict[str, Any]) -> list[dict[str, Any]]:
    """Inside the subprocess: measure every mode of one (model, records, batch size), interleaved."""
    import resource
    import warnings

    import torch

    torch.set_num_threads(case["threads"])
    from opacus import PrivacyEngine  # noqa: F401  imported before the baseline for every mode

    from bench.common import current_rss_mib
    from privfl.client.training import train_locally
    from privfl.devices import resolve_device
    from privfl.models import build_model
    from privfl.protocol import TrainingPlan
    from privfl.simulations.datasets import load_dataset
    from privfl.simulations.partitioning import iid_partition

    warnings.filterwarnings("ignore")
    device = resolve_device("auto")
    train, _ = load_dataset("digits", 0)
    if case["records"] < len(train):
        parts = iid_partition(len(train), round(len(train) / case["records"]), 0)
        train = train.subset(parts[0])
    data = train.to_torch()
    modes = case["modes"]

    def plan(mode: str, epochs: int) -> TrainingPlan:
        dp = mode != "nonprivate"
        base = mode.removesuffix("-nowrap")
        return TrainingPlan(local_epochs=epochs, batch_size=case["batch_size"], learning_rate=0.5, momentum=0.0,
                            dp=dp, noise_multiplier=1.0 if dp else 0.0, max_grad_norm=1.0,
                            grad_sample_mode=base if dp and base in PRIVFL_MODES else "hooks")

    weights = build_model(case["model"], train.num_features, train.num_classes, seed=0).state_dict()

    def once(mode: str, epochs: int, seed: int) -> float:
        model = build_model(case["model"], train.num_features, train.num_classes)
        model.load_state_dict(weights)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        if mode in ("nonprivate", *PRIVFL_MODES):
            train_locally(model, data, plan(mode, epochs), device, seed=seed, noise_seed=seed)
        else:
            _replica_epoch(model, data, plan(mode, epochs), device, seed=seed, mode=mode.removesuffix("-nowrap"),
                           wrap=not mode.endswith("-nowrap"))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    rss_before = current_rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    results = {m: {**case, "mode": m, "modes": None, "device": str(device), "records": len(data)} for m in modes}
    times: dict[str, dict[int, list[float]]] = {m: {1: [], HI: []} for m in modes}
    failed: set[str] = set()
    for mode in modes:  # warm-up: the first make_private in a process costs ~0.7 s
        try:
            once(mode, 1, 0)
        except Exception as err:  # noqa: BLE001  a mode that fails here is a result, not a crash
            failed.add(mode)
            results[mode].update(ok=False, error=f"{type(err).__name__}: {err}"[:500])
    live = [m for m in modes if m not in failed]
    deadline = time.perf_counter() + case["seconds"]
    seed, reps = 1, 0
    while (reps < case["min_reps"] or time.perf_counter() < deadline) and reps < 200 and live:
        for mode in live:
            for epochs in (1, HI):
                times[mode][epochs].append(once(mode, epochs, seed))
        seed, reps = seed + 1, reps + 1
    for mode in live:
        t1, th = quantile(times[mode][1], 0.25), quantile(times[mode][HI], 0.25)
        m1, mh = median(times[mode][1]), median(times[mode][HI])
        results[mode].update(
            ok=True, reps=reps,
            round_ms=1000 * t1, epoch_ms=1000 * (th - t1) / (HI - 1), setup_ms=1000 * (t1 - (th - t1) / (HI - 1)),
            round_median_ms=1000 * m1, epoch_median_ms=1000 * (mh - m1) / (HI - 1),
            loadavg_1min=os.getloadavg()[0],
        )
    for mode in modes:
        results[mode]["rss_before_mib"] = rss_before
        results[mode]["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # of all modes
        results[mode]["train_rss_increase_mib"] = results[mode]["max_rss_mib"] - rss_before
        if device.type == "cuda":
            results[mode]["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return [results[m] for m in modes]


PROFILED = {
    "train_locally (whole call)": ("training.py", "train_locally"),
    "make_private (wrap model, optimiser, loader)": ("privacy_engine.py", "make_private"),
    "data loader: next batch (Poisson sampling, collate)": ("dataloader.py", "__next__"),
    "forward": ("module.py", "_call_impl"),
    "loss.backward (incl. per-sample-gradient hooks)": ("_tensor.py", "backward"),
    "  of which capture_backprops_hook (per-sample grads)": ("grad_sample_module.py", "capture_backprops_hook"),
    "Opacus DPOptimizer.step (DP only)": ("opacus/optimizers/optimizer.py", "step"),
    "  of which clip_and_accumulate": ("opacus/optimizers/optimizer.py", "clip_and_accumulate"),
    "  of which add_noise": ("opacus/optimizers/optimizer.py", "add_noise"),
    "zero_grad": ("optimizer.py", "zero_grad"),
}


def profile_case(case: dict[str, Any]) -> dict[str, Any]:
    """Inside the subprocess: where one local epoch's time goes (cProfile, ``calls`` calls with E=1)."""
    import cProfile
    import pstats
    import warnings

    import torch

    torch.set_num_threads(case["threads"])
    from privfl.client.training import train_locally
    from privfl.protocol import TrainingPlan
    from privfl.models import build_model
    from privfl.simulations.datasets import load_dataset
    from privfl.simulations.partitioning import iid_partition

    warnings.filterwarnings("ignore")
    train, _ = load_dataset("digits", 0)
    if case["records"] < len(train):
        train = train.subset(iid_partition(len(train), round(len(train) / case["records"]), 0)[0])
    data = train.to_torch()
    dp = case["mode"] != "nonprivate"
    plan = TrainingPlan(local_epochs=1, batch_size=case["batch_size"], learning_rate=0.5, momentum=0.0, dp=dp,
                        noise_multiplier=1.0 if dp else 0.0, max_grad_norm=1.0,
                        grad_sample_mode=case["mode"] if dp else "hooks")
    weights = build_model(case["model"], 64, 10, seed=0).state_dict()

    def call(seed: int) -> None:
        model = build_model(case["model"], 64, 10)
        model.load_state_dict(weights)
        train_locally(model, data, plan, torch.device("cpu"), seed=seed, noise_seed=seed)

    call(0)
    profiler = cProfile.Profile()
    profiler.enable()
    for seed in range(1, case["calls"] + 1):
        call(seed)
    profiler.disable()
    stats = pstats.Stats(profiler)
    per_call = {label: 1000 * sum(v[3] for (f, _, fn), v in stats.stats.items() if f.endswith(end) and fn == name)
                / case["calls"] for label, (end, name) in PROFILED.items()}
    top = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:10]
    return {**case, "ms_per_call": per_call,
            "top_self_ms_per_call": [(f"{Path(f).name}:{fn}", 1000 * v[2] / case["calls"]) for (f, _, fn), v in top]}


def cases(quick: bool, threads: int, isolate: bool = False) -> list[dict[str, Any]]:
    if quick:
        shapes = [("mlp", 144, 48)]
        modes: tuple[str, ...] = ("nonprivate", "auto", "hooks", "ghost")
        seconds, min_reps = 2.0, 5
    else:
        shapes = [(m, 1437, b) for m in ("logreg", "mlp", "cnn") for b in (16, 32, 64, 128)]
        shapes += [("mlp", 144, 16), ("mlp", 144, 72)]  # an owner's share of digits (10 owners)
        modes = MODES
        seconds, min_reps = 12.0, 5
    groups = [[mode] for mode in modes] if isolate else [list(modes)]
    return [{"model": m, "records": n, "batch_size": b, "modes": g, "threads": threads,
             "seconds": seconds / (len(modes) if isolate else 1), "min_reps": min_reps}
            for m, n, b in shapes for g in groups]


def spawn(case: dict[str, Any]) -> Any:
    process = subprocess.run(
        [sys.executable, "-m", "bench.client_step", "--case", json.dumps(case)],
        cwd=REPO_ROOT, env=bench_env(), capture_output=True, text=True, timeout=900,
    )
    lines = [line for line in process.stdout.splitlines() if line.startswith(("{", "["))]
    if process.returncode != 0 or not lines:
        error = f"subprocess exit {process.returncode}: {process.stderr[-500:]}"
        if "modes" in case:
            return [{**case, "mode": m, "modes": None, "ok": False, "error": error} for m in case["modes"]]
        return {**case, "ok": False, "error": error}
    return json.loads(lines[-1])


def add_ratios(results: list[dict[str, Any]]) -> None:
    base = {(r["model"], r["records"], r["batch_size"]): r for r in results if r["mode"] == "nonprivate" and r["ok"]}
    for r in results:
        b = base.get((r["model"], r["records"], r["batch_size"]))
        if not (r["ok"] and b and b["epoch_ms"] > 0 and b["round_ms"] > 0):
            continue  # no baseline (or a degenerate one on an overloaded machine): no ratio
        r["epoch_ratio"] = r["epoch_ms"] / b["epoch_ms"]
        r["round_ratio"] = r["round_ms"] / b["round_ms"]
        r["meets_1_5x"] = r["epoch_ratio"] <= 1.5
        r["meets_2x"] = r["epoch_ratio"] <= 2.0
        r["mem_ratio"] = r["max_rss_mib"] / b["max_rss_mib"]


def best_modes(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, records, batch size): the fastest DP mode privfl offers and the fastest of all."""
    out = []
    keys = sorted({(r["model"], r["records"], r["batch_size"]) for r in results})
    for key in keys:
        rows = [r for r in results if (r["model"], r["records"], r["batch_size"]) == key and r.get("epoch_ratio")
                and r["mode"] != "nonprivate"]
        offered = [r for r in rows if r["mode"] in PRIVFL_MODES]
        if not rows:
            continue
        best_all = min(rows, key=lambda r: r["epoch_ms"])
        best = min(offered, key=lambda r: r["epoch_ms"]) if offered else None
        hooks = next((r for r in rows if r["mode"] == "hooks"), None)
        out.append({"model": key[0], "records": key[1], "batch_size": key[2],
                    "best_privfl_mode": best and best["mode"], "best_privfl_ratio": best and best["epoch_ratio"],
                    "hooks_ratio": hooks and hooks["epoch_ratio"],
                    "gain_over_hooks": (1 - best["epoch_ms"] / hooks["epoch_ms"]) if best and hooks else None,
                    "best_mode": best_all["mode"], "best_ratio": best_all["epoch_ratio"]})
    return out


def main(argv: list[str] | None = None) -> int:
    p = parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per case (default 1: a simulated client gets one CPU)")
    p.add_argument("--no-profile", action="store_true", help="skip the cProfile breakdown of a few cases")
    p.add_argument("--isolate", action="store_true", help="one subprocess per mode (own peak memory; no interleaving)")
    p.add_argument("--case", help=argparse_hidden())
    args = p.parse_args(argv)
    if args.case:
        case = json.loads(args.case)
        print(json.dumps(profile_case(case) if "calls" in case else run_case(case)))
        return 0

    results = []
    for case in cases(args.quick, args.threads, args.isolate):
        for r in spawn(case):
            results.append(r)
            status = f"epoch {r['epoch_ms']:.1f} ms, round {r['round_ms']:.1f} ms" if r["ok"] else r["error"][:120]
            print(f"  {case['model']:>6} n={case['records']:>4} bs={case['batch_size']:>3} {r['mode']:>12}: {status}",
                  flush=True)
    add_ratios(results)
    best = best_modes(results)
    profiles = []
    if not args.quick and not args.no_profile:
        for model, records, bs in (("mlp", 1437, 64), ("cnn", 1437, 64)):
            for mode in ("nonprivate", "hooks", "ghost"):
                profiles.append(spawn({"model": model, "records": records, "batch_size": bs, "mode": mode,
                                       "threads": args.threads, "calls": 30}))
    print()
    print_table(results, [
        ("model", "model", ""), ("records", "records", "d"), ("batch_size", "bs", "d"), ("mode", "mode", ""),
        ("epoch_ms", "epoch ms", ".1f"), ("epoch_ratio", "x nonDP", ".2f"), ("round_ms", "round ms", ".1f"),
        ("round_ratio", "round x", ".2f"), ("setup_ms", "setup ms", ".1f"), ("max_rss_mib", "maxRSS MiB", ".0f"),
        ("train_rss_increase_mib", "+train MiB", ".1f"), ("meets_2x", "<=2x", ""),
    ], title=f"one local epoch on digits, {args.threads} torch thread(s), device {results[0].get('device', '?')}")
    print()
    print_table(best, [("model", "model", ""), ("records", "records", "d"), ("batch_size", "bs", "d"),
                       ("hooks_ratio", "hooks x", ".2f"), ("best_privfl_mode", "best privfl mode", ""),
                       ("best_privfl_ratio", "x", ".2f"), ("gain_over_hooks", "gain vs hooks", ".0%"),
                       ("best_mode", "best of all", ""), ("best_ratio", "x", ".2f")],
                title="the fastest mode per case (epoch time, ratio to non-private)")
    failed = [r for r in results if not r["ok"]]
    for r in failed:
        print(f"FAILED {r['model']} n={r['records']} bs={r['batch_size']} {r['mode']}: {r['error'][:300]}")
    for prof in profiles:
        if "ms_per_call" not in prof:
            print(f"profile failed: {prof.get('error')}")
            continue
        print(f"\nprofile {prof['model']} n={prof['records']} bs={prof['batch_size']} {prof['mode']} "
              f"(cProfile, ms per call with E=1; profiling inflates Python-heavy paths):")
        for label, ms in prof["ms_per_call"].items():
            print(f"  {label:<55} {ms:8.2f}")
    write_results(args.out, NAME, quick=args.quick, profiles=profiles, best=best,
                  settings={"threads": args.threads, "dataset": "digits", "optimizer": "SGD lr 0.5",
                            "noise_multiplier": 1.0, "max_grad_norm": 1.0, "path": "privfl.client.training.train_locally",
                            "privfl_modes": PRIVFL_MODES, "interleaved": not args.isolate},
                  results=results)
    return 0


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    raise SystemExit(main())
