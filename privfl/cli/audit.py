"""``privfl audit``: an experiment's claimed epsilon next to an empirical lower bound (docs/audit.md).

The experiment runs through the same simulation as ``privfl simulate``, on its simulated
owners' data plus canary records, each planted with probability 1/2 by a secret coin
(:mod:`privfl.simulations.canaries`).  After training, each canary's loss under the final
model says which were trained on; the one-run bound of Steinke, Nasr and Jagielski
(:mod:`privfl.privacy.empirical.one_run`) turns the correct guesses into an epsilon the
run cannot have had less of, at the stated confidence.  The claim is what the owners'
ledgers say this experiment cost (the figure ``privfl simulate`` prints as "this exp.").

For an experiment with owner-level DP (DP-FedAvg, ``owner-dp = true``) it adds canary
owners whose update is a fixed random direction (:mod:`privfl.simulations.canary_owners`),
and the cosines of those directions with the final model delta give the one-shot epsilon
*estimate* of Andrew et al. (:mod:`privfl.privacy.empirical.one_shot`): an estimate, not a
bound, and printed as one.

A simulation feature only: canaries never enter a real institution's data.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from privfl.config import ConfigError

RESULT_FILE = "result.json"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="run an experiment with canaries and print the claimed epsilon beside an empirical lower bound "
        "(record level) or estimate (owner level)",
        description="Run a named experiment as `privfl simulate` does, with generated canary records planted in "
        "the simulated owners' training data (each with probability 1/2, by a secret coin), then guess from the "
        "final model which canaries were trained on and print, per privacy unit, the epsilon the ledgers claim "
        "and the lower bound the guesses prove (Steinke, Nasr, Jagielski 2023). A bound above the claim proves "
        "the claim false; a bound below it is no guarantee (the guesses may be weak). For owner-level DP "
        "(owner-dp = true) it adds canary owners whose update is a fixed random direction and prints the one-shot "
        "epsilon estimate of Andrew et al. 2024 (an estimate, not a bound). Simulation only: canaries never enter "
        "a real institution's data. See docs/audit.md.",
    )
    parser.add_argument("experiment", help="a named experiment or a path to a TOML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key (repeatable), as for privfl simulate")
    parser.add_argument("--canaries", type=int, default=1000, metavar="M",
                        help="canary records, spread over the owners (default 1000; about half are trained on)")
    parser.add_argument("--canary-owners", type=int, default=20, metavar="K",
                        help="canary owners added for the owner-level estimate (owner-dp experiments; default 20)")
    parser.add_argument("--confidence", type=float, default=0.95, metavar="P",
                        help="confidence of the lower bound (default 0.95)")
    parser.add_argument("--run-dir", type=Path, help="where to write the run (default ./runs/<experiment>-audit-<time>)")
    parser.add_argument("--verbose", action="store_true", help="stream Flower's own log")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from privfl.cli.simulate import _preflight, _quick_exit, load_config
    from privfl.server import run_dir as artefacts
    from privfl.simulations.canaries import AUDIT_SUFFIX, prepare_audit

    if not 0 < args.confidence < 1:
        raise ConfigError("--confidence must be between 0 and 1, e.g. 0.95")
    config = load_config(args.experiment, args.overrides)
    if args.run_dir:
        run_dir = args.run_dir.resolve()
    else:
        run_dir = artefacts.default_run_dir(config.replace(experiment=config.experiment + AUDIT_SUFFIX))
    if (run_dir / artefacts.HISTORY).exists():
        raise ConfigError(f"{run_dir} already holds a run; choose another --run-dir")
    config = config.replace(run_dir=str(run_dir))
    audited, canaries = prepare_audit(config, args.canaries if config.dp else 0)
    canary_owners = None
    if config.owner_dp:
        from privfl.simulations.canary_owners import place_canary_directions, prepare_owner_audit

        audited, canary_owners = prepare_owner_audit(config, audited, args.canary_owners)
    audited = artefacts.settle(audited)
    if canary_owners is not None:
        place_canary_directions(artefacts.layout(audited).owners_dir, canary_owners)

    from privfl.simulations.launcher import run_simulations
    from privfl.simulations.summary import print_summary, run_problems

    result = run_simulations([audited], stream=args.verbose, check=_preflight)[0]
    _quick_exit()
    problems = print_summary([result])
    if run_problems(result):
        print("audit: not scored, the run did not complete cleanly")
        return 1
    lines, record = score(result, audited, canaries, args.confidence, canary_owners)
    (run_dir / "audit" / RESULT_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if result.reports:  # the run's own report again, now with the empirical result beside the claim
        from privfl.privacy.report import write_run_report

        write_run_report(run_dir, audit=result.audit, passphrase_env=audited.coordinator_key_passphrase_env)
    print()
    for line in lines:
        print(line)
    print(f"audit: canaries' coins and scores in {run_dir / 'audit'}")
    return 1 if problems else 0


def score(result, config, canaries, confidence: float, canary_owners=None) -> tuple[list[str], dict]:
    """The printed lines and the audit record (``<run-dir>/audit/result.json``) of a finished audited run."""
    import numpy as np

    from privfl.models import build_model
    from privfl.privacy.empirical import one_run_audit
    from privfl.server.checkpoint import read_checkpoint
    from privfl.simulations.canaries import canary_losses

    _, state = read_checkpoint(Path(config.run_dir))
    model = build_model(config.model, canaries.features.shape[1], config.num_classes)
    model.load_state_dict(state)
    losses = canary_losses(model, canaries) if len(canaries) else np.zeros(0)
    spend = result.audit.epsilon if result.audit is not None else {}
    lines, units = [], {}
    if config.dp and len(canaries):
        claimed = max((s["experiment"] for s in spend.values() if "experiment" in s), default=None)
        bound = one_run_audit(-losses, canaries.included, delta=config.delta, confidence=confidence)
        claim_text = f"{claimed:.2f}" if claimed is not None else "unknown"
        lines.append(f"record-level: claimed epsilon {claim_text}, empirical lower bound {bound.epsilon:.2f} "
                     f"({confidence * 100:g}% confidence)")
        if claimed is not None and bound.epsilon > claimed:
            lines.append("record-level: THE LOWER BOUND EXCEEDS THE CLAIM: the mechanism does not give what the "
                         "ledgers say")
        units["record"] = {"claimed_epsilon": claimed, "lower_bound": bound.epsilon, "delta": bound.delta,
                           "confidence": confidence, "method": bound.method, **bound.details}
    if config.owner_dp:
        claimed = max((s["owner_experiment"] for s in spend.values() if "owner_experiment" in s), default=None)
        claim_text = f"{claimed:.2f}" if claimed is not None else "unknown"
        if canary_owners is None:
            lines.append(f"owner-level: claimed epsilon {claim_text}, not audited (no canary owners)")
            units["owner"] = {"claimed_epsilon": claimed, "lower_bound": None}
        else:
            line, units["owner"] = score_owner_level(state, config, canaries.features.shape[1], canary_owners,
                                                     claimed)
            lines.extend(line)
    record = {"audit": True, "experiment_id": config.experiment_id, "experiment": config.experiment,
              "canaries": len(canaries), "included": int(canaries.included.sum()), "score": "minus canary loss",
              "units": units, "canary_losses": losses.tolist(), "canary_included": canaries.included.tolist()}
    return lines, record


def score_owner_level(state, config, num_features: int, canary_owners, claimed: float | None) -> tuple[list[str],
                                                                                                       dict]:
    """The owner-level lines and result unit: the one-shot estimate from the final model delta (an estimate)."""
    from privfl.models import build_model
    from privfl.simulations.canary_owners import flat_delta, owner_level_estimate

    initial = build_model(config.model, num_features, config.num_classes, seed=config.seed).state_dict()  # the
    # ServerApp's starting model (privfl/task.py check_model with the config's seed)
    final = {k: v.numpy() for k, v in state.items()}
    estimate = owner_level_estimate(canary_owners, flat_delta(final, {k: v.numpy() for k, v in initial.items()}),
                                    delta=config.delta)
    claim_text = f"{claimed:.2f}" if claimed is not None else "unknown"
    lines = [f"owner-level: claimed epsilon {claim_text}, empirical estimate {estimate.epsilon:.2f} (one-shot "
             f"Gaussian fit over {len(canary_owners)} canary owners: an estimate, not a bound)"]
    if claimed is not None and estimate.epsilon > claimed:
        lines.append("owner-level: the estimate exceeds the claim: a sign (not a proof) that the mechanism does not "
                     "give what the ledgers say")
    unit = {"claimed_epsilon": claimed, "estimate": estimate.epsilon, "lower_bound": None, "kind": estimate.kind,
            "confidence": None, "delta": estimate.delta, "method": estimate.method,
            "canary_owners": list(canary_owners.owner_ids), **estimate.details}
    return lines, unit
