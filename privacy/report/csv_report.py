"""The report as CSV for spreadsheets: one row per ledger entry per owner.

The columns (:data:`COLUMNS`) are stable; numbers are written as Python writes floats
(full precision), ``inf`` for an infinite epsilon, empty for a value that does not
apply (e.g. the epsilon of a refusal's requested release).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from privfl.privacy.report.build import Report

COLUMNS = (
    "owner_id", "ledger", "ledger_intact", "key_fingerprint", "key_independently_supplied", "sequence", "kind",
    "run_id", "round", "timestamp", "mechanism", "noise_multiplier", "sample_rate", "steps", "clipping_norm",
    "privacy_unit", "delta", "accountant", "epsilon_release", "epsilon_increment", "epsilon_cumulative",
    "epsilon_cumulative_stated", "epsilon_stated_matches", "epsilon_budget", "epsilon_remaining", "purpose",
    "refusal_reason", "update_hash", "entry_hash",
)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def render_csv(report: Report) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for owner in report.owners:
        integrity = owner["integrity"]
        for row in owner["entries"]:
            event = row["event"]
            writer.writerow({k: _cell(v) for k, v in {
                "owner_id": owner["owner_id"], "ledger": owner["source"]["ledger"],
                "ledger_intact": integrity["intact"], "key_fingerprint": row["key_fingerprint"],
                "key_independently_supplied": integrity["key_independently_supplied"],
                "sequence": row["sequence"], "kind": row["kind"], "run_id": row["run_id"], "round": row["round"],
                "timestamp": row["timestamp"], "mechanism": row["mechanism"],
                "noise_multiplier": event["noise_multiplier"], "sample_rate": event["sample_rate"],
                "steps": event["steps"], "clipping_norm": row["clipping_norm"], "privacy_unit": row["privacy_unit"],
                "delta": row["delta"], "accountant": row["accountant"], "epsilon_release": row["epsilon_release"],
                "epsilon_increment": row["epsilon_increment"], "epsilon_cumulative": row["epsilon_cumulative"],
                "epsilon_cumulative_stated": row["epsilon_cumulative_stated"],
                "epsilon_stated_matches": row["epsilon_stated_matches"], "epsilon_budget": row["epsilon_budget"],
                "epsilon_remaining": row["epsilon_remaining"], "purpose": row["purpose"],
                "refusal_reason": row["refusal_reason"], "update_hash": row["update_hash"],
                "entry_hash": row["entry_hash"],
            }.items()})
    return buffer.getvalue()


def write_csv(report: Report, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_csv(report), encoding="utf-8")
    return path
