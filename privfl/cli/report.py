"""``privfl report``: privacy budget reports from ledgers, for data-protection officers and auditors."""

from __future__ import annotations

import argparse
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
            "entry names, and writes a report: budgets spent and left, refused releases, integrity, an epsilon "
            "registry, and a GDPR section (Art. 30 record of processing from --processing-record; Art. 25 and 32 "
            "measures). A ledger that fails verification is reported at the top; with --strict the command then "
            "exits 1.", width=88),
        epilog="Examples:\n"
        "  privfl report runs/quickstart-20261123-120152 --out report.html\n"
        "  privfl report st-mary.db --public-key st-mary.pub --processing-record record.toml --out st-mary.pdf\n"
        "  privfl report federation.db --keys-dir keys/ --history history.json --format json --out report.json\n"
        "  privfl report --example-processing-record > processing-record.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("ledgers", nargs="*", type=Path, metavar="LEDGER",
                        help="ledger file (.db): an owner's ledger or a federation ledger; a folder: its *.db; a "
                        "simulation run folder: its ledgers/, keys/, history.json and processing-record.toml")
    parser.add_argument("--format", choices=FORMATS,
                        help="report format (default: from --out's suffix, else html)")
    parser.add_argument("--out", type=Path, metavar="PATH",
                        help="output file; omitted or '-': standard output (json and csv only)")
    parser.add_argument("--history", type=Path, metavar="HISTORY_JSON",
                        help="the run's history.json: test accuracy per round beside epsilon")
    parser.add_argument("--processing-record", action="append", default=[], type=Path, metavar="TOML",
                        help="the owner's record of processing (GDPR Art. 30; who set the budget); repeatable, one "
                        "per owner with owner_ids; see docs/report-schema.md and --example-processing-record")
    parser.add_argument("--public-key", action="append", default=[], metavar="[OWNER=]KEY",
                        help="an owner's public key (.pub) to verify against instead of the key the ledger records; "
                        "OWNER=KEY, or KEY named <owner>.pub (or any name, for a report on one owner ledger)")
    parser.add_argument("--keys-dir", type=Path, metavar="DIR",
                        help="folder of owners' public keys <owner>.pub (its <owner>.key file modes are checked too)")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when a ledger is not intact or a figure cannot be derived (the report is "
                        "still written)")
    parser.add_argument("--title", help="the report's title")
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


def run_report(args: argparse.Namespace) -> int:
    from privfl.cli import UsageError

    if args.example_processing_record:
        from privfl.privacy.report import example_path

        sys.stdout.write(example_path().read_text(encoding="utf-8"))
        return 0
    if not args.ledgers:
        raise UsageError("give at least one ledger file, folder or run folder (LEDGER...)")
    fmt = args.format
    to_stdout = args.out is None or str(args.out) == "-"
    if fmt is None:
        suffix = "" if to_stdout else args.out.suffix.lstrip(".").lower()
        fmt = suffix if suffix in FORMATS else "html"
    if to_stdout and fmt in ("html", "pdf"):
        raise UsageError(f"--format {fmt} needs --out PATH")

    from privfl.privacy.report import ProcessingRecordError, build_report, render_csv, render_json, write_report
    from privfl.privacy.report.run import run_inputs

    ledgers: list[Path] = []
    history, records, run_keys = args.history, list(args.processing_record), None
    for path in args.ledgers:
        if path.is_dir() and (path / "ledgers").is_dir():  # a run folder
            inputs = run_inputs(path)
            ledgers.extend(inputs["ledgers"])
            history = history or inputs["history"]
            run_keys = run_keys or inputs["keys_dir"]
            if not args.processing_record and inputs["processing_record"]:
                records.append(inputs["processing_record"])
        else:
            ledgers.append(path)
    keys, key_files_dir = _keys(args, run_keys)
    try:
        report = build_report(ledgers, history=history, processing_record=records or None, keys=keys,
                              title=args.title, key_files_dir=key_files_dir)
    except (ProcessingRecordError, ValueError) as err:
        raise UsageError(str(err)) from None

    if to_stdout:
        sys.stdout.write(render_json(report) if fmt == "json" else render_csv(report))
        where = "standard output"
    else:
        write_report(report, args.out, fmt)
        where = str(args.out)
    status = report.document["status"]
    print(f"privfl report: wrote {fmt} to {where}: {status['headline']}", file=sys.stderr)
    for problem in status["problems"]:
        print(f"  problem: {problem}", file=sys.stderr)
    for warning in status["warnings"]:
        print(f"  note: {warning}", file=sys.stderr)
    return 1 if args.strict and not report.ok else 0
