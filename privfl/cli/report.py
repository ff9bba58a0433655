"""``privfl report``: privacy budget reports from ledgers, for data-protection officers and auditors."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

FORMATS = ("html", "json", "pdf", "csv")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report", help="write a privacy budget report (html, json, pdf, csv) from ledgers",
        description=textwrap.fill(
            "Reads owner ledgers and/or federation ledgers (read-only), verifies each (signatures, hash chain, "
            "every stated epsilon), recomputes every epsilon from the stored DP events with the accountant each "
            "entry names, and writes a report a data-protection officer can act on: each owner accounted per "
            "privacy unit (record-level DP-SGD and owner-level DP-FedAvg, each against its own budget, with PLD and "
            "RDP side by side), who is over budget or near it (from 80% used, naming the unit), what epsilon means "
            "in plain words, rounds left per owner and unit, lifetime epsilon and this experiment's share, "
            "federated evaluation, purposes not declared in the processing record, integrity, an epsilon registry "
            "and a GDPR section. A damaged or tampered ledger is reported at the top and the "
            "report is still written.", width=88)
        + "\n\nExit status: 0 when every ledger is intact and no cross-check problem exists; 1 when a ledger is "
        "not intact or a cross-check found a problem (the report is written anyway); with --strict also 1 when "
        "the report has any other problem (an owner over budget, an undeclared purpose, an epsilon that cannot "
        "be derived); 2 for a usage error. --verify-report: 0 when the JSON report's hash (and signature) check "
        "out, else 1.",
        epilog="Examples:\n"
        "  privfl report runs/quickstart-20261123-120152 --out report.html\n"
        "  privfl report runs/quickstart-20261123-120152 --owner owner-3 --out owner-3.pdf\n"
        "  privfl report st-mary.db --public-key st-mary.pub --processing-record record.toml --out st-mary.pdf\n"
        "  privfl report federation.db --keys-dir keys/ --history history.json --format json --out report.json \\\n"
        "      --sign-key dpo.key --key-passphrase-env DPO_KEY_PASS\n"
        "  privfl report --verify-report report.json --public-key dpo.pub\n"
        "  privfl report --verify-report runs/quickstart-20261123-120152/report.pdf\n"
        "  privfl report --verify-report runs/quickstart-20261123-120152/report.json --regenerate\n"
        "  privfl report --example-processing-record > processing-record.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("ledgers", nargs="*", type=Path, metavar="LEDGER",
                        help="ledger file (.db): an owner's ledger or a federation ledger; a folder: its *.db; a "
                        "simulation run folder: its ledgers/, keys/, history.json and processing-record.toml; a "
                        "federation folder (coordinator/, owners/): every owner ledger it knows, audited as by "
                        "`privfl ledger verify`")
    parser.add_argument("--format", choices=FORMATS,
                        help="report format (default: from --out's suffix, else html)")
    parser.add_argument("--out", type=Path, metavar="PATH",
                        help="output file; omitted or '-': standard output (json and csv only)")
    parser.add_argument("--owner", metavar="OWNER",
                        help="write one owner's statement: only that owner's figures, files and problems")
    parser.add_argument("--history", type=Path, metavar="HISTORY_JSON",
                        help="the run's history.json: accuracy per round, the experiment id (this experiment's share "
                        "of epsilon) and federated evaluation")
    parser.add_argument("--processing-record", action="append", default=[], type=Path, metavar="TOML",
                        help="the owner's record of processing (GDPR Art. 30; declared purposes; who set the "
                        "budget); repeatable, one per owner with owner_ids; see docs/report-schema.md and "
                        "--example-processing-record")
    parser.add_argument("--public-key", action="append", default=[], metavar="[OWNER=]KEY",
                        help="an owner's public key (.pub) to verify against instead of the key the ledger records; "
                        "OWNER=KEY, or KEY named <owner>.pub (or any name, for a report on one owner ledger); with "
                        "--verify-report: the signer's public key")
    parser.add_argument("--keys-dir", type=Path, metavar="DIR",
                        help="folder of owners' public keys <owner>.pub (its <owner>.key file modes are checked too)")
    parser.add_argument("--sign-key", type=Path, metavar="KEY",
                        help="an Ed25519 private key (PEM, e.g. from 'privfl keys generate') that signs the JSON "
                        "report's content hash")
    parser.add_argument("--key-passphrase-env", metavar="VAR",
                        help="environment variable holding the signing key's passphrase")
    parser.add_argument("--unsigned", action="store_true",
                        help="write an unsigned report (default: signed, with --sign-key, else the coordinator's key "
                        "of a run's trust root, else the owner's signing.key beside its ledger)")
    parser.add_argument("--accept-unsigned", action="store_true",
                        help="with --verify-report: accept an unsigned report (its hash alone proves nothing)")
    parser.add_argument("--regenerate", action="store_true",
                        help="with --verify-report: also rebuild the report from the run's ledgers (the run folder "
                        "holding the report, or RUN) and compare every figure, verdict and problem")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 on any problem of the report, not only a ledger that is not intact or a "
                        "cross-check problem (the report is still written)")
    parser.add_argument("--jobs", type=int, metavar="N",
                        help="processes to use (default: one per core, at most 4; 1: no helper processes)")
    parser.add_argument("--title", help="the report's title")
    parser.add_argument("--federation", type=Path, metavar="DIR",
                        help="for a run folder: the federation folder holding the trust root (coordinator/) and the "
                        "owners' ledgers (default: <run-dir>.federation beside the run, else the coordinator folder "
                        "holding runs/<run>; never the paths in the run's config.json)")
    parser.add_argument("--coordinator", type=Path, metavar="DIR",
                        help="for a run folder: the coordinator's folder (coordinator.pub, owner-keys/, registry.db)")
    parser.add_argument("--verify-report", type=Path, metavar="REPORT_JSON",
                        help="check a JSON report's content hash and signature (with --public-key: that the key "
                        "signed it) and exit")
    parser.add_argument("--example-processing-record", action="store_true",
                        help="print an example processing record (TOML) and exit")
    parser.set_defaults(handler=run_report)


def _keys(args: argparse.Namespace, run_keys: Path | None):
    from privfl.cli import UsageError

    named: dict[str, Path] = {}
    bare: list[Path] = []
    for value in args.public_key:
        owner, sep, path = value.partition("=")
        if sep:
            if not owner:
                raise UsageError(f"--public-key {value}: the owner id before '=' is empty")
            named[owner] = Path(path)
        else:
            bare.append(Path(value))
    for path in [*bare, *named.values()]:
        if not path.is_file():
            raise FileNotFoundError(f"no public key file at {path}")
    keys_dir = args.keys_dir or (run_keys if not (named or bare) else None)
    if keys_dir is not None and not keys_dir.is_dir():
        raise FileNotFoundError(f"--keys-dir {keys_dir}: no such folder")
    if keys_dir is None and not named:
        return bare or None, None
    mapping: dict[str, Path] = {}
    if keys_dir is not None:
        mapping.update({p.name.removesuffix(".pub"): p for p in sorted(keys_dir.glob("*.pub"))})
    mapping.update({p.name.removesuffix(".pub"): p for p in bare})
    mapping.update(named)
    return mapping, keys_dir


def _sign_key(args: argparse.Namespace):
    from privfl.cli import UsageError
    from privfl.privacy.keys import KeyFileError, load_private_key

    if args.sign_key is None:
        return None
    passphrase = None
    if args.key_passphrase_env:
        passphrase = os.environ.get(args.key_passphrase_env)
        if passphrase is None:
            raise UsageError(f"--key-passphrase-env {args.key_passphrase_env}: that environment variable is not set")
    try:
        return load_private_key(args.sign_key, passphrase)
    except KeyFileError as err:
        raise UsageError(f"--sign-key: {err}") from None


def _verify(args: argparse.Namespace) -> int:
    """Check a report file (any format) against its hash, signature and signed manifest; with --regenerate,
    against the report rebuilt from the ledgers.  An unsigned report fails unless --accept-unsigned."""
    from privfl.cli import UsageError
    from privfl.privacy.keys import KeyFileError, load_public_key
    from privfl.privacy.report.manifest import verify_report_file
    from privfl.server import run_dir as artefacts
    from privfl.server.run_dir import locate

    if len(args.public_key) > 1 or any("=" in k for k in args.public_key):
        raise UsageError("--verify-report takes at most one --public-key KEY (the signer's)")
    key_file = Path(args.public_key[0]) if args.public_key else None
    if key_file is not None and not key_file.is_file():
        raise FileNotFoundError(f"no public key file at {key_file}")
    run = args.ledgers[0] if args.ledgers else args.verify_report.parent
    pinned = ""
    if key_file is None:  # a run's report: the signer is the coordinator of the run's trust root (never config.json)
        candidate = locate(run, federation_dir=args.federation, coordinator_dir=args.coordinator).coordinator_public_key
        if (run / artefacts.HISTORY).is_file() and candidate.is_file():
            key_file, pinned = candidate, f" (signer pinned: the coordinator's key {candidate})"
    try:
        key = load_public_key(key_file) if key_file is not None else None
    except KeyFileError as err:
        raise UsageError(str(err)) from None
    ok, reason = verify_report_file(args.verify_report, key, accept_unsigned=args.accept_unsigned)
    print(f"{args.verify_report}: {'OK' if ok else 'FAILED'}: {reason}{pinned}")
    if ok and args.regenerate:
        from privfl.privacy.report.regenerate import regenerate_and_compare

        if args.verify_report.suffix != ".json":
            raise UsageError("--regenerate compares a JSON report (report.json)")
        if not (run / artefacts.HISTORY).is_file():
            raise UsageError(f"--regenerate: {run} is not a run folder; give the run folder as RUN")
        ok, why = regenerate_and_compare(args.verify_report, run, federation_dir=args.federation,
                                         coordinator_dir=args.coordinator)
        print(f"{args.verify_report}: {'OK' if ok else 'FAILED'}: {why}")
    return 0 if ok else 1


def _default_sign_key(args: argparse.Namespace, audit):
    """Signed by default: a run's report with the coordinator's key of its trust root; one owner's ledger with the
    owner's signing.key beside it (an institution's own report)."""
    import os

    from privfl.privacy.keys import KeyFileError, load_private_key
    from privfl.privacy.policy import SIGNING_KEY_FILE
    from privfl.privacy.report.run import coordinator_signing_key

    passphrase_env = args.key_passphrase_env or ""
    if audit is not None:
        return coordinator_signing_key(audit.layout, passphrase_env)
    if len(args.ledgers) == 1 and args.ledgers[0].is_file():
        beside = args.ledgers[0].parent / SIGNING_KEY_FILE
        if beside.is_file():
            try:
                return load_private_key(beside, os.environ.get(passphrase_env) if passphrase_env else None)
            except KeyFileError:
                return None
    return None


def _warm_up_renderers() -> None:
    """Import matplotlib and load the templates while the accounting runs in helper processes."""
    from matplotlib.figure import Figure

    from privfl.privacy.report import html_report, plots

    html_report.environment().get_template("report.html.j2")
    figure = Figure(figsize=(1, 1))
    figure.add_subplot(1, 1, 1).set_title("\u03b5 warm-up")  # loads the fonts and the Agg renderer
    plots.png_bytes(figure, dpi=20)


def run_report(args: argparse.Namespace) -> int:
    from privfl.cli import UsageError

    if args.example_processing_record:
        from privfl.privacy.report import example_path

        sys.stdout.write(example_path().read_text(encoding="utf-8"))
        return 0
    if args.verify_report is not None:
        return _verify(args)
    if not args.ledgers:
        raise UsageError("give at least one ledger file, folder or run folder (LEDGER...)")
    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs must be 1 or more")
    fmt = args.format
    to_stdout = args.out is None or str(args.out) == "-"
    if fmt is None:
        suffix = "" if to_stdout else args.out.suffix.lstrip(".").lower()
        fmt = suffix if suffix in FORMATS else "html"
    if to_stdout and fmt in ("html", "pdf"):
        raise UsageError(f"--format {fmt} needs --out PATH")
    sign_key = _sign_key(args)

    from privfl.privacy.report import ProcessingRecordError, build_report, render_csv, render_json, write_report
    from privfl.privacy.report.parallel import default_workers
    from privfl.privacy.report.run import build_run_report, is_legacy_folder, run_inputs

    from privfl.server import run_dir as artefacts

    # a run folder or a federation folder: judged by the one audit, which finds its ledgers (as `ledger verify`)
    runs = [p for p in args.ledgers if p.is_dir() and not is_legacy_folder(p)
            and (artefacts.is_run_folder(p) or artefacts.is_federation_folder(p))]
    audit = None
    warm_up = _warm_up_renderers if fmt in ("html", "pdf") else None
    try:
        if runs:
            if len(args.ledgers) != 1:
                raise UsageError("a run or federation folder is reported on its own (its ledgers are found from "
                                 "it): give one folder")
            from privfl.privacy.audit import audit_path

            audit = audit_path(runs[0], federation_dir=args.federation, coordinator_dir=args.coordinator)
            keys = None
            if args.public_key or args.keys_dir:
                keys, _ = _keys(args, audit.owner_keys_dir)
            report = build_run_report(runs[0], audit=audit, processing_record=args.processing_record or None,
                                      owner=args.owner, workers=args.jobs or default_workers(), keys=keys,
                                      title=args.title, warm_up=warm_up)
        else:
            ledgers: list[Path] = []
            history, records, run_keys, run_key_files = args.history, list(args.processing_record), None, None
            for path in args.ledgers:
                if path.is_dir() and (path / artefacts.LEDGERS).is_dir():  # a folder of the earlier layout
                    inputs = run_inputs(path)
                    ledgers.extend(inputs["ledgers"])
                    history = history or inputs["history"]
                    run_keys = run_keys or inputs["keys_dir"]
                    run_key_files = run_key_files or inputs["key_files_dir"]
                    if not args.processing_record and inputs["processing_record"]:
                        records.append(inputs["processing_record"])
                else:
                    ledgers.append(path)
            keys, key_files_dir = _keys(args, run_keys)
            if args.keys_dir is None and run_key_files is not None:
                key_files_dir = run_key_files
            report = build_report(ledgers, history=history, processing_record=records or None, keys=keys,
                                  title=args.title, key_files_dir=key_files_dir, owner=args.owner,
                                  workers=args.jobs or default_workers(), warm_up=warm_up)
    except (ProcessingRecordError, ValueError) as err:
        raise UsageError(str(err)) from None
    if sign_key is None and not args.unsigned:
        sign_key = _default_sign_key(args, audit)
    if sign_key is None and not args.unsigned:
        print("privfl report: no signing key found (--sign-key KEY, or a run's coordinator key): the report is "
              "unsigned, and --verify-report refuses it without --accept-unsigned", file=sys.stderr)

    if to_stdout:
        if sign_key is not None:
            report.sign(sign_key)
        sys.stdout.write(render_json(report) if fmt == "json" else render_csv(report))
        where = "standard output"
    else:
        from privfl.privacy.report.run import write_signed

        write_signed(report, [args.out], sign_key, fmt)  # with its signed manifest (report.manifest.json)
        where = str(args.out)
    status = report.status
    if audit is not None:
        print(audit.verdict_line(), file=sys.stderr)
    print(f"privfl report: wrote {fmt} to {where}: {status.headline}", file=sys.stderr)
    for problem in status.problems:
        print(f"  problem: {problem}", file=sys.stderr)
    for warning in status.warnings:
        print(f"  note: {warning}", file=sys.stderr)
    from privfl.privacy.audit import EXIT_NOT_INTACT

    if audit is not None and not audit.ok:
        return audit.exit_code
    if report.fails_by_default:
        return EXIT_NOT_INTACT
    return 1 if args.strict and not report.ok else 0
