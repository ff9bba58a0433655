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
from dataclasses import replace
from pathlib import Path

import pytest
from privfl.privacy.accountants import get_accountant
from privfl.privacy.ledger.export import read_ledger
from privfl.privacy.report import build_report, write_html, write_json
from privfl.privacy.report.synthetic import build_synthetic_federation

import privfl

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
    assert report.intact, report.problems
    assert len(report.owners) == OWNERS
    summary = report.summary
    assert summary.entries == summary.charges + summary.refusals > OWNERS * ROUNDS * 0.8
    assert summary.refusals == len(summary.owners_with_refusals) > 0  # small owners ran out
    assert set(summary.owners_with_refusals) <= set(summary.owners_near_budget) | set(summary.owners_over_budget)
    # Spot-check a few owners' figures against a from-scratch recomputation at this scale.
    _, entries = read_ledger(large_federation / "federation.db")
    for owner in (report.owners[0], report.owners[37], max(report.owners, key=lambda o: o.epsilon_spent)):
        events = [e.event for e in entries if e.owner_id == owner.owner_id and e.is_charge]
        expected = get_accountant(owner.accountant).epsilon(events, owner.delta)
        assert owner.epsilon_spent == pytest.approx(expected, rel=1e-9)
        assert owner.epsilon_remaining == pytest.approx(owner.epsilon_budget - expected, rel=1e-9)
    assert (tmp_path / "report.html").stat().st_size > 100_000
    # The same report with helper processes (what the command uses) is the same document.
    parallel = build_report(large_federation / "federation.db", keys=large_federation / "keys", workers=2)
    strip = ("generated_at", "content_hash", "signature")
    assert {k: v for k, v in parallel.document.items() if k not in strip} == \
        {k: v for k, v in report.document.items() if k not in strip}


def _thousand_owners(tmp_path) -> object:
    """A 1,000-owner report: the small run's owners' statements, cloned under new ids with varied spend."""
    from tests.test_report import build_small_run

    run = build_small_run(tmp_path / "run")
    base = build_report(sorted(run["ledgers"].glob("*.db")), history=run["history"], keys=run["keys"])
    owners = []
    for i in range(1000):
        source = base.owners[i % len(base.owners)]
        used = (i % 120) / 100  # 0% .. 119%: some within, some near, some over
        spent = source.epsilon_budget * used
        status = "over" if used > 1 else ("near" if used >= 0.8 else "within")
        owners.append(replace(source, owner_id=f"site-{i:04d}", epsilon_spent=spent, budget_used_fraction=used,
                              epsilon_remaining=source.epsilon_budget - spent, over_budget=used > 1,
                              budget_status=status))
    context = base._context
    context.all_owners = owners
    from privfl.privacy.report.build import _assemble

    return _assemble(context, owners, context.files, scope_owner=None)


def test_a_thousand_owners_render_compactly(tmp_path):
    from privfl.privacy.report import html_report, pdf_report

    report = _thousand_owners(tmp_path)
    assert len(report.owners) == 1000
    alerts = report.status.budget_alerts
    assert alerts[0].level == "over" and [a.budget_used_fraction for a in alerts] == \
        sorted((a.budget_used_fraction for a in alerts), reverse=True)
    html = html_report.render_html(report)
    assert html.count('<details class="owner"') == 1000 and ' open>' not in html.split('id="detail"')[1][:2000]
    limit = html_report.entry_limit(1000)
    assert limit == html_report.MIN_ENTRIES_PER_OWNER
    rows = html.split('id="detail"')[1].count("<tr")
    assert rows <= 1000 * (limit + 3)  # entries capped per owner (plus header and runs rows)
    assert "the JSON and CSV versions of this report hold every entry" in html
    assert len(html) < 25_000_000
    pdf = pdf_report.write_pdf(report, tmp_path / "thousand.pdf")
    pages = pdf.read_bytes().count(b"/Type /Page ")
    assert pages < 60, pages  # summary tables capped, detail only for owners needing attention
