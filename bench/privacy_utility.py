"""Privacy-utility: test accuracy against each owner's final epsilon, per data split and target epsilon.

Every DP cell is an experiment with a privacy *target* (``target-epsilon``): each owner
plans its own noise multiplier for it, from its own records, the batch size, local
epochs and rounds, with the accountant that enforces its budget (PLD), exactly as the
ClientApp does (:func:`privfl.client.guard.owner_plan`, which calls
:func:`privfl.privacy.planning.plan_noise`).  The recipes (model, rounds, local epochs,
batch size, learning rate, momentum, clipping norm) are privfl's named experiments in
``simulations/configs/`` (``digits-eps1``, ``digits-eps3``, ``digits-dirichlet-eps1``,
``digits-dirichlet-eps3``, ``heart-disease-eps1``); how they were chosen is
``bench/pu_tuning.py``.

Two paths run privfl's own code:

* ``inprocess`` (all rows): a FedAvg loop in this process that calls privfl's client
  training (:func:`privfl.client.training.train_locally`, i.e. Opacus DP-SGD with
  Poisson sampling at 1 / ceil(n / batch)), privfl's owners
  (:func:`privfl.client.data.simulated_owner`, the same split a simulated node loads),
  each owner's own plan (the ClientApp's ``owner_plan`` with the simulated owner's
  policy), the ClientApp's per-round batch-order seed, Flower's FedAvg weighting (by
  number of examples) and privfl's server evaluation.  Epsilon is composed from the DP
  events Opacus recorded, with privfl's accountants (PLD, which plans and enforces, and
  RDP for comparison).  Noise is seeded per (seed, round, owner) so rows are
  reproducible; each seed also changes the digits train/test split and the model's
  initialisation.  Fast (about a second per run), so every cell has 5 seeds.
* ``flower`` (one run per recipe): the real thing, :func:`privfl.simulations.launcher.run_simulation`
  (SuperLink, Ray, ServerApp, ClientApps that plan their own noise, ledgers); 30-60 s a
  run here.  Its noise is drawn from the OS's entropy, as in production.

``--planning one-sigma`` is the old way for comparison: one sigma for every owner, the
largest any owner needs (planned with the same accountant), so only the owner with the
highest sampling rate ends at the target.

    python -m bench.privacy_utility            # full: 3 splits x {1, 3, 8, non-private} x 5 seeds (+ 1 Flower run per recipe)
    python -m bench.privacy_utility --quick    # digits IID, {3, non-private}, 2 seeds, 5 rounds
    python -m bench.privacy_utility --settings digits-dirichlet --targets 1 --planning one-sigma per-owner \\
        --recipe digits-dirichlet-batch72 --paths inprocess --no-pooled    # the per-owner planning figure
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/privacy_utility.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO_ROOT, mean_std, parser, print_table, write_results

NAME = "privacy_utility"
NONPRIVATE = "non-private"
CONFIGS = REPO_ROOT / "simulations" / "configs"
PLANNING_ACCOUNTANT = "pld"
# The training knobs a recipe sets (the rest of a named experiment is its data split and policy).
RECIPE_KEYS = ("model", "num_rounds", "local_epochs", "batch_size", "learning_rate", "momentum", "max_grad_norm")


@dataclass(frozen=True)
class Setting:
    """A data split, the named experiment (recipe) for each target epsilon, and its non-private recipe."""

    name: str
    base: dict[str, Any]  # ExperimentConfig fields of the split (checked against every named experiment)
    recipes: dict[float, str]  # target epsilon -> named experiment in simulations/configs
    fallback: str  # the named experiment for other targets (its recipe, planned for that target)
    nonprivate: dict[str, Any]


DIGITS_NONPRIVATE = dict(model="logreg", num_rounds=20, local_epochs=3, batch_size=16, learning_rate=0.5)
HEART_NONPRIVATE = dict(model="logreg", num_rounds=20, local_epochs=1, batch_size=16, learning_rate=0.5)
# The old quickstart recipe (untuned), kept for the planning comparison: batch 72 gives owners
# of different sizes different sampling rates, which is where per-owner planning matters.
BATCH72 = dict(model="logreg", num_rounds=20, local_epochs=1, batch_size=72, learning_rate=5.0, momentum=0.0,
               max_grad_norm=1.0)

DIGITS_IID = dict(dataset="digits", num_owners=10, partitioning="iid", delta=1e-5)
DIGITS_DIRICHLET = dict(dataset="digits", num_owners=10, partitioning="dirichlet", dirichlet_alpha=0.5, delta=1e-5)
HEART = dict(dataset="heart-disease", num_owners=4, partitioning="natural", delta=1e-3)

SETTINGS = {
    "digits-iid": Setting("digits-iid", DIGITS_IID, {1.0: "digits-eps1", 3.0: "digits-eps3"}, "digits-eps3",
                          DIGITS_NONPRIVATE),
    "digits-dirichlet": Setting("digits-dirichlet", DIGITS_DIRICHLET,
                                {1.0: "digits-dirichlet-eps1", 3.0: "digits-dirichlet-eps3"},
                                "digits-dirichlet-eps3", DIGITS_NONPRIVATE),
    "heart-disease": Setting("heart-disease", HEART, {1.0: "heart-disease-eps1"}, "heart-disease-eps1",
                             HEART_NONPRIVATE),
}


# --------------------------------------------------------------------------- configs


def named_experiment(name: str, **overrides: Any):
    """``simulations/configs/<name>.toml`` as an ExperimentConfig (fields as keyword overrides)."""
    from privfl.config import ExperimentConfig

    return ExperimentConfig.from_toml(CONFIGS / f"{name}.toml").replace(**overrides)


def recipe_name(setting: Setting, target: float) -> str:
    return setting.recipes.get(float(target), setting.fallback)


def make_config(setting: Setting, target: float | None, seed: int, *, rounds: int | None = None,
                recipe: dict[str, Any] | str | None = None, planning: str = "per-owner", pooled: bool = False):
    """The validated ExperimentConfig of one cell.

    DP cells start from the setting's named experiment for ``target`` (or ``recipe``: a
    named experiment, or a dict of :data:`RECIPE_KEYS` over the setting's fallback),
    with ``target-epsilon = target`` and PLD.  ``planning = "one-sigma"`` instead sends
    every owner the largest sigma any owner plans for itself (the old way).  ``pooled``:
    one owner holding all the training data (central DP for a DP target: one curator,
    one noise draw per step, the reference the federation is measured against).
    """
    from privfl.config import ExperimentConfig

    if target is None:
        config = ExperimentConfig(experiment=f"pu-{setting.name}", seed=seed, dp=False, **setting.base,
                                  **setting.nonprivate)
        if pooled:
            config = config.replace(num_owners=1, partitioning="iid", experiment=f"pu-{setting.name}-pooled")
    else:
        name = recipe if isinstance(recipe, str) else recipe_name(setting, target)
        config = named_experiment(name, seed=seed)
        for key, value in setting.base.items():
            if getattr(config, key) != value:
                raise ValueError(f"{name}.toml has {key} = {getattr(config, key)!r}, the split "
                                 f"{setting.name} needs {value!r}")
        if isinstance(recipe, dict):
            config = config.replace(**recipe)
        if pooled:  # a full-batch recipe stays full batch for the one owner holding everything (q = 1)
            from privfl.simulations.datasets import load_dataset

            largest = max(len(o.train) for o in owners_of(config))
            records = len(load_dataset(config.dataset, seed)[0])
            config = config.replace(num_owners=1, partitioning="iid", experiment=f"{config.experiment}-pooled",
                                    batch_size=records if config.batch_size >= largest else config.batch_size)
        config = config.replace(dp=True, target_epsilon=float(target), accountant=PLANNING_ACCOUNTANT,
                                epsilon_budget=max(config.epsilon_budget, float(target)))
    if rounds is not None:
        config = config.replace(num_rounds=rounds)
    if config.dp and planning == "one-sigma":
        sigma = max(p.noise_multiplier for p in owner_plans(config).values())
        config = config.replace(target_epsilon=0.0, noise_multiplier=sigma)
    elif planning not in ("per-owner", "one-sigma"):
        raise ValueError(f"unknown planning {planning!r}")
    return config


def owners_of(config) -> list:
    from privfl.client.data import simulated_owner
    from privfl.simulations.federation import simulated_federation

    count = len(simulated_federation(config).owner_ids)
    return [simulated_owner(config, i, count) for i in range(count)]


def owner_plans(config, server_round: int = 1) -> dict[str, Any]:
    """Each owner's TrainingPlan as its ClientApp makes it: its own noise when the config sends a target."""
    from privfl.client.guard import owner_plan, plan_problem
    from privfl.privacy.policy import RECORD, simulated_owner_policy
    from privfl.simulations.federation import simulated_federation

    from privfl.models import ModelSpec
    from privfl.protocol import RoundRequest, TrainingPlan

    federation = simulated_federation(config)
    spec = ModelSpec(config.model, federation.num_features, federation.num_classes)
    plans = {}
    for owner in owners_of(config):
        policy = simulated_owner_policy(config, owner.owner_id, Path(tempfile.gettempdir()) / "unused")
        request = RoundRequest(experiment_id=f"pu-{config.seed}", server_round=server_round, purpose=config.purpose,
                               privacy_unit=RECORD, model=spec, plan=TrainingPlan.from_config(config))
        plan = owner_plan(policy, request, len(owner.train), spent_elsewhere=())
        problem = plan_problem(policy, plan, owner) if config.dp else None
        if problem:
            raise ValueError(f"{owner.owner_id} would refuse: {problem}")
        plans[owner.owner_id] = plan
    return plans


# --------------------------------------------------------------------------- in-process FedAvg


def _noise_seed(seed: int, server_round: int, owner_id: str) -> int:
    digest = hashlib.sha256(f"noise:{seed}:{server_round}:{owner_id}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def _batch_seed(seed: int, server_round: int, owner_id: str) -> int:
    """A reproducible benchmark's batch seed (the ClientApp draws its batches from the OS's entropy)."""
    digest = hashlib.sha256(f"batches:{seed}:{server_round}:{owner_id}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def epsilons(events: dict[str, list], delta: float, target: float | None) -> dict[str, Any]:
    """Each owner's final epsilon by PLD (plans and enforces) and RDP, and the spread relative to the target."""
    from privfl.privacy.accountants import get_accountant

    out: dict[str, Any] = {}
    for accountant in ("pld", "rdp"):
        by_owner = {o: get_accountant(accountant).epsilon(e, delta) for o, e in events.items()}
        out[f"epsilon_{accountant}_by_owner"] = by_owner
        out[f"epsilon_{accountant}_max"] = max(by_owner.values())
        out[f"epsilon_{accountant}_min"] = min(by_owner.values())
    if target:
        ratios = [v / target for v in out["epsilon_pld_by_owner"].values()]
        out["epsilon_ratio_min"], out["epsilon_ratio_max"] = min(ratios), max(ratios)
    return out


def run_inprocess(config, target: float | None = None) -> dict[str, Any]:
    """FedAvg over privfl's owners with privfl's client training and each owner's own plan, in this process.

    ``target``: the epsilon the owners' final epsilons are compared with (default: the
    config's target-epsilon; one-sigma configs have none, so the bench passes it).
    """
    import numpy as np
    import torch
    from privfl.client.training import train_locally
    from privfl.simulations.datasets import load_dataset

    from privfl.devices import resolve_device
    from privfl.models import ModelSpec
    from privfl.task import evaluate

    started = time.perf_counter()
    device = resolve_device(config.device)
    _, test = load_dataset(config.dataset, config.seed)
    spec = ModelSpec(config.model, test.num_features, test.num_classes)
    global_state = spec.build(seed=config.seed).state_dict()
    plans = owner_plans(config)
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
                plan = plans[owner.owner_id]
                update = train_locally(
                    model, data[owner.owner_id], plan, device,
                    seed=_batch_seed(config.seed, server_round, owner.owner_id),
                    noise_seed=_noise_seed(config.seed, server_round, owner.owner_id),
                )
                if update.privacy_event is not None:
                    if update.privacy_event != plan.privacy_event(len(owner.train)):  # as the ClientApp checks
                        raise RuntimeError(f"{owner.owner_id}: Opacus recorded {update.privacy_event}")
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
        result["sigma_by_owner"] = {o: p.noise_multiplier for o, p in plans.items()}
        result["records_by_owner"] = {o.owner_id: len(o.train) for o in owners}
        result.update(epsilons(events, config.delta, target or config.target_epsilon or None))
        result["accounting_s"] = time.perf_counter() - t
    return result


# --------------------------------------------------------------------------- Flower


def run_flower(config, run_dir: Path) -> dict[str, Any]:
    """The same cell through privfl's real Flower simulation (the ClientApps plan their own noise)."""
    from privfl.simulations.launcher import run_simulation

    started = time.perf_counter()
    history = run_simulation(config.replace(run_dir=str(run_dir)), stream=False).history
    result: dict[str, Any] = {"accuracy": history["final_test_accuracy"], "wall_s": time.perf_counter() - started,
                              "status": history.get("status"), "failed_updates": history.get("failed_updates")}
    owners = history["owners"]
    evaluations = {o: v["evaluation"]["accuracy"] for o, v in owners.items() if v.get("evaluation")}
    if config.dataset == "heart-disease" and evaluations:
        result["per_hospital_accuracy"] = evaluations
        result["mean_hospital_accuracy"] = sum(evaluations.values()) / len(evaluations)
    if config.dp:
        by_owner = {o: v["epsilon"] for o, v in owners.items()}
        result["epsilon_pld_by_owner"] = by_owner  # the owners' own accountant (PLD), from their signed receipts
        result["epsilon_pld_max"], result["epsilon_pld_min"] = max(by_owner.values()), min(by_owner.values())
        if config.target_epsilon:
            result["epsilon_ratio_min"] = result["epsilon_pld_min"] / config.target_epsilon
            result["epsilon_ratio_max"] = result["epsilon_pld_max"] / config.target_epsilon
        result["rounds_trained"] = {o: v.get("rounds_trained") for o, v in owners.items()}
    return result


# --------------------------------------------------------------------------- tables


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    keys: list[tuple] = []
    for r in runs:
        key = (r["path"], r["setting"], r["target"], r["planning"], r["recipe"])
        if key not in keys:
            keys.append(key)
    for key in keys:
        cell = [r for r in runs if (r["path"], r["setting"], r["target"], r["planning"], r["recipe"]) == key]
        acc, acc_sd = mean_std(r["accuracy"] for r in cell)
        row = {"path": key[0], "setting": key[1], "target": key[2], "planning": key[3], "recipe": key[4],
               "seeds": len(cell), "accuracy_mean": acc, "accuracy_std": acc_sd,
               "accuracy_min": min(r["accuracy"] for r in cell), "accuracy_max": max(r["accuracy"] for r in cell),
               **{k: cell[0][k] for k in ("model", "rounds", "batch_size", "local_epochs", "learning_rate",
                                          "momentum", "max_grad_norm", "delta")}}
        if "sigma_by_owner" in cell[0]:
            sigmas = [s for r in cell for s in r["sigma_by_owner"].values()]
            row["sigma_min"], row["sigma_max"] = min(sigmas), max(sigmas)
        for name in ("epsilon_pld_max", "epsilon_rdp_max", "epsilon_ratio_max"):
            if any(name in r for r in cell):
                row[name] = max(r[name] for r in cell if name in r)
        for name in ("epsilon_pld_min", "epsilon_rdp_min", "epsilon_ratio_min"):
            if any(name in r for r in cell):
                row[name] = min(r[name] for r in cell if name in r)
        # The keys bench/tables.py reads (its header says RDP; here they are PLD, the planning accountant).
        row.update(noise_multiplier=row.get("sigma_max", 0.0), epsilon_max_owner=row.get("epsilon_pld_max"),
                   epsilon_min_owner=row.get("epsilon_pld_min"), epsilon_pld=row.get("epsilon_pld_max"))
        if any("mean_hospital_accuracy" in r for r in cell):
            values = [r["mean_hospital_accuracy"] for r in cell]
            row["mean_hospital_accuracy"], row["mean_hospital_accuracy_std"] = mean_std(values)
            row["mean_hospital_accuracy_min"], row["mean_hospital_accuracy_max"] = min(values), max(values)
        rows.append(row)
    return rows


COLUMNS = [
    ("path", "path", ""), ("setting", "setting", ""), ("target", "target eps", ""), ("planning", "planning", ""),
    ("recipe", "recipe", ""), ("seeds", "seeds", "d"),
    ("sigma_min", "sigma min", ".2f"), ("sigma_max", "sigma max", ".2f"),
    ("epsilon_ratio_min", "pld/target min", ".3f"), ("epsilon_ratio_max", "pld/target max", ".3f"),
    ("epsilon_pld_max", "eps pld max", ".3f"), ("epsilon_rdp_min", "eps rdp min", ".3f"),
    ("epsilon_rdp_max", "eps rdp max", ".3f"),
    ("accuracy_mean", "acc mean", ".3f"), ("accuracy_min", "acc min", ".3f"), ("accuracy_max", "acc max", ".3f"),
    ("mean_hospital_accuracy", "hosp mean", ".3f"), ("mean_hospital_accuracy_min", "hosp min", ".3f"),
    ("mean_hospital_accuracy_max", "hosp max", ".3f"),
]


# --------------------------------------------------------------------------- main


@dataclass
class Recorder:
    runs: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, path: str, setting: str, target: float | None, seed: int, config, result: dict[str, Any],
                 planning: str, recipe: str) -> None:
        row = {"path": path, "setting": setting, "target": NONPRIVATE if target is None else target, "seed": seed,
               "planning": planning if config.dp or target is not None else "-", "recipe": recipe,
               **{k: getattr(config, k) for k in ("model", "batch_size", "local_epochs", "learning_rate",
                                                  "momentum", "max_grad_norm", "delta")},
               "rounds": config.num_rounds, **result}
        self.runs.append(row)
        eps = (f"eps pld {row['epsilon_pld_min']:.3f}-{row['epsilon_pld_max']:.3f}"
               if "epsilon_pld_max" in row else "non-private")
        hosp = f", hosp mean {row['mean_hospital_accuracy']:.3f}" if "mean_hospital_accuracy" in row else ""
        print(f"  {path:>9} {setting:>16} target {str(row['target']):>11} {row['planning']:>9} seed {seed}: "
              f"acc {row['accuracy']:.3f}{hosp}, {eps}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, help="seeds per cell (default 5, quick 2)")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), help="data splits (default: all; quick: digits-iid)")
    p.add_argument("--targets", nargs="+", help="target epsilons, 'none' = non-private (default 1 3 8 none)")
    p.add_argument("--rounds", type=int, help="override every recipe's rounds (quick: 5)")
    p.add_argument("--planning", nargs="+", choices=["per-owner", "one-sigma"], default=["per-owner"],
                   help="per-owner: each owner plans its own sigma (default); one-sigma: the largest for all")
    p.add_argument("--recipe", help="a named experiment for every DP cell instead of the tuned ones "
                                    "(digits-dirichlet-batch72: the old quickstart recipe, batch 72)")
    p.add_argument("--flower-seeds", type=int, default=None,
                   help="Flower runs per tuned recipe (each setting's tuned targets; default 1, quick 0)")
    p.add_argument("--run-root", type=Path, default=None, help="where Flower runs go (default: a temp folder)")
    p.add_argument("--paths", nargs="+", choices=["inprocess", "flower"], default=["inprocess", "flower"],
                   help="which paths to run (default both; the Flower runs need --flower-seeds > 0)")
    p.add_argument("--no-pooled", action="store_true", help="skip the pooled (one owner) reference rows")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    seeds = args.seeds or (2 if args.quick else 5)
    settings = args.settings or (["digits-iid"] if args.quick else list(SETTINGS))
    targets_text = args.targets or (["3", "none"] if args.quick else ["1", "3", "8", "none"])
    targets = [None if t == "none" else float(t) for t in targets_text]
    rounds = args.rounds or (5 if args.quick else None)
    flower_seeds = args.flower_seeds if args.flower_seeds is not None else (0 if args.quick else 1)
    run_root = args.run_root or Path(tempfile.mkdtemp(prefix="privfl-bench-pu-"))
    recipe: dict[str, Any] | str | None = None
    if args.recipe == "digits-dirichlet-batch72":
        recipe = BATCH72
    elif args.recipe:
        recipe = args.recipe
    record = Recorder()

    def recipe_label(setting: Setting, target: float | None) -> str:
        if target is None:
            return "nonprivate"
        return args.recipe or recipe_name(setting, target)

    # Pooled: one owner holding all the training data (the centralised reference), non-private and, for
    # each DP target, with the same recipe and target (central DP: one curator adds one noise draw per step).
    pooled_done = set()
    for name in (settings if "inprocess" in args.paths and not args.no_pooled else []):
        s = SETTINGS[name]
        if s.base["dataset"] in pooled_done:  # one pooled reference per data set (the split does not matter)
            continue
        pooled_done.add(s.base["dataset"])
        label = s.base["dataset"] + "/pooled"
        for target in targets:
            for seed in range(seeds):
                config = make_config(s, target, seed, rounds=rounds, recipe=recipe, pooled=True)
                record("inprocess", label, target, seed, config, run_inprocess(config),
                       "per-owner" if target is not None else "-", recipe_label(s, target))

    for name in (settings if "inprocess" in args.paths else []):
        for target in targets:
            for planning in (args.planning if target is not None else ["-"]):
                for seed in range(seeds):
                    config = make_config(SETTINGS[name], target, seed, rounds=rounds, recipe=recipe,
                                         planning=planning if target is not None else "per-owner")
                    record("inprocess", name, target, seed, config, run_inprocess(config, target), planning,
                           recipe_label(SETTINGS[name], target))

    # One Flower run per tuned recipe (seed 0): the real ClientApps, planning their own noise.
    for name in (settings if flower_seeds and "flower" in args.paths else []):
        for target, experiment in SETTINGS[name].recipes.items():
            if target not in targets:
                continue
            for seed in range(flower_seeds):
                config = make_config(SETTINGS[name], target, seed, rounds=rounds)
                run_dir = run_root / f"{experiment}-seed{seed}"
                record("flower", name, target, seed, config, run_flower(config, run_dir), "per-owner", experiment)

    if not args.run_root:
        import shutil

        shutil.rmtree(run_root, ignore_errors=True)
    rows = summarise(record.runs)
    print()
    print_table(rows, COLUMNS, title="test accuracy vs each owner's final epsilon (per-owner planning with PLD)")
    write_results(args.out, NAME, quick=args.quick,
                  settings={"seeds": seeds, "settings": {n: {"base": SETTINGS[n].base,
                                                             "recipes": {str(t): e for t, e in
                                                                         SETTINGS[n].recipes.items()},
                                                             "fallback": SETTINGS[n].fallback,
                                                             "nonprivate": SETTINGS[n].nonprivate}
                                                         for n in settings},
                            "targets": targets_text, "rounds_override": rounds, "flower_seeds": flower_seeds,
                            "planning": args.planning, "recipe": args.recipe,
                            "accountant": PLANNING_ACCOUNTANT, "torch_threads": 1},
                  results=rows, runs=record.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
