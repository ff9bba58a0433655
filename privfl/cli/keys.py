"""``privfl keys``: an owner's Ed25519 signing keys for its privacy ledger."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "keys", help="generate and inspect the Ed25519 keys that sign an owner's ledger",
        description="An owner signs every ledger entry with its Ed25519 key. Keep the private key "
        "(<owner>.key, mode 0600) at the institution; give the public key (<owner>.pub) to the server "
        "and to auditors.",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    generate = sub.add_parser("generate", help="create <owner>.key and <owner>.pub in a folder")
    generate.add_argument("--out", type=Path, required=True, help="folder for the key files (created if missing)")
    generate.add_argument("--owner", required=True, help="the data owner's id (letters, digits, '.', '_', '-')")
    generate.add_argument("--passphrase-env", metavar="VAR",
                          help="encrypt the private key with the passphrase in this environment variable")
    generate.set_defaults(handler=run_generate)
    show = sub.add_parser("fingerprint", help="print a key's fingerprint (sha256 of the raw public key)")
    show.add_argument("key", type=Path, help="a .pub file, or a .key file")
    show.add_argument("--passphrase-env", metavar="VAR", help="passphrase of an encrypted .key file")
    show.set_defaults(handler=run_fingerprint)


def passphrase_from_env(variable: str | None) -> str | None:
    from privfl.cli import UsageError

    if variable is None:
        return None
    value = os.environ.get(variable)
    if not value:
        raise UsageError(f"--passphrase-env {variable}: the environment variable is not set or empty")
    return value


def run_generate(args: argparse.Namespace) -> int:
    from privfl.cli import UsageError
    from privfl.privacy.keys import KeyFileError, generate_owner_keys

    passphrase = passphrase_from_env(args.passphrase_env)
    try:
        files = generate_owner_keys(args.out, args.owner, passphrase)
    except (KeyFileError, ValueError) as err:
        raise UsageError(str(err)) from None
    print(f"private key: {files.private_key} (mode 0600{', encrypted' if passphrase else ''})")
    print(f"public key:  {files.public_key}")
    print(f"fingerprint: {files.fingerprint}")
    return 0


def run_fingerprint(args: argparse.Namespace) -> int:
    from privfl.cli import UsageError
    from privfl.privacy.keys import KeyFileError, fingerprint, load_private_key, load_public_key

    try:
        text = args.key.read_bytes() if args.key.is_file() else b""
        if b"PRIVATE KEY" in text:
            key = load_private_key(args.key, passphrase_from_env(args.passphrase_env))
        else:
            key = load_public_key(args.key)
    except KeyFileError as err:
        raise UsageError(str(err)) from None
    print(fingerprint(key))
    return 0
