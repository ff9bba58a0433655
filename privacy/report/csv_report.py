"""The report as CSV for spreadsheets: one row per ledger entry per owner.

The columns (:data:`COLUMNS`) are stable (new ones are only appended); numbers are
written as Python writes floats (full precision), ``inf`` for an infinite epsilon,
empty for a value that does not apply (e.g. the epsilon of a refusal's requested
release).  The CSV always holds every entry, however many the HTML and PDF list.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from privfl.privacy.report.model import Report

COLUMNS = (
    "owner_id", "ledger", "ledger_intact", "key_fingerprint", "key_independently_supplied", "sequence", "kind",
    "run_id", "round", "timestamp", "mechanism", "noise_multiplier", "sample_rate", "steps", "clipping_norm",
    "privacy_unit", "delta", "accountant", "epsilon_release", "epsilon_increment", "epsilon_cumulative",
    "epsilon_cumulative_stated", "epsilon_stated_matches", "epsilon_budget", "epsilon_remaining", "purpose",
    "refusal_reason", "update_hash", "entry_hash", "purpose_declared",
)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def render_csv(report: Report) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for owner in report.owners:
        integrity = owner.integrity
        for r in owner.entries:
            e = r.event
            writer.writerow([_cell(v) for v in (
                owner.owner_id, owner.source.ledger, integrity.intact, r.key_fingerprint,
                integrity.key_independently_supplied, r.sequence, r.kind, r.run_id, r.round, r.timestamp,
                r.mechanism, e.noise_multiplier, e.sample_rate, e.steps, r.clipping_norm, r.privacy_unit, r.delta,
                r.accountant, r.epsilon_release, r.epsilon_increment, r.epsilon_cumulative,
                r.epsilon_cumulative_stated, r.epsilon_stated_matches, r.epsilon_budget, r.epsilon_remaining,
                r.purpose, r.refusal_reason, r.update_hash, r.entry_hash, r.purpose_declared)])
    return buffer.getvalue()


def write_csv(report: Report, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_csv(report), encoding="utf-8")
    return path
