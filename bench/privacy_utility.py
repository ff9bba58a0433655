"""Privacy-utility: test accuracy against the final epsilon, per data split and target epsilon.

Two paths run privfl's own code:

* ``inprocess`` (all rows): a FedAvg loop in this process that calls privfl's client
  training (:func:`privfl.client.training.train_locally`, i.e. Opacus DP-SGD with
  Poisson sampling), privfl's owners (:func:`privfl.client.data.simulated_owner`, the
  same split a simulated node loads), the same per-round batch-order seed as the
  ClientApp, Flower's FedAvg weighting (by number of examples) and privfl's server
  evaluation.  Epsilon is composed from the DP events Opacus recorded, with privfl's
  accountants.  Fast (seconds per run), so it covers every cell with several seeds.
* ``flower`` (a subset): the real thing, :func:`privfl.simulations.launcher.run_simulation`
  (SuperLink, Ray, ServerApp, ClientApps); 20-40 s per run here.  Its noise is drawn from
  the OS's entropy, as in production; the in-process loop seeds it per (seed, round,
  owner) so its rows are reproducible.

The noise multiplier for each target epsilon is planned once for the whole run with
``get_accountant(accountant).noise_multiplier(...)`` over the total number of steps;
owners of different sizes have different sampling rates and step counts, so sigma is
planned for each owner and the largest is used (every owner then ends at or below
the target; the one with the highest rate ends at it).

    python -m bench.privacy_utility            # full: 3 splits x {1, 3, 8, non-private} x 5 seeds (+ Flower subset)
    python -m bench.privacy_utility --quick    # digits IID, {3, non-private}, 2 seeds, 5 rounds
"""

from __future__ import annotations

import hashlib
import sys
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/privacy_utility.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import mean_std, parser, print_table, write_results

NAME = "privacy_utility"
NONPRIVATE = "non-private"


@dataclass(frozen=True)
class Setting:
    """A data split with its DP recipe and its non-private recipe (privfl's named experiments)."""

    name: str
    base: dict[str, Any]  # ExperimentConfig fields shared by both recipes
    dp: dict[str, Any]  # the DP recipe
    nonprivate: dict[str, Any]  # the non-private recipe


DIGITS_DP = dict(num_rounds=20, local_epochs=1, batch_size=72, learning_rate=5.0, max_grad_norm=1.0)  # quickstart
DIGITS_NONPRIVATE = dict(num_rounds=20, local_epochs=3, batch_size=16, learning_rate=0.5)  # quickstart-nonprivate
HEART_DP = dict(num_rounds=20, local_epochs=1, batch_size=16, learning_rate=0.5, max_grad_norm=1.0)  # heart-disease

SETTINGS = {
    "digits-iid": Setting("digits-iid", dict(dataset="digits", model="logreg", num_owners=10, partitioning="iid",
                                             delta=1e-5), DIGITS_DP, DIGITS_NONPRIVATE),
    "digits-dirichlet": Setting("digits-dirichlet", dict(dataset="digits", model="logreg", num_owners=10,
                                                         partitioning="dirichlet", dirichlet_alpha=0.5, delta=1e-5),
                                DIGITS_DP, DIGITS_NONPRIVATE),
    "heart-disease": Setting("heart-disease", dict(dataset="heart-disease", model="logreg", num_owners=4,
                                                   partitioning="natural", delta=1e-3), HEART_DP, HEART_DP),
}


def make_config(setting: Setting, target: float | None, seed: int, rounds: int | None = None,
                accountant: str = "rdp"):
    """The validated ExperimentConfig of one cell; sigma is planned here for a DP target."""
    from privfl.config import ExperimentConfig

    recipe = dict(setting.nonprivate if target is None else setting.dp)
    if rounds is not None:
        recipe["num_rounds"] = rounds
    config = ExperimentConfig(experiment=f"pu-{setting.name}", seed=seed, accountant=accountant,
                              dp=target is not None, epsilon_budget=1e6, **setting.base, **recipe)
    if target is not None:
        config = config.replace(noise_multiplier=plan_sigma(config, target))
    return config


def owners_of(config) -> list:
    from privfl.simulations.federation import simulated_federation

    return [simulated_owner_of(config, i) for i in range(len(simulated_federation(config).owner_ids))]


def simulated_owner_of(config, index: int):
    from privfl.client.data import simulated_owner
    from privfl.simulations.federation import simulated_federation

    return simulated_owner(config, index, len(simulated_federation(config).owner_ids))


def plan_sigma(config, target: float) -> float:
    """The noise multiplier that keeps every owner within ``target`` after the whole run."""
    from privfl.privacy.accountants import get_accountant
    from privfl.protocol import TrainingPlan

    accountant = get_accountant(config.accountant)
    plan = TrainingPlan.from_config(config.replace(noise_multiplier=1.0))
    sigmas = {}
    for owner in owners_of(config):
        event = plan.privacy_event(len(owner.train))
        key = (event.sample_rate, event.steps)
        if key not in sigmas:
            sigmas[key] = accountant.noise_multiplier(target_epsilon=target, delta=config.delta,
                                                      sample_rate=event.sample_rate,
                                                      steps=event.steps * config.num_rounds)
    return max(sigmas.values())


def _noise_seed(seed: int, server_round: int, owner_id: str) -> int:
    digest = hashlib.sha256(f"noise:{seed}:{server_round}:{owner_id}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def run_inprocess(config) -> dict[str, Any]:
    """FedAvg over privfl's owners with privfl's client training, in this process."""
    import numpy as np
    import torch

    from privfl.client.round import _round_seed  # the ClientApp's batch-order seed
    from privfl.client.training import train_locally
    from privfl.devices import resolve_device
    from privfl.models import ModelSpec
    from privfl.privacy.accountants import get_accountant
    from privfl.protocol import TrainingPlan
    from privfl.task import evaluate
    from privfl.simulations.datasets import load_dataset

    started = time.perf_counter()
    device = resolve_device(config.device)
    _, test = load_dataset(config.dataset, config.seed)
    spec = ModelSpec(config.model, test.num_features, test.num_classes)
    global_state = spec.build(seed=config.seed).state_dict()
    plan = TrainingPlan.from_config(config)
    owners = owners_of(config)
    data = {o.owner_id: o.train.to_torch() for o in owners}
    events: dict[str, list] = {o.owner_id: [] for o in owners}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for server_round in range(1, config.num_rounds + 1):
            updates = []
            for owner in owners:
                model = spec.build()
                model.load_state_dict(global_state)
                update = train_locally(
                    model, data[owner.owner_id], plan, device,
                    seed=_round_seed(f"{config.experiment}-{config.seed}", server_round, owner.owner_id),
                    noise_seed=_noise_seed(config.seed, server_round, owner.owner_id),
                )
                if update.privacy_event is not None:
                    events[owner.owner_id].append(update.privacy_event)
                updates.append(update)
            total = sum(u.num_examples for u in updates)
            global_state = OrderedDict(
                (key, torch.from_numpy(sum(u.state_dict[key].numpy() * (u.num_examples / total) for u in updates)
                                       .astype(np.float32)))
                for key in global_state
            )

    model = spec.build()
    model.load_state_dict(global_state)
    _, accuracy = evaluate(model, test, device=device)
    result: dict[str, Any] = {"accuracy": accuracy, "train_s": time.perf_counter() - started}
    if config.dataset == "heart-disease":
        from privfl.simulations.datasets import load_heart_disease

        per_hospital = {h: evaluate(model, t, device=device)[1] for h, (_, t) in load_heart_disease().items()}
        result["per_hospital_accuracy"] = per_hospital
        result["mean_hospital_accuracy"] = float(np.mean(list(per_hospital.values())))
    if config.dp:
        t = time.perf_counter()
        result["epsilon_by_owner"] = {o: get_accountant(config.accountant).epsilon(e, config.delta)
                                      for o, e in events.items()}
        result["epsilon"] = max(result["epsilon_by_owner"].values())
        result["epsilon_min"] = min(result["epsilon_by_owner"].values())
        pld = get_accountant("pld")
        result["epsilon_pld"] = max(pld.epsilon(e, config.delta) for e in events.values())
        result["accounting_s"] = time.perf_counter() - t
    return result


def run_flower(config, run_dir: Path) -> dict[str, Any]:
    """The same cell through privfl's real Flower simulation."""
    from privfl.simulations.launcher import run_simulation

    started = time.perf_counter()
    history = run_simulation(config.replace(run_dir=str(run_dir)), stream=False).history
    result: dict[str, Any] = {"accuracy": history["final_test_accuracy"], "wall_s": time.perf_counter() - started}
    if config.dp:
        epsilons = {o: v["epsilon"] for o, v in history["owners"].items()}
        result["epsilon_by_owner"] = epsilons
        result["epsilon"] = max(epsilons.values())
        result["epsilon_min"] = min(epsilons.values())
    return result


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    keys = []
    for r in runs:
        key = (r["path"], r["setting"], r["target"])
        if key not in keys:
            keys.append(key)
    for path, setting, target in keys:
        cell = [r for r in runs if (r["path"], r["setting"], r["target"]) == (path, setting, target)]
        acc, acc_sd = mean_std(r["accuracy"] for r in cell)
        eps, eps_sd = mean_std(r.get("epsilon") for r in cell)
        row = {"path": path, "setting": setting, "target": target, "seeds": len(cell),
               "accuracy_mean": acc, "accuracy_std": acc_sd,
               "accuracy_min": min(r["accuracy"] for r in cell), "accuracy_max": max(r["accuracy"] for r in cell),
               "epsilon_max_owner": eps, "epsilon_min_owner": mean_std(r.get("epsilon_min") for r in cell)[0],
               "epsilon_pld": mean_std(r.get("epsilon_pld") for r in cell)[0],
               "noise_multiplier": cell[0]["noise_multiplier"], "rounds": cell[0]["rounds"],
               "batch_size": cell[0]["batch_size"], "local_epochs": cell[0]["local_epochs"]}
        if any("mean_hospital_accuracy" in r for r in cell):
            row["mean_hospital_accuracy"] = mean_std(r.get("mean_hospital_accuracy") for r in cell)[0]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, help="seeds per cell (default 5, quick 2)")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), help="data splits (default: all; quick: digits-iid)")
    p.add_argument("--targets", nargs="+", help="target epsilons, 'none' = non-private (default 1 3 8 none)")
    p.add_argument("--rounds", type=int, help="override every recipe's rounds (quick: 5)")
    p.add_argument("--flower-seeds", type=int, default=None,
                   help="seeds of the Flower subset (digits-iid at epsilon 3 and non-private; default 2, quick 0)")
    p.add_argument("--run-root", type=Path, default=None, help="where Flower runs go (default: a temp folder)")
    p.add_argument("--paths", nargs="+", choices=["inprocess", "flower"], default=["inprocess", "flower"],
                   help="which paths to run (default both; the Flower subset needs --flower-seeds > 0)")
    p.add_argument("--no-pooled", action="store_true", help="skip the pooled (one owner) reference rows")
    args = p.parse_args(argv)

    import tempfile

    import torch

    torch.set_num_threads(1)
    seeds = args.seeds or (2 if args.quick else 5)
    settings = args.settings or (["digits-iid"] if args.quick else list(SETTINGS))
    targets_text = args.targets or (["3", "none"] if args.quick else ["1", "3", "8", "none"])
    targets = [None if t == "none" else float(t) for t in targets_text]
    rounds = args.rounds or (5 if args.quick else None)
    flower_seeds = args.flower_seeds if args.flower_seeds is not None else (0 if args.quick else 2)
    run_root = args.run_root or Path(tempfile.mkdtemp(prefix="privfl-bench-pu-"))

    runs: list[dict[str, Any]] = []

    def record(path: str, setting: str, target: float | None, seed: int, config, result: dict[str, Any]) -> None:
        row = {"path": path, "setting": setting, "target": NONPRIVATE if target is None else target, "seed": seed,
               "noise_multiplier": config.noise_multiplier if config.dp else 0.0, "rounds": config.num_rounds,
               "batch_size": config.batch_size, "local_epochs": config.local_epochs,
               "learning_rate": config.learning_rate, "delta": config.delta, **result}
        runs.append(row)
        eps = f"eps {row['epsilon']:.2f}" if "epsilon" in row else "non-private"
        print(f"  {path:>9} {setting:>16} target {str(row['target']):>11} seed {seed}: "
              f"acc {row['accuracy']:.3f}, {eps}, sigma {row['noise_multiplier']:.3f}", flush=True)

    # Pooled, non-private: one owner holding all the training data (the centralised reference).
    pooled_done = set()
    for name in (settings if "inprocess" in args.paths and not args.no_pooled else []):
        s = SETTINGS[name]
        if s.base["dataset"] in pooled_done:  # one pooled reference per data set (the split does not matter)
            continue
        pooled_done.add(s.base["dataset"])
        pooled = Setting(s.base["dataset"] + "/pooled", {**s.base, "num_owners": 1, "partitioning": "iid"},
                         s.dp, s.nonprivate)
        for seed in range(seeds):
            config = make_config(pooled, None, seed, rounds)
            record("inprocess", pooled.name, None, seed, config, run_inprocess(config))

    for name in (settings if "inprocess" in args.paths else []):
        for target in targets:
            for seed in range(seeds):
                config = make_config(SETTINGS[name], target, seed, rounds)
                record("inprocess", name, target, seed, config, run_inprocess(config))

    for target in ([3.0, None] if flower_seeds and "flower" in args.paths else []):
        for seed in range(flower_seeds):
            config = make_config(SETTINGS["digits-iid"], target, seed, rounds)
            run_dir = run_root / f"digits-iid-{target or 'nonprivate'}-seed{seed}"
            record("flower", "digits-iid", target, seed, config, run_flower(config, run_dir))

    if not args.run_root:
        import shutil

        shutil.rmtree(run_root, ignore_errors=True)
    rows = summarise(runs)
    print()
    print_table(rows, [
        ("path", "path", ""), ("setting", "setting", ""), ("target", "target eps", ""), ("seeds", "seeds", "d"),
        ("noise_multiplier", "sigma", ".3f"), ("epsilon_max_owner", "eps (max owner, rdp)", ".2f"),
        ("epsilon_min_owner", "eps min owner", ".2f"), ("epsilon_pld", "eps pld", ".2f"),
        ("accuracy_mean", "acc mean", ".3f"), ("accuracy_std", "acc sd", ".3f"),
        ("accuracy_min", "acc min", ".3f"), ("accuracy_max", "acc max", ".3f"),
        ("mean_hospital_accuracy", "mean hosp acc", ".3f"),
    ], title="test accuracy vs final epsilon (logreg; rdp plans sigma and enforces)")
    write_results(args.out, NAME, quick=args.quick,
                  settings={"seeds": seeds, "settings": {n: {"base": SETTINGS[n].base, "dp": SETTINGS[n].dp,
                                                             "nonprivate": SETTINGS[n].nonprivate} for n in settings},
                            "targets": targets_text, "rounds_override": rounds, "flower_seeds": flower_seeds,
                            "accountant": "rdp", "torch_threads": 1},
                  results=rows, runs=runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
