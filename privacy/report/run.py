"""Reports for a simulation run folder, and one entry point for every format.

``write_run_report(run_dir)`` is what the simulation launcher calls at the end of a
run, and ``privfl report RUN`` does the same: the run is judged by the one audit
(:func:`privfl.privacy.audit.audit_run`), which finds the run's files from the folder
named (never from config.json) and every ledger any source knows about; the report is
built from the files that audit found, against the owners' keys registered with the
coordinator, and carries the audit's verdict (a problem the audit found makes the report
NOT INTACT, naming the owner).  It writes ``report.html``, ``report.json``,
``report.csv`` and ``report.pdf``.  A tampered ledger does not make it fail: the report
says so at the top (``Report.intact``).

A folder of the earlier layout (no config.json; owner ledgers under ``ledgers/``, keys
under ``keys/``) is read as a set of ledgers, without an audit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from privfl.privacy.report.build import build_report
from privfl.privacy.report.csv_report import write_csv
from privfl.privacy.report.html_report import write_html
from privfl.privacy.report.json_report import write_json
from privfl.privacy.report.model import Report
from privfl.server import run_dir as artefacts

FORMATS = ("html", "json", "pdf", "csv")
RUN_REPORT_FORMATS = ("html", "json", "csv", "pdf")
REPORT_STEM = "report"
PROCESSING_RECORD = "processing-record.toml"
LEGACY_KEYS = "keys"  # the earlier layout's owners' keys, inside the run folder


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


def is_legacy_folder(run_dir: str | Path) -> bool:
    """A folder of the earlier layout: no config.json, and owner ledgers beside the federation ledger in ledgers/."""
    run_dir = Path(run_dir)
    return not (run_dir / artefacts.CONFIG).exists() and any(
        p.name != artefacts.FEDERATION_LEDGER for p in (run_dir / artefacts.LEDGERS).glob("*.db"))


def audited_inputs(audit) -> dict:
    """What a report of an audited run reads: exactly the files the audit found and accepted (:func:`run_inputs`'s
    keys), with the audit's problems and the owners they name."""
    where = audit.layout
    ledgers = [where.federation_ledger] if where.federation_ledger.is_file() else []
    ledgers += [audit.owner_ledgers[o] for o in sorted(audit.owner_ledgers)]
    record = where.run_dir / PROCESSING_RECORD
    return {
        "ledgers": ledgers,
        "keys_dir": audit.owner_keys_dir,
        "key_files_dir": where.owners_dir if where.owners_dir.is_dir() else None,
        "history": where.history if where.history.is_file() else None,
        "processing_record": record if record.is_file() else None,
        "cross_checks": audit.all_problems(),
        "owners_not_intact": dict(audit.owners_not_intact),
    }


def run_inputs(run_dir: str | Path) -> dict:
    """What a folder of the earlier layout holds for a report: ``ledgers/*.db``, ``keys/``, the history and the
    processing record (a run folder of today's layout is read through its audit: :func:`audited_inputs`)."""
    run_dir = Path(run_dir)
    ledgers = sorted((run_dir / artefacts.LEDGERS).glob("*.db"))
    if not ledgers:
        raise FileNotFoundError(f"no ledgers in {run_dir / artefacts.LEDGERS}: is {run_dir} a privfl run folder?")
    keys = run_dir / LEGACY_KEYS
    history = run_dir / artefacts.HISTORY
    record = run_dir / PROCESSING_RECORD
    return {
        "ledgers": ledgers,
        "keys_dir": keys if keys.is_dir() and any(keys.glob("*.pub")) else None,
        "key_files_dir": keys if keys.is_dir() else None,
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
    audit=None,
    federation_dir: str | Path | None = None,
    coordinator_dir: str | Path | None = None,
    passphrase_env: str = "",
    unsigned: bool = False,
) -> list[Path]:
    """Write the privacy budget report of a simulation run; returns the files written.

    Files: ``report.html``, ``report.json``, ``report.csv``, ``report.pdf`` (``formats``
    picks) in ``out_dir`` (default: the run folder).  ``cross_checks``: problems an
    external cross-check found; ``sign_key``: an Ed25519 private key (object) that signs
    the JSON's content hash and the manifest of every file written (default: the
    coordinator's key from the run's trust root, its passphrase in the environment
    variable ``passphrase_env``; ``unsigned=True`` writes an unsigned report); ``owner``: one owner's statement instead of the whole
    report; ``workers``: processes to use (see :func:`build_report`); ``audit``: the
    run's audit if already made (else made here, with ``federation_dir`` /
    ``coordinator_dir`` as the trust root: see :func:`privfl.server.run_dir.locate`).
    Raises FileNotFoundError when the folder holds no ledgers; never because a ledger
    failed verification.
    """
    if audit is None and not is_legacy_folder(run_dir):
        from privfl.privacy.audit import audit_run

        audit = audit_run(run_dir, federation_dir=federation_dir, coordinator_dir=coordinator_dir)
    report = build_run_report(run_dir, processing_record=processing_record, cross_checks=cross_checks,
                              owner=owner, workers=workers, audit=audit)
    if sign_key is None and not unsigned and audit is not None:
        sign_key = coordinator_signing_key(audit.layout, passphrase_env)
    out = Path(out_dir) if out_dir is not None else Path(run_dir)
    return write_signed(report, [out / f"{REPORT_STEM}.{fmt}" for fmt in formats], sign_key)


def coordinator_signing_key(where, passphrase_env: str = ""):
    """The coordinator's private key from the run's trust root (a simulation's, or the coordinator's own folder),
    or None when it is not there or cannot be opened (the report is then unsigned and says so)."""
    import os

    from privfl.privacy.keys import KeyFileError, load_private_key

    path = where.coordinator_key
    if not path.is_file():
        return None
    try:
        return load_private_key(path, os.environ.get(passphrase_env) if passphrase_env else None)
    except KeyFileError:
        return None


def write_signed(report: Report, paths: Sequence[str | Path], sign_key=None, fmt: str | None = None) -> list[Path]:
    """Sign ``report`` (when a key is given), write it in every format ``paths`` name, and the manifest of them all
    (each file's sha256, signed with the same key): one home for how a report leaves privfl."""
    from privfl.privacy.report.manifest import write_manifest

    if sign_key is not None:
        report.sign(sign_key)
    paths = [Path(p) for p in paths]
    figures = None
    if {"html", "pdf"} & ({fmt} if fmt else {p.suffix.lstrip(".").lower() for p in paths}):
        from privfl.privacy.report.plots import report_figures

        figures = report_figures(report)  # drawn once, embedded in both
    written = [write_report(report, path, fmt, figures) for path in paths]
    if written:
        write_manifest(written, report.content_hash, sign_key)
    return written


def build_run_report(run_dir: str | Path, *, processing_record=None, cross_checks: Sequence[str] | None = None,
                     owner: str | None = None, workers: int = 1, audit=None, federation_dir=None,
                     coordinator_dir=None, keys=None, title: str | None = None, warm_up=None) -> Report:
    """The report of a run folder, carrying the one audit's verdict (an earlier-layout folder: its ledgers alone)."""
    if is_legacy_folder(run_dir) and audit is None:
        inputs = run_inputs(run_dir)
        inputs.update(cross_checks=[], owners_not_intact={})
    else:
        if audit is None:
            from privfl.privacy.audit import audit_run

            audit = audit_run(run_dir, federation_dir=federation_dir, coordinator_dir=coordinator_dir)
        inputs = audited_inputs(audit)
        if not inputs["ledgers"]:
            raise FileNotFoundError(f"no ledgers found for the run {run_dir}: {audit.verdict_line()}")
    from privfl.privacy.report.empirical import result_path

    audit_result = result_path(run_dir)
    return build_report(inputs["ledgers"], history=inputs["history"],
                        processing_record=processing_record or inputs["processing_record"],
                        keys=keys if keys is not None else inputs["keys_dir"], key_files_dir=inputs["key_files_dir"],
                        cross_checks=list(dict.fromkeys([*inputs["cross_checks"], *(cross_checks or ())])),
                        cross_check_owners=inputs["owners_not_intact"], owner=owner, workers=workers, title=title,
                        warm_up=warm_up, empirical_audit=audit_result if audit_result.is_file() else None)
