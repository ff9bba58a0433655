"""An empirical audit's result beside the claimed epsilons: a lower bound, not a guarantee.

``privfl audit`` writes ``<run-dir>/audit/result.json`` (keys ``audit``, ``experiment``,
``units``: ``{"record"|"owner": {"claimed_epsilon", "lower_bound", "confidence", ...}}``).
The reader is tolerant: a unit without a lower bound (owner-level audits may not exist yet)
is shown as not audited, unknown keys are ignored, a file that cannot be read is named, never
fatal.  The meaning is stated with it: an empirical lower bound says the mechanism leaks at
least that much with the stated confidence; it never shows that it leaks at most the claim.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from privfl.privacy.report.model import EmpiricalAudit, EmpiricalAuditUnit, unit_label
from privfl.privacy.report.words import fig

AUDIT_DIR = "audit"
RESULT_FILE = "result.json"
NOTE = ("An empirical audit trains with planted canary records and measures how well an attacker tells the planted "
        "ones from the others: its lower bound means the mechanism leaks at least that much (at the stated "
        "confidence). It is not a guarantee: a lower bound at or below the claim is consistent with the claim, never "
        "a proof of it; a lower bound above the claim means the claimed epsilon is wrong.")


def result_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / AUDIT_DIR / RESULT_FILE


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        float(value)) else None


def read_empirical_audit(source: str | Path | Mapping[str, Any] | None) -> EmpiricalAudit | None:
    """The audit result (a path or parsed dict); None when there is none."""
    if source is None:
        return None
    where = "given"
    if not isinstance(source, Mapping):
        path = Path(source)
        if not path.is_file():
            return None
        where = str(path)
        try:
            source = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            return EmpiricalAudit(where, None, [], f"the audit result could not be read ({err}): no empirical "
                                                   "evidence")
    units = []
    for name, values in sorted((source.get("units") or {}).items()):
        if not isinstance(values, Mapping):
            continue
        claimed, bound = _number(values.get("claimed_epsilon")), _number(values.get("lower_bound"))
        confidence = _number(values.get("confidence"))
        exceeds = claimed is not None and bound is not None and bound > claimed
        estimate = _number(values.get("estimate"))
        if bound is None and estimate is not None:
            meaning = (f"{unit_label(name)}: empirical estimate {fig(estimate)} beside the claim {fig(claimed)}: an "
                       "estimate, not a bound"
                       + (" -- above the claim: a sign (not a proof) that the mechanism does not give what the ledgers "
                          "say" if claimed is not None and estimate > claimed else ""))
        elif bound is None:
            meaning = f"{unit_label(name)}: not audited empirically (no lower bound)"
        elif exceeds:
            meaning = (f"{unit_label(name)}: THE LOWER BOUND {fig(bound)} EXCEEDS THE CLAIM {fig(claimed)}: the "
                       "mechanism does not give what the ledgers say")
        else:
            meaning = (f"{unit_label(name)}: the run leaks at least epsilon {fig(bound)}"
                       + (f" with {fig(confidence * 100)}% confidence" if confidence is not None else "")
                       + f", consistent with the claim {fig(claimed)} (not a proof of it)")
        units.append(EmpiricalAuditUnit(name, claimed, bound, confidence, exceeds, meaning, estimate))
    return EmpiricalAudit(where, source.get("experiment"), units, NOTE)


def audited(audit: EmpiricalAudit | None) -> bool:
    """An audit ran and produced at least one lower bound."""
    return audit is not None and any(u.lower_bound is not None for u in audit.units)


__all__ = ["NOTE", "audited", "read_empirical_audit", "result_path"]
