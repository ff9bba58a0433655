"""``privfl accountant``: what-if checks on the privacy cost of DP-SGD."""

from __future__ import annotations

import argparse

from privfl.privacy.accountants import ACCOUNTANT_NAMES


def _common(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--sample-rate", type=float, required=required, help="Poisson sampling rate q in (0, 1]")
    parser.add_argument("--steps", type=int, required=required, help="number of DP-SGD steps, all rounds together")
    parser.add_argument("--delta", type=float, required=required, help="target delta in (0, 1)")
    parser.add_argument("--accountant", choices=ACCOUNTANT_NAMES, default="pld", help="default: pld")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "accountant", help="compute epsilon for DP-SGD, or the noise a budget needs",
        description="What-if privacy accounting for Poisson-subsampled Gaussian DP-SGD "
        "(the mechanism privfl's clients run). Steps = rounds x local epochs x ceil(n / batch); "
        "sample rate = 1 / ceil(n / batch).",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    epsilon = sub.add_parser("epsilon", help="epsilon of N steps at noise multiplier S and sample rate Q")
    epsilon.add_argument("--noise-multiplier", type=float, required=True, help="noise std / clipping norm (> 0)")
    _common(epsilon)
    epsilon.set_defaults(handler=run_epsilon)
    plan = sub.add_parser(
        "plan", help="the smallest noise multiplier that keeps N steps within epsilon, or a whole experiment per owner",
        description="With --sample-rate/--steps/--delta: the least noise multiplier for those steps. With "
        "--experiment: each simulated owner's plan for the whole experiment (its records, sampling rate, steps and "
        "the noise it would plan for target-epsilon, or the experiment's noise-multiplier), and the epsilon it ends "
        "at under PLD and RDP.",
        epilog="examples:\n  privfl accountant plan --epsilon 3 --sample-rate 0.5 --steps 40 --delta 1e-5\n"
        "  privfl accountant plan --experiment digits-dirichlet --set target-epsilon=3",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    plan.add_argument("--epsilon", type=float, help="target epsilon (> 0)")
    plan.add_argument("--experiment", metavar="NAME_OR_TOML", help="preview a named experiment or config file per owner")
    plan.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="with --experiment: override a config key (repeatable)")
    _common(plan, required=False)
    plan.set_defaults(handler=run_plan)


def _checked_event(noise: float, args: argparse.Namespace):
    from privfl.cli import UsageError
    from privfl.privacy.budget import check_delta
    from privfl.privacy.events import PoissonSubsampledGaussian

    try:
        check_delta(args.delta)
    except ValueError:
        raise UsageError(f"--delta must be in (0, 1), got {args.delta}") from None
    try:
        return PoissonSubsampledGaussian(noise, args.sample_rate, args.steps)
    except ValueError as err:
        raise UsageError(str(err)) from None


def run_epsilon(args: argparse.Namespace) -> int:
    from privfl.cli import UsageError
    from privfl.privacy.accountants import get_accountant

    if args.noise_multiplier <= 0:
        raise UsageError(f"--noise-multiplier must be > 0, got {args.noise_multiplier}")
    event = _checked_event(args.noise_multiplier, args)
    print(f"{get_accountant(args.accountant).epsilon([event], args.delta):.6g}")
    return 0


def run_plan(args: argparse.Namespace) -> int:
    from privfl.cli import UsageError
    from privfl.privacy.accountants import get_accountant

    if args.experiment:
        return preview_experiment(args)
    if args.epsilon is None or args.sample_rate is None or args.steps is None or args.delta is None:
        raise UsageError("give --epsilon, --sample-rate, --steps and --delta (or --experiment)")
    if args.epsilon <= 0:
        raise UsageError(f"--epsilon must be > 0, got {args.epsilon}")
    _checked_event(1.0, args)  # validates rate, steps and delta
    noise = get_accountant(args.accountant).noise_multiplier(
        target_epsilon=args.epsilon, delta=args.delta, sample_rate=args.sample_rate, steps=args.steps
    )
    print(f"{noise:.6g}")
    return 0


def preview_experiment(args: argparse.Namespace) -> int:
    """Each simulated owner's noise and epsilon over the whole experiment, before running it."""
    from privfl.cli.simulate import load_config
    from privfl.privacy.accountants import get_accountant
    from privfl.privacy.budget import fits_budget
    from privfl.privacy.events import PoissonSubsampledGaussian
    from privfl.privacy.planning import plan_noise
    from privfl.protocol import TrainingPlan
    from privfl.simulations.federation import simulated_federation

    config = load_config(args.experiment, args.overrides)
    federation = simulated_federation(config)
    plan = TrainingPlan.from_config(config)
    print(f"{config.experiment}: {config.num_rounds} rounds x {config.local_epochs} local epoch(s), batch "
          f"{config.batch_size}, delta {config.delta:g}; "
          + (f"each owner plans its noise for target epsilon {config.target_epsilon:g} ({config.accountant})"
             if config.target_epsilon else f"noise multiplier {config.noise_multiplier:g} for every owner"))
    print(f"{'owner':<14} {'records':>7} {'q':>8} {'steps':>6} {'sigma':>8} {'eps pld':>8} {'eps rdp':>8} "
          f"{'budget':>7}")
    for owner_id, train in zip(federation.owner_ids, federation.train):
        if config.target_epsilon:
            planned = plan_noise(accountant=config.accountant, target_epsilon=config.target_epsilon,
                                 delta=config.delta, records=len(train), batch_size=config.batch_size,
                                 local_epochs=config.local_epochs, rounds=config.num_rounds)
            sigma = planned.noise_multiplier
        else:
            sigma = config.noise_multiplier
        event = plan.privacy_event(len(train))
        whole = PoissonSubsampledGaussian(sigma, event.sample_rate, event.steps * config.num_rounds)
        pld, rdp = (get_accountant(a).epsilon([whole], config.delta) for a in ("pld", "rdp"))
        flag = "" if fits_budget(max(pld if config.accountant == "pld" else rdp, 0), config.epsilon_budget) \
            else "  over budget"
        print(f"{owner_id:<14} {len(train):>7} {event.sample_rate:>8.4g} {whole.steps:>6} {sigma:>8.4g} {pld:>8.3f} "
              f"{rdp:>8.3f} {config.epsilon_budget:>7g}{flag}")
    return 0
