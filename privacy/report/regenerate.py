"""``--regenerate``: rebuild a run's report from its ledgers and compare it with the report as it was handed over.

Why: a signature says who produced a report, not that its figures are right.  Anyone
holding the run folder (and its trust root) can rebuild the report with the same code
path the run used (:func:`privfl.privacy.report.run.build_run_report`, the one audit
included) and see whether any figure, verdict or problem differs.  Fields that differ
by nature (when and by what it was generated, the hash and the signature) are left out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VOLATILE = ("generated_at", "generator", "content_hash", "signature")


def differences(given: Any, rebuilt: Any, where: str = "", limit: int = 10) -> list[str]:
    """Paths (``owners[0].epsilon_spent``) where two documents differ, at most ``limit``."""
    found: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if len(found) >= limit:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                if not path and key in VOLATILE:
                    continue
                walk(a.get(key, "<missing>"), b.get(key, "<missing>"), f"{path}.{key}" if path else key)
        elif isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                found.append(f"{path}: {len(a)} item(s) in the report, {len(b)} rebuilt")
                return
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{path}[{i}]")
        elif a != b:
            found.append(f"{path}: the report says {json.dumps(a)[:80]}, rebuilt {json.dumps(b)[:80]}")

    walk(given, rebuilt, where)
    return found


def regenerate_and_compare(report_json: str | Path, run_dir: str | Path, *, federation_dir=None,
                           coordinator_dir=None) -> tuple[bool, str]:
    """Rebuild the report of ``run_dir`` (narrowed to the owner the report is about) and compare; ``(same, why)``."""
    from privfl.privacy.report.run import build_run_report

    given = json.loads(Path(report_json).read_text(encoding="utf-8"))
    owner = (given.get("scope") or {}).get("owner_id")
    rebuilt = build_run_report(run_dir, owner=owner, federation_dir=federation_dir, coordinator_dir=coordinator_dir,
                               title=given.get("title"))
    found = differences(given, rebuilt.document)
    if not found:
        return True, f"rebuilt from the ledgers of {run_dir}: every figure, verdict and problem is the same"
    return False, "rebuilt from the ledgers, the report differs: " + "; ".join(found)


__all__ = ["differences", "regenerate_and_compare"]
