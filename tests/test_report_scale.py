"""A report on a 100-owner, 50-round federation ledger is produced (and its time printed).

No wall-clock bound is asserted here (timings belong in benchmarks: ``python -m
bench.report_bench``); this checks that the report of a federation this size completes,
verifies, and still recomputes every owner's figures correctly.

Building the ledger takes several seconds (5,000 signed, fsynced entries), so it is
cached in pytest's cache folder, keyed by the source of the code that writes ledgers: a
change there rebuilds it.  ``pytest -p no:cacheprovider`` builds it afresh each time.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from pathlib import Path

import pytest

import privfl
from privfl.privacy.accountants import get_accountant
from privfl.privacy.ledger.export import read_ledger
from privfl.privacy.report import build_report, write_html, write_json
from privfl.privacy.report.synthetic import build_synthetic_federation

OWNERS, ROUNDS = 100, 50


def _source_key() -> str:
    root = Path(privfl.__file__).resolve().parent.parent
    digest = hashlib.sha256(f"{OWNERS}x{ROUNDS}".encode())
    for pattern in ("privacy/ledger/*.py", "privacy/accountants/*.py", "privacy/events.py", "privacy/keys.py",
                    "protos/ledger.proto", "privacy/report/synthetic.py"):
        for path in sorted(root.glob(pattern)):
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def _build(into: Path) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="privfl-report-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    try:  # owners' ledgers on a RAM disk where there is one: 5,000 fsyncs
        federation = build_synthetic_federation(scratch, OWNERS, ROUNDS, owner_ledgers=False)
        (into / "keys").mkdir(parents=True, exist_ok=True)
        shutil.copy2(federation.federation_ledger, into / "federation.db")
        for public in federation.keys.glob("*.pub"):
            shutil.copy2(public, into / "keys" / public.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture(scope="session")
def large_federation(request, tmp_path_factory) -> Path:
    cache = getattr(request.config, "cache", None)
    if cache is None:
        folder = tmp_path_factory.mktemp("large-federation")
        _build(folder)
        return folder
    folder = Path(cache.mkdir("privfl-report-100x50"))
    key = _source_key()
    marker = folder / "source.sha256"
    if not (marker.is_file() and marker.read_text() == key and (folder / "federation.db").is_file()):
        shutil.rmtree(folder)
        folder.mkdir()
        _build(folder)
        marker.write_text(key)
    return folder


def test_report_for_100_owners_and_50_rounds(large_federation, tmp_path):
    start = time.perf_counter()
    report = build_report(large_federation / "federation.db", keys=large_federation / "keys")
    built = time.perf_counter() - start
    write_html(report, tmp_path / "report.html")
    write_json(report, tmp_path / "report.json")
    total = time.perf_counter() - start
    print(f"\nreport of {OWNERS} owners x {ROUNDS} rounds: built in {built:.2f} s, with HTML and JSON "
          f"{total:.2f} s (timings: python -m bench.report_bench)")
    assert report.intact and report.ok, report.problems
    assert len(report.owners) == OWNERS
    summary = report.document["summary"]
    assert summary["entries"] == summary["charges"] + summary["refusals"] > OWNERS * ROUNDS * 0.8
    assert summary["refusals"] == len(summary["owners_with_refusals"]) > 0  # small owners ran out
    # Spot-check a few owners' figures against a from-scratch recomputation at this scale.
    _, entries = read_ledger(large_federation / "federation.db")
    for owner in (report.owners[0], report.owners[37], max(report.owners, key=lambda o: o["epsilon_spent"])):
        events = [e.event for e in entries if e.owner_id == owner["owner_id"] and e.is_charge]
        expected = get_accountant(owner["accountant"]).epsilon(events, owner["delta"])
        assert owner["epsilon_spent"] == pytest.approx(expected, rel=1e-9)
        assert owner["epsilon_remaining"] == pytest.approx(owner["epsilon_budget"] - expected, rel=1e-9)
    assert (tmp_path / "report.html").stat().st_size > 100_000
