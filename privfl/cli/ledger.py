"""``privfl ledger``: read, verify, export and serve privacy ledgers, and rebuild a lost one (never alters one)."""

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
        "verify", help="check a ledger (or a whole run) against keys and anchors from outside it; exit 0 intact, 1 not",
        description="Walks every chain: signatures, sequence numbers, previous-hash links, each stated cumulative "
        "epsilon recomputed from the stored events, the coordinator's anchors, and the -wal file. What one file "
        "cannot show (entries removed from its end, an older copy, a history rewritten and re-signed by its owner, "
        "a ledger regenerated under another key) needs something from outside it: the registered public key "
        "(--public-key), the heads the coordinator accepted (--registry, or --expected-head noted by an auditor), "
        "the coordinator's key (--coordinator-key). Given a run folder, verifies every ledger of the run and "
        "cross-checks owner ledgers, the federation ledger, the registry and the run history against each other. "
        "Exits 0 when intact, 1 naming the first problem.",
        epilog="examples:\n"
        "  privfl ledger verify runs/quickstart-20261201-101010            # a whole run, cross-checked\n"
        "  privfl ledger verify st-mary/ledger.db --public-key coordinator/owner-keys/st-mary.pub \\\n"
        "      --registry coordinator/registry.db --coordinator-key coordinator/coordinator.pub\n"
        "  privfl ledger verify st-mary/ledger.db --expected-head 42:9f86d081884c7d65...",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("path", type=Path, help="ledger file (.db), a run folder (its history.json and ledgers), or a "
                       "simulation's federation folder (coordinator/ and owners/)")
    check.add_argument("--public-key", action="append", default=[], metavar="[OWNER=]KEY",
                       help="the owner's registered public key (.pub) to check against instead of the key the ledger "
                       "records; for a federation ledger give OWNER=KEY once per owner")
    check.add_argument("--registry", type=Path, metavar="REGISTRY_DB",
                       help="the coordinator's registry: the ledger must hold every head the coordinator accepted "
                       "(detects truncation, an older copy, a lost or damaged -wal, a re-signed history)")
    check.add_argument("--coordinator-key", type=Path, metavar="COORDINATOR_PUB",
                       help="the coordinator's public key, for the anchors of a federation ledger or registry")
    check.add_argument("--expected-head", action="append", default=[], metavar="SEQUENCE:SHA256",
                       help="a head noted earlier (e.g. from `privfl ledger show` or GetBudget): the ledger must "
                       "still hold that entry, byte for byte (repeatable; OWNER:SEQUENCE:SHA256 for a federation "
                       "ledger)")
    check.add_argument("--against", type=Path, metavar="FEDERATION_DB",
                       help="also require every entry the federation ledger holds for this owner")
    check.add_argument("--epsilon", choices=("all", "last", "none"), default="all",
                       help="which stated epsilons to recompute (default: all; 'last' is faster for PRV/PLD)")
    check.add_argument("--federation", type=Path, metavar="DIR",
                       help="a run folder's trust root: the federation folder holding coordinator/ (coordinator.pub, "
                       "owner-keys/, registry.db) and owners/ (default: <run-dir>.federation beside the run, else the "
                       "coordinator folder holding runs/<run>; never the paths in the run's config.json)")
    check.add_argument("--coordinator", type=Path, metavar="DIR",
                       help="a run folder's trust root: the coordinator's folder (coordinator.pub, owner-keys/, "
                       "registry.db), when it is not inside the federation folder")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(handler=run_verify)

    recover = sub.add_parser(
        "recover", help="rebuild a lost owner ledger from the coordinators' copies of its signed entries",
        description="Rebuilds an owner's ledger (a lost disk, a deleted file) from the copies of its own signed "
        "entries that others hold: the federation ledgers of the coordinators it sent receipts to (and any older "
        "copy of its own ledger). Every entry must be signed by the owner's own key (--public-key), the entries "
        "must run from 1 without a gap and link, and each coordinator registry given must be signed by its "
        "coordinator's key and its anchored head must be in the rebuilt chain. Otherwise nothing is written and "
        "the command says what is missing. A coordinator keeps only the hashes of entries of other federations, "
        "so an owner of several federations names every federation's ledgers. Never overwrites a file. Exit 0 "
        "when the ledger was written.",
        epilog="example:\n"
        "  privfl ledger recover st-mary/ledger.db --owner st-mary --public-key st-mary/signing.pub \\\n"
        "      --from coordinator/runs --registry coordinator/registry.db \\\n"
        "      --coordinator-key coordinator/coordinator.pub",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    recover.add_argument("out", type=Path, help="the ledger file to write (must not exist)")
    recover.add_argument("--owner", required=True, help="the owner id")
    recover.add_argument("--public-key", type=Path, required=True,
                         help="the owner's own public key (.pub): every recovered entry must be signed by it")
    recover.add_argument("--from", dest="copies", type=Path, action="append", required=True, metavar="PATH",
                         help="a federation ledger (.db), an older copy of the owner's ledger, or a folder searched "
                         "for federation.db files (a coordinator's runs/ folder); repeatable")
    recover.add_argument("--registry", type=Path, action="append", required=True, metavar="REGISTRY_DB",
                         help="a coordinator's registry: its anchored head must be in the rebuilt ledger; repeatable")
    recover.add_argument("--coordinator-key", type=Path, action="append", required=True, metavar="COORDINATOR_PUB",
                         help="the public key of each --registry's coordinator, in the same order")
    recover.set_defaults(handler=run_recover)

    export = sub.add_parser("export", help="write all entries as JSON or CSV (with the signed bytes)")
    export.add_argument("path", type=Path, help="ledger file (.db)")
    export.add_argument("--format", choices=("json", "csv"), required=True)
    export.add_argument("--out", type=Path, help="output file (default: standard output)")
    export.set_defaults(handler=run_export)

    serve = sub.add_parser(
        "serve", help="serve the ledger read-only over gRPC (TLS, mutual TLS) for auditors",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Runs the PrivacyLedger gRPC service (GetBudget, ListEntries, Verify) over TLS.\n\n"
        "Answers come from a verified ledger: GetBudget and ListEntries first verify the whole file "
        "(signatures,\nhash chains, epsilons; with --public-key against pinned keys) and refuse with "
        "FAILED_PRECONDITION and the\nfirst problem when it is not intact. A verification is reused until the "
        "file (or its -wal) changes.\n\n"
        "--client-ca: mutual TLS; every client must present a certificate issued by that CA. Without it any\n"
        "client that reaches the port can read every entry (a warning says so). --insecure (plaintext) is\n"
        "accepted only on a loopback address.\n\n"
        "Access list (needs --client-ca): the identity in a client's certificate (its URI SAN\n"
        "privfl:auditor:ID, else its common name) limits which owners it may read. With --auditor or\n"
        "--access given, an identity not listed is denied everything; asking for another owner is\n"
        "PERMISSION_DENIED; ListEntries without an owner returns only the permitted owners' entries; Verify\n"
        "is allowed only when the file holds no owner outside the caller's access. Access file (TOML):\n\n"
        "    [auditors]\n"
        "    \"dpo-st-mary\" = [\"st-mary\"]\n"
        "    \"federation-dpo\" = [\"*\"]        # every owner",
        epilog="example (certificates from privfl.pki, CA key kept offline):\n\n"
        "  python - <<'EOF'\n"
        "  from privfl import pki\n"
        "  ca = pki.create_ca(\"st-mary ledger CA\", days=3650)\n"
        "  pki.write_pair(ca, \"ca.pem\", \"ca.key\")\n"
        "  pki.write_pair(pki.issue_server_cert(ca, [\"ledger.st-mary.org\", \"127.0.0.1\"], days=825),\n"
        "                 \"server.pem\", \"server.key\")\n"
        "  pki.write_pair(pki.issue_client_cert(ca, \"dpo-st-mary\", days=365),\n"
        "                 \"dpo-st-mary.pem\", \"dpo-st-mary.key\")\n"
        "  EOF\n"
        "  privfl ledger serve st-mary.db --address 0.0.0.0:50061 \\\n"
        "      --tls-cert server.pem --tls-key server.key --client-ca ca.pem \\\n"
        "      --auditor dpo-st-mary=st-mary --public-key st-mary.pub\n\n"
        "The auditor connects with ca.pem as the root and dpo-st-mary.pem/.key as its client certificate.",
    )
    serve.add_argument("path", type=Path, help="ledger file (.db)")
    serve.add_argument("--address", required=True, help="HOST:PORT to listen on, e.g. 127.0.0.1:50061")
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate chain of the server")
    serve.add_argument("--tls-key", type=Path, help="PEM private key of the certificate")
    serve.add_argument("--client-ca", type=Path, metavar="CA.pem",
                       help="require client certificates issued by this CA (mutual TLS)")
    serve.add_argument("--auditor", action="append", default=[], metavar="ID=OWNER[,OWNER...]",
                       help="let the client whose certificate names ID read only these owners ('*': every "
                       "owner); repeatable; needs --client-ca")
    serve.add_argument("--access", type=Path, metavar="ACCESS.toml",
                       help="access list file: an [auditors] table of \"ID\" = [\"OWNER\", ...] (as --auditor)")
    serve.add_argument("--insecure", action="store_true", help="no TLS (loopback addresses only)")
    serve.add_argument("--public-key", action="append", default=[], metavar="[OWNER=]KEY",
                       help="pin the key(s) every verification checks against (as for 'verify')")
    serve.add_argument("--registry", type=Path, metavar="REGISTRY_DB",
                       help="the coordinator's registry: answer only while the ledger holds every head the "
                       "coordinator anchored (a truncated or rolled-back ledger is refused)")
    serve.add_argument("--coordinator-key", type=Path, metavar="COORDINATOR_PUB",
                       help="the coordinator's public key, that the registry is verified under")
    serve.add_argument("--verify-epsilon", choices=("all", "last", "none"), default="all",
                       help="which stated epsilons the verification behind every answer recomputes "
                       "(default: all)")
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
    """A run or federation folder, or one ledger file: all judged by the one audit (privfl.privacy.audit), which
    prints the same verdict line and exits with the same code whatever it was given."""
    from privfl.privacy.audit import audit_file
    from privfl.privacy.ledger import FederationLedger, LedgerError

    if args.path.is_dir():
        return _verify_run(args)
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
    coordinator = _load_key(args.coordinator_key) if args.coordinator_key else None
    try:
        audit = audit_file(args.path, keys, registry=args.registry, coordinator_key=coordinator,
                           epsilon_check=args.epsilon, anchors=anchors, anchors_source=source,
                           expected_heads=_expected_heads(args))
    except (ValueError, LedgerError) as err:
        raise _ledger_error(err) from None
    return _print_audit(audit, args.json)


def _expected_heads(args: argparse.Namespace) -> list[tuple[str, int, bytes]]:
    """--expected-head SEQUENCE:SHA256 (the file's owner) or OWNER:SEQUENCE:SHA256: heads an auditor noted."""
    from privfl.cli import UsageError
    from privfl.privacy.ledger import LedgerError
    from privfl.privacy.ledger.store import LedgerStore

    heads: list[tuple[str, int, bytes]] = []
    for value in args.expected_head:
        parts = value.split(":")
        try:
            if len(parts) == 2:
                store = LedgerStore.open_readonly(args.path)
                try:
                    owner = store.meta().get("owner_id") or ""
                finally:
                    store.close()
                sequence, digest = int(parts[0]), bytes.fromhex(parts[1])
            elif len(parts) == 3:
                owner, sequence, digest = parts[0], int(parts[1]), bytes.fromhex(parts[2])
            else:
                raise ValueError
            if len(digest) != 32:
                raise ValueError
        except (ValueError, LedgerError):
            raise UsageError(f"--expected-head {value}: write SEQUENCE:SHA256 (64 hex digits), or "
                             "OWNER:SEQUENCE:SHA256") from None
        heads.append((owner, sequence, digest))
    return heads


def _load_key(path: Path):
    from privfl.cli import UsageError
    from privfl.privacy.keys import KeyFileError, load_public_key

    try:
        return load_public_key(path)
    except KeyFileError as err:
        raise UsageError(str(err)) from None


def _verify_run(args: argparse.Namespace) -> int:
    from privfl.privacy.audit import audit_path

    try:
        audit = audit_path(args.path, federation_dir=args.federation, coordinator_dir=args.coordinator)
    except FileNotFoundError as err:
        raise _ledger_error(err) from None
    return _print_audit(audit, args.json)


def _print_audit(audit, as_json: bool) -> int:
    """The one audit's verdict (line, problems, each file), as text or JSON; returns its exit code."""
    import json

    if as_json:
        print(json.dumps({"ok": audit.ok, "verdict": audit.verdict, "owners_not_intact": audit.owners_not_intact,
                          "problems": audit.all_problems(), "notes": audit.unaggregated, "trust_root": audit.trust_root,
                          "read": audit.read, "files": [r.to_dict() for r in audit.reports]}, indent=2))
    else:
        print(audit.summary())
        for report in audit.reports:
            print(report.summary() if not report.ok or audit.subject.startswith("ledger ")
                  else f"{report.path}: INTACT ({report.ledger_kind} ledger)")
    return audit.exit_code


def run_recover(args: argparse.Namespace) -> int:
    from privfl.cli import UsageError
    from privfl.privacy.ledger import LedgerError
    from privfl.privacy.ledger.recover import recover_owner_ledger
    from privfl.server.run_dir import FEDERATION_LEDGER

    if len(args.registry) != len(args.coordinator_key):
        raise UsageError(f"give one --coordinator-key per --registry ({len(args.registry)} registries, "
                         f"{len(args.coordinator_key)} keys)")
    copies = []
    for path in args.copies:
        found = sorted(path.rglob(FEDERATION_LEDGER)) if path.is_dir() else [path]
        if not found:
            raise UsageError(f"--from {path}: no federation.db under this folder")
        copies.extend(found)
    registries = [(path, _load_key(key)) for path, key in zip(args.registry, args.coordinator_key)]
    try:
        result = recover_owner_ledger(args.out, args.owner, _load_key(args.public_key), copies, registries)
    except (LedgerError, ValueError) as err:
        raise UsageError(f"nothing was written: {err}") from None
    print(f"wrote {result.path}: {result.head[0]} entries of {result.owner_id}, head {result.head[1].hex()[:16]}..., "
          "verified against the owner's key")
    for source, count in result.sources.items():
        print(f"  {count} entries from {source}")
    for source, sequence in result.anchored:
        print(f"  anchored head {sequence} of {source}: present")
    print("the owner's node checks it against its own head record before it trains (docs/ledger.md)")
    return 0


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


def _access_policy(args: argparse.Namespace):
    """--access FILE and --auditor ID=OWNERS -> AccessPolicy, or None when neither is given."""
    from privfl.cli import UsageError
    from privfl.privacy.ledger.service import AccessPolicy

    if args.access is None and not args.auditor:
        return None
    try:
        grants: dict[str, list[str]] = dict(AccessPolicy.read_toml(args.access)) if args.access else {}
        for value in args.auditor:
            identity, owners = AccessPolicy.parse_grant(value)
            if identity in grants:
                raise UsageError(f"auditor {identity!r} is given twice (--auditor/--access); list its owners once")
            grants[identity] = owners
        return AccessPolicy(grants)
    except ValueError as err:
        raise UsageError(str(err)) from None


def run_serve(args: argparse.Namespace) -> int:
    from privfl.privacy.ledger import LedgerError
    from privfl.privacy.ledger.service import serve

    keys = _public_keys(args.public_key)
    access = _access_policy(args)
    try:
        server, port = serve(args.path, args.address, tls_cert=args.tls_cert, tls_key=args.tls_key,
                             client_ca=args.client_ca, access=access, insecure=args.insecure, public_keys=keys,
                             epsilon_check=args.verify_epsilon, registry=args.registry,
                             coordinator_key=_load_key(args.coordinator_key) if args.coordinator_key else None)
    except (LedgerError, ValueError) as err:
        raise _ledger_error(err) from None
    host = args.address.rsplit(":", 1)[0]
    if args.insecure:
        transport = "plaintext, loopback"
    elif args.client_ca:
        transport = f"mutual TLS: client certificates from {args.client_ca}"
    else:
        transport = "TLS, no client certificates"
    scope = "" if access is None else f"; access list of {len(access.grants)} auditor(s)"
    print(f"serving {args.path} read-only on {host}:{port} ({transport}{scope}); answers only from a verified "
          "ledger; Ctrl-C stops", flush=True)
    try:
        server.wait_for_termination()
    finally:
        server.stop(grace=1.0)
    return 0
