"""``privfl policy``: an institution's owner policy, checked before its SuperNode starts."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from privfl.privacy.policy import describe_policy_keys

    keys = "\n".join(textwrap.fill(f"{key} (default: {default!r}): {help}", width=100, initial_indent="  ",
                                   subsequent_indent="      ") for key, default, help in describe_policy_keys())
    parser = subparsers.add_parser(
        "policy", help="check an owner policy (the institution's own privacy rules)",
        description="An owner's policy decides what its node accepts, whatever the coordinator asks: "
        "budget, delta, accountant, DP required, least noise, per-round cap, purposes, privacy units, "
        "models, evaluation, files and device. The SuperNode reads it with --node-config "
        "'policy=\"/path/policy.toml\"'.",
        epilog=f"policy keys:\n{keys}", formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="validate a policy file and the files it names; exit 1 if unusable")
    check.add_argument("policy", type=Path, help="the policy TOML file")
    check.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace) -> int:
    from privfl.privacy.keys import KeyFileError, fingerprint, load_private_key
    from privfl.privacy.policy import PolicyError, load_policy_file

    try:
        policy = load_policy_file(args.policy).require_deployed()
    except PolicyError as err:
        print(f"NOT USABLE: {err}")
        return 1
    problems = []
    for key in ("data", "evaluation_data"):
        path = getattr(policy, key)
        if path and not Path(path).is_file():
            problems.append(f"{key.replace('_', '-')} {path} does not exist")
    try:
        signer = fingerprint(load_private_key(policy.signing_key, policy.passphrase()))
    except (KeyFileError, FileNotFoundError, PolicyError) as err:
        problems.append(f"signing-key: {err}")
        signer = "?"
    print(f"owner {policy.owner_id}: budget epsilon {policy.epsilon_budget:g} at delta {policy.delta:g} "
          f"({policy.accountant}); DP {'required' if policy.dp_required else 'not required'}; "
          f"purposes {', '.join(policy.allowed_purposes)}; units {', '.join(policy.privacy_units)}; "
          f"models {', '.join(policy.allowed_models)}; evaluation {'answered' if policy.answer_evaluation else 'no'}")
    print(f"ledger {policy.ledger}; signing key {policy.signing_key} (fingerprint {signer[:16]}...)")
    for problem in problems:
        print(f"problem: {problem}")
    print("USABLE" if not problems else "NOT USABLE")
    return 1 if problems else 0
