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
from collections.abc import Iterable, Sequence
from pathlib import Path

from privfl.privacy.report.build import build_report
from privfl.privacy.report.csv_report import write_csv
from privfl.privacy.report.html_report import write_html
from privfl.privacy.report.json_report import write_json
from privfl.privacy.report.model import Report

FORMATS = ("html", "json", "pdf", "csv")
RUN_REPORT_FORMATS = ("html", "json", "csv", "pdf")
REPORT_STEM = "report"
PROCESSING_RECORD = "processing-record.toml"
LEDGER_FILE = "ledger.db"  # an owner's ledger in a simulation's federation folder: owners/<owner>/ledger.db


def write_pdf(report: Report, path: str | Path, figures: list | None = None) -> Path:
    """Write ``report`` as PDF (matplotlib, imported only when a PDF or a picture is drawn)."""
    from privfl.privacy.report import pdf_report

    return pdf_report.write_pdf(report, path, figures)


def write_report(report: Report, path: str | Path, fmt: str | None = None, figures: list | None = None) -> Path:
    """Write ``report`` as ``fmt`` (html, json, pdf or csv; default: from the file's suffix).

    ``figures``: pictures already drawn (:func:`privfl.privacy.report.plots.report_figures`),
    to share them between the HTML and the PDF.
    """
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
    """What a run folder holds for a report: ledger files, keys folder, history, processing record.

    The run's ``ledgers/*.db`` (the federation ledger), and from its ``config.json`` the
    federation folder's owner ledgers (``owners/<owner>/ledger.db``) and the
    coordinator's registered owner keys (``owner-keys/``); a run folder of the earlier
    layout (``keys/``, owner ledgers under ``ledgers/``) is read as before.
    """
    run_dir = Path(run_dir)
    ledgers = sorted((run_dir / "ledgers").glob("*.db"))
    if not ledgers:
        raise FileNotFoundError(f"no ledgers in {run_dir / 'ledgers'}: is {run_dir} a privfl run folder?")
    config: dict = {}
    config_file = run_dir / "config.json"
    if config_file.is_file():
        try:
            loaded = json.loads(config_file.read_text(encoding="utf-8"))
            config = loaded if isinstance(loaded, dict) else {}
        except json.JSONDecodeError:
            config = {}
    federation = Path(config["federation-dir"]) if config.get("federation-dir") else None
    coordinator = Path(config["coordinator-dir"]) if config.get("coordinator-dir") else (
        federation / "coordinator" if federation else None)
    if federation is not None and (federation / "owners").is_dir():
        ledgers += sorted((federation / "owners").glob(f"*/{LEDGER_FILE}"))
    candidates = [coordinator / "owner-keys" if coordinator else None,
                  Path(config["owner-keys-dir"]) if config.get("owner-keys-dir") else None, run_dir / "keys"]
    keys_dir = next((c for c in candidates if c is not None and c.is_dir() and any(c.glob("*.pub"))), None)
    key_files = run_dir / "keys" if (run_dir / "keys").is_dir() else (
        federation / "owners" if federation is not None and (federation / "owners").is_dir() else None)
    history = run_dir / "history.json"
    record = run_dir / PROCESSING_RECORD
    return {
        "ledgers": ledgers,
        "keys_dir": keys_dir,
        "key_files_dir": key_files,
        "history": history if history.is_file() else None,
        "processing_record": record if record.is_file() else None,
    }


def write_run_report(
    run_dir: str | Path,
    *,
    formats: Iterable[str] = RUN_REPORT_FORMATS,
    out_dir: str | Path | None = None,
    processing_record: str | Path | None = None,
    cross_checks: Sequence[str] | None = None,
    sign_key=None,
    owner: str | None = None,
    workers: int = 1,
) -> list[Path]:
    """Write the privacy budget report of a simulation run; returns the files written.

    Files: ``report.html``, ``report.json``, ``report.csv``, ``report.pdf`` (``formats``
    picks) in ``out_dir`` (default: the run folder).  ``cross_checks``: problems an
    external cross-check found; ``sign_key``: an Ed25519 private key (object) that signs
    the JSON's content hash; ``owner``: one owner's statement instead of the whole
    report; ``workers``: processes to use (see :func:`build_report`).  Raises
    FileNotFoundError when the folder holds no ledgers; never because a ledger failed
    verification.
    """
    inputs = run_inputs(run_dir)
    report = build_report(inputs["ledgers"], history=inputs["history"],
                          processing_record=processing_record or inputs["processing_record"],
                          keys=inputs["keys_dir"], key_files_dir=inputs["key_files_dir"], cross_checks=cross_checks,
                          owner=owner, workers=workers)
    if sign_key is not None:
        report.sign(sign_key)
    out = Path(out_dir) if out_dir is not None else Path(run_dir)
    formats = list(formats)
    figures = None
    if {"html", "pdf"} & set(formats):
        from privfl.privacy.report.plots import report_figures

        figures = report_figures(report)  # drawn once, embedded in both
    return [write_report(report, out / f"{REPORT_STEM}.{fmt}", fmt, figures) for fmt in formats]
