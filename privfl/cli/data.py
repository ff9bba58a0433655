"""``privfl data``: check an owner's data file before it trains on it."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from privfl.cli import argtypes

_EPILOG = """\
examples:
  privfl data check st-mary.csv
  privfl data check st-mary.parquet --label-column diagnosis --delta 1e-5 --num-classes 2
  privfl data check st-mary.npz --json

The file's schema: every column except the label column is a numeric feature
(booleans count as 0/1); the label column holds integer class ids 0..K-1; no
cell is missing, NaN or infinite. The summary shows the shape of the data (rows,
feature names, rows per class) and never a value from a row.

exit status: 0 the file is usable, 1 it is not (every problem is listed),
2 usage error (no such file, unknown file type, bad option).
See docs/data.md.
"""


def _label_column(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a column")
    return text.strip()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data", help="check an owner's data file (CSV, Parquet or .npz)",
        description="An institution trains on its own tabular data: one file with a header of column "
        "names, numeric feature columns and a label column of integer class ids.",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = sub.add_parser(
        "check", help="validate a data file and summarize it without showing any row",
        description="Validate an owner's data file (.csv, .parquet or .npz) and print a summary:\n"
        "format, rows, features, the label column and its classes, and the checks: columns,\n"
        "missing/NaN/Inf values, label values, small classes, and with --delta the rule delta < 1/n.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("path", type=Path, metavar="PATH", help="the data file: .csv, .parquet or .npz")
    check.add_argument("--label-column", type=_label_column, default="label", metavar="NAME",
                       help="the column (or .npz array) holding the class ids (default: label)")
    check.add_argument("--delta", type=argtypes.delta, metavar="D",
                       help="the owner's delta: the file fails when delta is not below 1/rows")
    check.add_argument("--num-classes", type=argtypes.positive_int, metavar="K",
                       help="the task's number of classes: labels must be below K (default: largest label + 1)")
    check.add_argument("--json", action="store_true", help="print the summary as JSON")
    check.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace) -> int:
    import json

    from privfl.cli import UsageError
    from privfl.datafiles import DataFileError, check_owner_file

    try:
        summary = check_owner_file(args.path, label_column=args.label_column,
                                   num_classes=args.num_classes, delta=args.delta)
    except DataFileError as err:  # nothing to check: no such file, unknown type, no pyarrow
        raise UsageError(str(err)) from None
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print(render_summary(summary))
    return 0 if summary.usable else 1


_SHOWN_NAMES = 40
_WIDTH = 100
_STATUS = {"ok": "ok", "failed": "FAILED", "warning": "warning", "skipped": "skipped"}


def render_summary(summary) -> str:
    """The text form of a :class:`~privfl.datafiles.DataSummary`."""
    def field(name: str, value: object) -> str:
        return f"{name + ':':<15}{value}"

    lines = [field("file", summary.path), field("format", summary.format or "unknown")]
    if summary.num_rows is not None:
        lines.append(field("rows", f"{summary.num_rows:,}"))
    if summary.feature_names is not None:
        lines.append(field("features", summary.num_features))
        names = list(summary.feature_names)
        shown = ", ".join(names[:_SHOWN_NAMES])
        if len(names) > _SHOWN_NAMES:
            shown += f", ... ({len(names) - _SHOWN_NAMES} more; --json lists all)"
        lines.append(field("feature names", shown or "none"))
    lines.append(field("label column", summary.label_column))
    if summary.class_counts is not None:
        counts = ", ".join(f"{c}: {k:,}" for c, k in sorted(summary.class_counts.items()))
        lines.append(field("classes", f"{summary.num_classes} (rows per class: {counts or 'none'})"))
    lines += ["", "checks:"]
    for check in summary.checks:
        status = _STATUS[check.status]
        for i, message in enumerate(check.messages):
            head = f"  {status:<8} {check.name:<8} " if i == 0 else " " * 20
            lines += textwrap.wrap(message, width=_WIDTH, initial_indent=head, subsequent_indent=" " * 20,
                                   break_long_words=False, break_on_hyphens=False)
    errors, warnings = len(summary.errors), len(summary.warnings)
    verdict = "usable" if summary.usable else f"NOT usable: {errors} {'problem' if errors == 1 else 'problems'}"
    if warnings:
        verdict += f" ({warnings} {'warning' if warnings == 1 else 'warnings'})"
    lines += ["", verdict]
    return "\n".join(lines)
