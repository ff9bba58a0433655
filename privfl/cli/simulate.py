"""``privfl simulate``: a whole federation on this machine, with its privacy report."""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

from privfl.config import ConfigError, ExperimentConfig, describe_keys, parse_override


def register(subparsers: argparse._SubParsersAction) -> None:
    keys = "\n".join(f"  {key:<18} {help} (default: {default!r})" for key, default, help in describe_keys())
    parser = subparsers.add_parser(
        "simulate",
        help="run a named experiment as a Flower simulation and print its privacy report",
        description="Run a whole federation through Flower's simulation engine: every owner "
        "trains with DP-SGD (Opacus) within its epsilon budget and its policy; the server aggregates with "
        "FedAvg and evaluates every round. Prints the run directory, test accuracy and each "
        "owner's epsilon, and writes the privacy budget report. Exits 1 when a ledger is not intact, "
        "when no update was aggregated, or when client updates failed (see --max-failed-updates). "
        "Limitation (Flower 1.42): the simulation's SuperLink listens on a loopback port whose Control API "
        "has no authentication, so another local user could submit a run with code that would run as you; "
        "privfl watches for runs it did not submit and, on one, stops the simulation and exits 1 naming it. "
        "On a shared host, run simulations in a container or network namespace of their own.",
        epilog=f"named experiments: {', '.join(named_configs())}\n\nconfig keys (--set KEY=VALUE):\n{keys}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("experiment", nargs="?",
                        help="a named experiment (see below) or a path to a TOML config file")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR",
                        help="resume the experiment in RUN_DIR from its last completed round, in a new Flower run "
                        "(its settings and experiment id; --set num-rounds=N may extend it)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set num-rounds=5 (repeatable)")
    parser.add_argument("--run-dir", type=Path, help="where to write the run (default ./runs/<experiment>-<time>)")
    parser.add_argument("--baseline", metavar="EXPERIMENT",
                        help="afterwards run this experiment (e.g. quickstart-nonprivate) on the same SuperLink "
                        "and Ray cluster, and compare accuracy")
    parser.add_argument("--max-failed-updates", type=int, default=0, metavar="N",
                        help="tolerate up to N failed or rejected client updates before exiting non-zero (default 0)")
    parser.add_argument("--verbose", action="store_true", help="stream Flower's own log")
    cluster = parser.add_argument_group(
        "where the ClientApps run", "default: a Ray head of privfl's own on this machine, stopped after the run; "
        "see docs/scaling.md for a federation that does not fit one machine")
    cluster.add_argument("--ray-address", metavar="HOST:PORT",
                         help="run the simulated ClientApps on this existing Ray cluster (`ray start --head` on one "
                         "machine, `ray start --address HOST:PORT` on the others; every node needs this privfl and "
                         "the run and federation folders at the same paths); the cluster is left running")
    cluster.add_argument("--client-cpus", type=float, default=1.0, metavar="N",
                         help="CPUs Ray reserves for each simulated client (default 1: one client per core)")
    cluster.add_argument("--client-gpus", type=float, default=None, metavar="F",
                         help="GPUs Ray reserves for each simulated client, e.g. 0.25 (default: 0.25 where this "
                         "machine has CUDA, else 0)")
    warmth = parser.add_mutually_exclusive_group()
    warmth.add_argument("--keep-warm", type=float, nargs="?", const=300.0, default=None, metavar="SECONDS",
                        help="run on the warm local federation (see `privfl federation --help`), starting it if "
                        "none runs; it stays up for SECONDS without a run (default 300), so the next "
                        "`privfl simulate` skips Flower's start-up. Without this flag a warm federation that "
                        "already runs is used, and none is started")
    warmth.add_argument("--no-warm", action="store_true",
                        help="run on a SuperLink and Ray of this run's own, stopped after it, even when a warm "
                        "federation runs")
    parser.add_argument("--no-flower-log", dest="flower_log", action="store_false",
                        help="do not keep Flower's own log of the run (simulation.log; fetched with `flwr log`, "
                        "about 1 s, overlapped with the audit)")
    parser.set_defaults(handler=run)


def named_configs() -> list[str]:
    folder = resources.files("privfl.simulations") / "configs"
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def load_config(name_or_path: str, overrides: list[str]) -> ExperimentConfig:
    parsed = dict(parse_override(o) for o in overrides)
    path = Path(name_or_path)
    if path.suffix != ".toml":
        if name_or_path not in named_configs():
            raise ConfigError(
                f"no experiment named '{name_or_path}'; choose one of {', '.join(named_configs())} "
                "or give a path to a .toml file"
            )
        path = Path(str(resources.files("privfl.simulations") / "configs" / f"{name_or_path}.toml"))
    return ExperimentConfig.from_toml(path, parsed)


def run(args: argparse.Namespace) -> int:
    if args.resume is not None:
        return resume(args)
    if not args.experiment:
        raise ConfigError("name an experiment (or a .toml file), or give --resume RUN_DIR")
    config = load_config(args.experiment, args.overrides)
    if ":" in config.model:
        importable(Path(args.experiment).resolve().parent if args.experiment.endswith(".toml") else None)
    if args.run_dir:
        config = config.replace(run_dir=str(args.run_dir))
    if args.max_failed_updates < 0:
        raise ConfigError("--max-failed-updates must be >= 0")
    from privfl.server import run_dir as artefacts
    from privfl.simulations.launcher import run_simulations

    baseline = load_config(args.baseline, []) if args.baseline else None  # refuse bad input before running
    configs = [artefacts.settle(config)]
    if baseline is not None:
        private_dir = Path(configs[0].run_dir)
        configs.append(baseline.replace(
            run_dir=str(private_dir.with_name(f"{private_dir.name}-{baseline.experiment}"))))
    # The SuperLink starts while the experiments are checked (pre-flight): a bad config stops it.
    runs = run_simulations(configs, stream=args.verbose, check=_preflight, **cluster_options(args))
    _quick_exit()
    from privfl.simulations.summary import print_summary

    problems = print_summary(runs, max_failed_updates=args.max_failed_updates)
    return 1 if problems else 0


def _quick_exit() -> None:
    """Spare the interpreter's last garbage collection over torch, Opacus and matplotlib (~0.8 s here).

    At exit, every object still alive is moved out of the collector's reach (``gc.freeze``);
    modules are still torn down and atexit handlers still run, only the final scan of
    millions of long-lived objects is skipped.
    """
    import atexit
    import gc

    atexit.register(gc.freeze)


def _preflight(config: ExperimentConfig) -> None:
    from privfl.simulations.preflight import preflight

    preflight(config)


def cluster_options(args: argparse.Namespace) -> dict:
    """Where the ClientApps run and what each reserves (``--ray-address``, ``--client-cpus/gpus``)."""
    from privfl.simulations.launcher import ClientResources

    if args.client_cpus <= 0 or (args.client_gpus is not None and args.client_gpus < 0):
        raise ConfigError("--client-cpus must be > 0 and --client-gpus >= 0")
    if getattr(args, "keep_warm", None) is not None and args.keep_warm <= 0:
        raise ConfigError("--keep-warm must be > 0 seconds")
    return {"ray_address": args.ray_address, "save_flower_log": args.flower_log,
            "client_resources": ClientResources(num_cpus=args.client_cpus, num_gpus=args.client_gpus),
            "warm": warm_choice(args)}


def warm_choice(args: argparse.Namespace) -> float | bool | None:
    """``run_simulations(warm=...)``: SECONDS to start one (--keep-warm), False (--no-warm), None: one that runs."""
    if getattr(args, "no_warm", False):
        return False
    return args.keep_warm if getattr(args, "keep_warm", None) is not None else None


def resume(args: argparse.Namespace) -> int:
    import json

    from privfl.simulations.launcher import run_simulation
    from privfl.simulations.summary import print_summary

    if args.experiment or args.baseline:
        raise ConfigError("--resume takes the experiment from RUN_DIR: give no experiment name and no --baseline")
    from privfl.server.run_dir import CONFIG

    recorded = json.loads((args.resume / CONFIG).read_text(encoding="utf-8")) \
        if (args.resume / CONFIG).is_file() else {}
    overrides = dict(parse_override(o) for o in args.overrides)
    unknown = sorted(set(overrides) - {"num-rounds"})
    if unknown:
        raise ConfigError(f"a resumed experiment keeps its settings; only num-rounds may be set (not {unknown})")
    config = ExperimentConfig.from_mapping({**recorded, **overrides, "run-dir": str(args.resume.resolve()),
                                            "resume": True}, source=str(args.resume / CONFIG))
    problems = print_summary([run_simulation(config, stream=args.verbose, **cluster_options(args))],
                             max_failed_updates=args.max_failed_updates)
    _quick_exit()
    return 1 if problems else 0


def importable(config_folder: Path | None) -> None:
    """Make a user's own model module importable here and in every Flower process of the run.

    ``model = "my_model:make_model"`` names a module next to the experiment's config
    file or in the current folder: both go on ``sys.path`` and ``PYTHONPATH`` (which
    the SuperLink, the ServerApp, and the simulated ClientApps inherit).
    """
    import os
    import sys

    folders = [str(Path.cwd())] + ([str(config_folder)] if config_folder else [])
    for folder in reversed(folders):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    known = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join([*folders, *[p for p in known if p not in folders]])
