"""``privfl audit``: an experiment's claimed epsilon next to an empirical lower bound (docs/audit.md).

The experiment runs through the same simulation as ``privfl simulate``, on its simulated
owners' data plus canary records, each planted with probability 1/2 by a secret coin
(:mod:`privfl.simulations.canaries`).  After training, each canary's loss under the final
model says which were trained on; the one-run bound of Steinke, Nasr and Jagielski
(:mod:`privfl.privacy.empirical.one_run`) turns the correct guesses into an epsilon the
run cannot have had less of, at the stated confidence.  The claim is what the owners'
ledgers say this experiment cost (the figure ``privfl simulate`` prints as "this exp.").

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
        help="run an experiment with canary records and print the claimed epsilon beside an empirical lower bound",
        description="Run a named experiment as `privfl simulate` does, with generated canary records planted in "
        "the simulated owners' training data (each with probability 1/2, by a secret coin), then guess from the "
        "final model which canaries were trained on and print, per privacy unit, the epsilon the ledgers claim "
        "and the lower bound the guesses prove (Steinke, Nasr, Jagielski 2023). A bound above the claim proves "
        "the claim false; a bound below it is no guarantee (the guesses may be weak). Simulation only: canaries "
        "never enter a real institution's data. See docs/audit.md.",
    )
    parser.add_argument("experiment", help="a named experiment or a path to a TOML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key (repeatable), as for privfl simulate")
    parser.add_argument("--canaries", type=int, default=1000, metavar="M",
                        help="canary records, spread over the owners (default 1000; about half are trained on)")
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
    audited, canaries = prepare_audit(config.replace(run_dir=str(run_dir)), args.canaries)
    audited = artefacts.settle(audited)

    from privfl.simulations.launcher import run_simulations
    from privfl.simulations.summary import print_summary, run_problems

    result = run_simulations([audited], stream=args.verbose, check=_preflight)[0]
    _quick_exit()
    problems = print_summary([result])
    if run_problems(result):
        print("audit: not scored, the run did not complete cleanly")
        return 1
    lines, record = score(result, audited, canaries, args.confidence)
    (run_dir / "audit" / RESULT_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print()
    for line in lines:
        print(line)
    print(f"audit: canaries' coins and scores in {run_dir / 'audit'}")
    return 1 if problems else 0


def score(result, config, canaries, confidence: float) -> tuple[list[str], dict]:
    """The printed lines and the audit record (``<run-dir>/audit/result.json``) of a finished audited run."""
    from privfl.models import build_model
    from privfl.privacy.empirical import one_run_audit
    from privfl.server.checkpoint import read_checkpoint
    from privfl.simulations.canaries import canary_losses

    _, state = read_checkpoint(Path(config.run_dir))
    model = build_model(config.model, canaries.features.shape[1], config.num_classes)
    model.load_state_dict(state)
    losses = canary_losses(model, canaries)
    spend = result.audit.epsilon if result.audit is not None else {}
    lines, units = [], {}
    if config.dp:
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
        lines.append(f"owner-level: claimed epsilon {claim_text}, not audited (canary owners are not implemented)")
        units["owner"] = {"claimed_epsilon": claimed, "lower_bound": None}
    record = {"audit": True, "experiment_id": config.experiment_id, "experiment": config.experiment,
              "canaries": len(canaries), "included": int(canaries.included.sum()), "score": "minus canary loss",
              "units": units, "canary_losses": losses.tolist(), "canary_included": canaries.included.tolist()}
    return lines, record
