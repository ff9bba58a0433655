"""Reports for a simulation run folder, and one entry point for every format.

``write_run_report(run_dir)`` is what the simulation launcher calls at the end of a
run: it reads ``ledgers/*.db`` (the federation ledger and every owner's ledger), the
owners' public keys enrolled before the run (``keys/``, or the run's
``owner-keys-dir``), ``history.json`` and, when the run folder holds one,
``processing-record.toml``, and writes ``report.html``, ``report.json``,
``report.csv`` and ``report.pdf`` next to them.  A tampered ledger does not make it
fail: the report says so at the top (``Report.intact``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from privfl.privacy.report.build import Report, build_report
from privfl.privacy.report.csv_report import write_csv
from privfl.privacy.report.html_report import write_html
from privfl.privacy.report.json_report import write_json

FORMATS = ("html", "json", "pdf", "csv")
RUN_REPORT_FORMATS = ("html", "json", "csv", "pdf")
REPORT_STEM = "report"
PROCESSING_RECORD = "processing-record.toml"


def write_pdf(report: Report, path: str | Path, figures: list | None = None) -> Path:
    """Write ``report`` as PDF (matplotlib, imported only when a PDF or a picture is drawn)."""
    from privfl.privacy.report import pdf_report

    return pdf_report.write_pdf(report, path, figures)


def write_report(report: Report, path: str | Path, fmt: str | None = None, figures: list | None = None) -> Path:
    """Write ``report`` as ``fmt`` (html, json, pdf or csv; default: from the file's suffix)."""
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt == "html":
        return write_html(report, path, figures)
    if fmt == "json":
        return write_json(report, path)
    if fmt == "csv":
        return write_csv(report, path)
    if fmt == "pdf":
        return write_pdf(report, path, figures)
    raise ValueError(f"unknown report format {fmt!r}; choose one of {', '.join(FORMATS)}")


def run_inputs(run_dir: str | Path) -> dict:
    """What a run folder holds for a report: ledger files, keys folder, history, processing record."""
    from privfl.server import run_dir as artefacts

    run_dir = Path(run_dir)
    ledgers = sorted((run_dir / artefacts.LEDGERS).glob("*.db"))
    if not ledgers:
        raise FileNotFoundError(f"no ledgers in {run_dir / artefacts.LEDGERS}: is {run_dir} a privfl run folder?")
    keys_dir = run_dir / artefacts.KEYS
    config_file = run_dir / artefacts.CONFIG
    if config_file.is_file():
        try:
            configured = json.loads(config_file.read_text(encoding="utf-8")).get("owner-keys-dir") or ""
        except (json.JSONDecodeError, AttributeError):
            configured = ""
        if configured:
            keys_dir = Path(configured)
    history = run_dir / artefacts.HISTORY
    record = run_dir / PROCESSING_RECORD
    return {
        "ledgers": ledgers,
        "keys_dir": keys_dir if keys_dir.is_dir() and any(keys_dir.glob("*.pub")) else None,
        "history": history if history.is_file() else None,
        "processing_record": record if record.is_file() else None,
    }


def write_run_report(
    run_dir: str | Path,
    *,
    formats: Iterable[str] = RUN_REPORT_FORMATS,
    out_dir: str | Path | None = None,
    processing_record: str | Path | None = None,
) -> list[Path]:
    """Write the privacy budget report of a simulation run; returns the files written.

    Files: ``report.html``, ``report.json``, ``report.csv``, ``report.pdf`` (``formats``
    picks) in ``out_dir`` (default: the run folder).  Raises FileNotFoundError when the
    folder holds no ledgers; never because a ledger failed verification.
    """
    inputs = run_inputs(run_dir)
    report = build_report(inputs["ledgers"], history=inputs["history"],
                          processing_record=processing_record or inputs["processing_record"],
                          keys=inputs["keys_dir"], key_files_dir=inputs["keys_dir"])
    out = Path(out_dir) if out_dir is not None else Path(run_dir)
    formats = list(formats)
    figures = None
    if {"html", "pdf"} & set(formats):
        from privfl.privacy.report.plots import report_figures

        figures = report_figures(report.document)  # drawn once, embedded in both
    written = [write_report(report, out / f"{REPORT_STEM}.{fmt}", fmt, figures) for fmt in formats]
    return written
