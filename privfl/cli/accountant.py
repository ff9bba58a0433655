"""``privfl accountant``: what-if checks on the privacy cost of DP-SGD."""

from __future__ import annotations

import argparse

from privfl.privacy.accountants import ACCOUNTANT_NAMES


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sample-rate", type=float, required=True, help="Poisson sampling rate q in (0, 1]")
    parser.add_argument("--steps", type=int, required=True, help="number of DP-SGD steps, all rounds together")
    parser.add_argument("--delta", type=float, required=True, help="target delta in (0, 1)")
    parser.add_argument("--accountant", choices=ACCOUNTANT_NAMES, default="rdp", help="default: rdp")


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
    plan = sub.add_parser("plan", help="the smallest noise multiplier that keeps N steps within epsilon")
    plan.add_argument("--epsilon", type=float, required=True, help="target epsilon (> 0)")
    _common(plan)
    plan.set_defaults(handler=run_plan)


def _checked_event(noise: float, args: argparse.Namespace):
    from privfl.cli import UsageError
    from privfl.privacy.events import PoissonSubsampledGaussian

    if not 0 < args.delta < 1:
        raise UsageError(f"--delta must be in (0, 1), got {args.delta}")
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

    if args.epsilon <= 0:
        raise UsageError(f"--epsilon must be > 0, got {args.epsilon}")
    _checked_event(1.0, args)  # validates rate, steps and delta
    noise = get_accountant(args.accountant).noise_multiplier(
        target_epsilon=args.epsilon, delta=args.delta, sample_rate=args.sample_rate, steps=args.steps
    )
    print(f"{noise:.6g}")
    return 0
