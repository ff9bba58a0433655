"""Privacy budget reports a data-protection officer can read and an auditor can check.

Every figure is derived from the ledgers' DP events with the accountant each entry
names (never from a separate copy), every ledger is verified, and every statement
says whether the ledger proves it or the owner declares it.

    from privfl.privacy.report import build_report, write_html, write_json
    report = build_report(["ledgers/federation.db", "ledgers/st-mary.db"], history="history.json",
                          processing_record="processing-record.toml", keys="keys/")
    if not report.intact: ...            # a ledger failed verification; the report says so at the top
    write_html(report, "report.html")    # one self-contained file, plots embedded
    write_json(report, "report.json")    # schema: docs/report-schema.md (report-schema.json)

    write_run_report("runs/quickstart-...")   # report.{html,json,csv,pdf} of a simulation run

Command line: ``privfl report LEDGER... --format html|json|pdf|csv --out PATH``.
"""

from privfl.privacy.report.build import SCHEMA_VERSION, Report, build_report, load_keys
from privfl.privacy.report.csv_report import COLUMNS as CSV_COLUMNS
from privfl.privacy.report.csv_report import render_csv, write_csv
from privfl.privacy.report.html_report import render_html, write_html
from privfl.privacy.report.json_report import load_schema, render_json, schema_path, write_json
from privfl.privacy.report.processing_record import (
    ProcessingRecord,
    ProcessingRecordError,
    example_path,
    load_processing_record,
)
from privfl.privacy.report.run import FORMATS, write_pdf, write_report, write_run_report

__all__ = [
    "CSV_COLUMNS", "FORMATS", "SCHEMA_VERSION", "ProcessingRecord", "ProcessingRecordError", "Report",
    "build_report", "example_path", "load_keys", "load_processing_record", "load_schema", "render_csv",
    "render_html", "render_json", "schema_path", "write_csv", "write_html", "write_json", "write_pdf",
    "write_report", "write_run_report",
]
