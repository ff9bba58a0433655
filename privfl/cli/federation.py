"""``privfl federation start|stop|status``: the warm local federation that ``privfl simulate`` reuses."""

from __future__ import annotations

import argparse
import time

from privfl.cli import UsageError

DESCRIPTION = (
    "A warm federation keeps one Flower SuperLink (simulation mode) and one Ray head running on this "
    "machine, with a standby simulation process that has Flower, torch, Opacus and privfl imported and "
    "its ClientApp actors started, so that `privfl simulate` skips Flower's start-up (measured in "
    "docs/benchmarks.md, 'Fixed cost'). While one runs, `privfl simulate` uses it (unless --no-warm). "
    "Each run gets a fresh standby process and fresh actors, which exit after that run: no process keeps "
    "one run's owners, keys, ledgers or caches into another; each run has its own run directory and "
    "federation folder as before. The daemon runs only runs that a privfl of yours submitted (vouched for "
    "in its state folder, mode 0700: $PRIVFL_WARM_DIR, else $XDG_RUNTIME_DIR/privfl-warm, else "
    "~/.cache/privfl/warm). It stops itself, with every process it started, after --idle-timeout seconds "
    "without a run, when its SuperLink or Ray head dies, or when privfl's code changed (the next run then "
    "starts a new one). Runs on it run one at a time. Experiments with a model module of your own or a "
    "key passphrase variable run cold: the daemon has the environment of the command that started it.")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("federation", help="start, stop or inspect the warm local federation",
                                   description=DESCRIPTION)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    start = actions.add_parser("start", help="start the warm federation (no-op when one runs)",
                               description=DESCRIPTION)
    start.add_argument("--idle-timeout", type=float, default=None, metavar="SECONDS",
                       help="stop after this many seconds without a run (default 600)")
    actions.add_parser("stop", help="stop the warm federation and every process it started")
    actions.add_parser("status", help="print whether a warm federation runs, its ports and processes")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from privfl.simulations import warm

    folder = warm.state_dir()
    if args.action == "start":
        if args.idle_timeout is not None and args.idle_timeout <= 0:
            raise UsageError("--idle-timeout must be > 0")
        state = warm.ensure(args.idle_timeout, folder)
        print(describe(state, folder))
        return 0
    if args.action == "stop":
        print("stopped the warm federation" if warm.stop(folder) else "no warm federation was running")
        return 0
    state = warm.live_state(folder)
    if state is None:
        print(f"no warm federation is running (state folder {folder})")
        return 1
    outdated = "" if state.fingerprint == warm.fingerprint() else " (started by other privfl code: the next run replaces it)"
    print(describe(state, folder) + outdated)
    return 0


def describe(state: object, folder: object) -> str:
    from privfl.simulations import warm

    assert isinstance(state, warm.FederationState)
    return (f"warm federation: SuperLink {state.address}, Ray {state.ray_address}, daemon pid {state.daemon_pid}, "
            f"{len(warm.pids(folder))} processes, up {time.time() - state.started_at:.0f}s, idle timeout "
            f"{state.idle_timeout:.0f}s, state in {folder}")
