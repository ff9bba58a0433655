"""``privfl app``: the Flower app that ``flwr run`` ships (components only, no code)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "app", help="export privfl's Flower app for `flwr run`",
        description="privfl's Flower app bundle holds only a pyproject.toml: its ServerApp and ClientApp are "
        "the privfl installed at each node. In a deployment each institution's SuperNode runs only this bundle as "
        "its own privfl builds it (privfl deploy endorse-app), so a coordinator cannot ship code to it.",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    export = sub.add_parser("export", help="write the app's pyproject.toml into a folder",
                            epilog="example: privfl app export app/ && flwr run app/ my-superlink "
                            "--run-config experiment.toml")
    export.add_argument("folder", type=Path, help="folder to write (created if missing)")
    export.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    from privfl.app_bundle import export_app

    folder = export_app(args.folder)
    print(f"wrote {folder / 'pyproject.toml'}: flwr run {folder} <superlink> --run-config <experiment.toml>")
    return 0
