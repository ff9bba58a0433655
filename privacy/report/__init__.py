"""Privacy budget reports a data-protection officer can act on and an auditor can check.

Every figure is derived from the ledgers' DP events with the accountant each entry
names (never from a separate copy), every ledger is verified, and every statement
says whether the ledger proves it or the owner declares it.  The report is one typed
model (:mod:`.model`) that every format renders.

    from privfl.privacy.report import build_report, write_html, write_json, verify_report_json
    report = build_report(["ledgers/federation.db", "ledgers/st-mary.db"], history="history.json",
                          processing_record="processing-record.toml", keys="keys/")
    if not report.intact: ...            # a ledger failed verification; the report says so at the top
    report.status.budget_alerts          # owners over budget or near it (80%), highest share first
    report.owner("st-mary").outlook      # rounds left at the current plan
    statement = report.for_owner("st-mary")   # one owner's statement
    report.sign(private_key)             # Ed25519 signature over the JSON's content hash
    write_html(report, "report.html")    # one self-contained file (jinja2 templates), plots embedded
    write_json(report, "report.json")    # schema: docs/report-schema.md (report-schema.json)
    verify_report_json("report.json", public_key)   # (ok, reason)

    write_run_report("runs/quickstart-...")   # report.{html,json,csv,pdf} of a simulation run

Command line: ``privfl report LEDGER... --format html|json|pdf|csv --out PATH [--owner OWNER]``.
"""

from privfl.privacy.report.build import build_report, narrow_to_owner
from privfl.privacy.report.csv_report import COLUMNS as CSV_COLUMNS
from privfl.privacy.report.csv_report import render_csv, write_csv
from privfl.privacy.report.html_report import render_html, write_html
from privfl.privacy.report.json_report import load_schema, render_json, schema_path, write_json
from privfl.privacy.report.ledgers import load_keys, resolve_ledger_paths
from privfl.privacy.report.model import NEAR_BUDGET_FRACTION, SCHEMA_VERSION, OwnerStatement, Report
from privfl.privacy.report.processing_record import (
    ProcessingRecord,
    ProcessingRecordError,
    example_path,
    load_processing_record,
)
from privfl.privacy.report.run import FORMATS, write_pdf, write_report, write_run_report
from privfl.privacy.report.signing import canonical_bytes, verify_report_json

__all__ = [
    "CSV_COLUMNS", "FORMATS", "NEAR_BUDGET_FRACTION", "SCHEMA_VERSION", "OwnerStatement", "ProcessingRecord",
    "ProcessingRecordError", "Report", "build_report", "canonical_bytes", "example_path", "load_keys",
    "load_processing_record", "load_schema", "narrow_to_owner", "render_csv", "render_html", "render_json",
    "resolve_ledger_paths", "schema_path", "verify_report_json", "write_csv", "write_html", "write_json", "write_pdf",
    "write_report", "write_run_report",
]
