"""The ``privfl`` command: one subcommand per module in this package.

Each subcommand module exposes ``register(subparsers)``; heavy imports (torch,
Opacus, Flower) happen inside the handlers, so ``privfl --help`` stays quick.
Errors a user can fix (bad config, missing file) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from privfl import __version__


class UsageError(Exception):
    """A mistake in what the user asked for; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    from privfl.cli import accountant, app, audit, data, deploy, federation, keys, ledger, policy, report, simulate

    parser = argparse.ArgumentParser(
        prog="privfl",
        description="Privacy-preserving federated learning: Flower + Opacus, with every data "
        "owner's privacy spend accounted for.",
    )
    parser.add_argument("--version", action="version", version=f"privfl {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (simulate, accountant, keys, ledger, report, policy, app, data, deploy, audit, federation):
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from privfl.settings import SettingsError

    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (SettingsError, UsageError, FileNotFoundError, FileExistsError) as err:
        print(f"privfl {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # a run that failed (SimulationError): its log says more
        print(f"privfl {args.command}: failed: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
