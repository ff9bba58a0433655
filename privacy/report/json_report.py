"""The report as JSON: the model's document (``docs/report-schema.md``, ``report-schema.json``).

The document carries its own content hash (and, when the report was signed, an
Ed25519 signature over it): see :mod:`.signing` for the canonical form.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from privfl.privacy.report.model import Report

SCHEMA_FILE = "report-schema.json"


def schema_path() -> Path:
    """The JSON Schema (draft 2020-12) of the report document, shipped with privfl."""
    return Path(__file__).resolve().parent / SCHEMA_FILE


def load_schema() -> dict[str, Any]:
    return json.loads(schema_path().read_text(encoding="utf-8"))


def render_json(report: Report) -> str:
    return json.dumps(report.document, indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def write_json(report: Report, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_json(report), encoding="utf-8")
    return path
