"""``privfl ledger``: read, verify, export and serve privacy ledgers (never alters one)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ledger", help="show, verify, export or serve a privacy ledger",
        description="A privacy ledger (SQLite) records every privacy-consuming release of a data owner as a "
        "signed, hash-chained DP event. These commands open ledgers read-only.",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    show = sub.add_parser("show", help="print the entries as a table (or JSON)")
    show.add_argument("path", type=Path, help="ledger file (.db)")
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")
    show.set_defaults(handler=run_show)

    check = sub.add_parser(
        "verify", help="check signatures, hash chain and epsilons; exit 0 intact, 1 not",
        description="Walks every chain: signatures, sequence numbers, previous-hash links, and each stated "
        "cumulative epsilon recomputed from the stored events. Exits 0 when intact, 1 naming the first bad entry.",
    )
    check.add_argument("path", type=Path, help="ledger file (.db)")
    check.add_argument("--public-key", action="append", default=[], metavar="[OWNER=]KEY",
                       help="the owner's public key file (.pub) to check against instead of the key the ledger "
                       "records; for a federation ledger give OWNER=KEY once per owner")
    check.add_argument("--against", type=Path, metavar="FEDERATION_DB",
                       help="also require every entry the federation ledger holds for this owner "
                       "(detects entries removed from the end)")
    check.add_argument("--epsilon", choices=("all", "last", "none"), default="all",
                       help="which stated epsilons to recompute (default: all; 'last' is faster for PRV/PLD)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(handler=run_verify)

    export = sub.add_parser("export", help="write all entries as JSON or CSV (with the signed bytes)")
    export.add_argument("path", type=Path, help="ledger file (.db)")
    export.add_argument("--format", choices=("json", "csv"), required=True)
    export.add_argument("--out", type=Path, help="output file (default: standard output)")
    export.set_defaults(handler=run_export)

    serve = sub.add_parser(
        "serve", help="serve the ledger read-only over gRPC (TLS) for auditors",
        description="Runs the PrivacyLedger gRPC service (GetBudget, ListEntries, Verify) over TLS. "
        "--insecure (plaintext) is accepted only on a loopback address.",
    )
    serve.add_argument("path", type=Path, help="ledger file (.db)")
    serve.add_argument("--address", required=True, help="HOST:PORT to listen on, e.g. 127.0.0.1:50061")
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate chain")
    serve.add_argument("--tls-key", type=Path, help="PEM private key of the certificate")
    serve.add_argument("--insecure", action="store_true", help="no TLS (loopback addresses only)")
    serve.add_argument("--public-key", action="append", default=[], metavar="[OWNER=]KEY",
                       help="pin the key(s) the Verify call checks against (as for 'verify')")
    serve.set_defaults(handler=run_serve)


def _ledger_error(err: Exception):
    from privfl.cli import UsageError

    return UsageError(str(err))


def _public_keys(values: list[str]):
    """--public-key KEY (one owner) or OWNER=KEY (repeatable) -> key or {owner: key}."""
    from privfl.cli import UsageError
    from privfl.privacy.keys import KeyFileError, load_public_key

    if not values:
        return None
    try:
        if len(values) == 1 and "=" not in values[0]:
            return load_public_key(values[0])
        keys = {}
        for value in values:
            owner, sep, path = value.partition("=")
            if not sep:
                raise UsageError(f"--public-key {value}: with several keys, write OWNER=PATH")
            keys[owner] = load_public_key(path)
        return keys
    except KeyFileError as err:
        raise UsageError(str(err)) from None


def run_show(args: argparse.Namespace) -> int:
    from privfl.privacy.ledger import LedgerError
    from privfl.privacy.ledger.export import read_ledger, to_json, to_table

    try:
        meta, entries = read_ledger(args.path)
    except LedgerError as err:
        raise _ledger_error(err) from None
    if args.json:
        sys.stdout.write(to_json(meta, entries))
        return 0
    owner = meta.get("owner_id")
    title = f"{args.path}: {meta.get('ledger_kind')} ledger" + (f" of {owner}" if owner else "")
    print(f"{title}, {len(entries)} entries (not verified: run 'privfl ledger verify')")
    sys.stdout.write(to_table(entries))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    import json

    from privfl.privacy.ledger import FederationLedger, LedgerError, verify

    keys = _public_keys(args.public_key)
    anchors, source = [], "the anchors"
    if args.against is not None:
        try:
            federation = FederationLedger.open_readonly(args.against)
        except LedgerError as err:
            raise _ledger_error(err) from None
        try:
            anchors, source = federation.entries(), f"the federation ledger {args.against}"
        finally:
            federation.close()
    try:
        report = verify(args.path, keys, epsilon_check=args.epsilon, anchors=anchors, anchors_source=source)
    except ValueError as err:
        raise _ledger_error(err) from None
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 0 if report.ok else 1


def run_export(args: argparse.Namespace) -> int:
    from privfl.privacy.ledger import LedgerError
    from privfl.privacy.ledger.export import read_ledger, to_csv, to_json

    try:
        meta, entries = read_ledger(args.path)
    except LedgerError as err:
        raise _ledger_error(err) from None
    text = to_json(meta, entries) if args.format == "json" else to_csv(entries)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {len(entries)} entries to {args.out}", file=sys.stderr)
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from privfl.privacy.ledger import LedgerError
    from privfl.privacy.ledger.service import serve

    keys = _public_keys(args.public_key)
    try:
        server, port = serve(args.path, args.address, tls_cert=args.tls_cert, tls_key=args.tls_key,
                             insecure=args.insecure, public_keys=keys)
    except (LedgerError, ValueError) as err:
        raise _ledger_error(err) from None
    host = args.address.rsplit(":", 1)[0]
    print(f"serving {args.path} read-only on {host}:{port} ({'plaintext, loopback' if args.insecure else 'TLS'}); "
          "Ctrl-C stops", flush=True)
    try:
        server.wait_for_termination()
    finally:
        server.stop(grace=1.0)
    return 0
