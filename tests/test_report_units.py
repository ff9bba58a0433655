"""Reports per privacy unit: record-level (DP-SGD at the owner) and owner-level (DP-FedAvg at the coordinator).

An owner's ledger may hold charges of both units; each is a different guarantee with its own budget
(DESIGN principle 4), so the report accounts every owner per unit, never composing the two together, and
shows each unit's spent epsilon under PLD and RDP side by side (PLD does not compose fixed-size sampling:
n/a, not an error).

The ledgers are built with the real ledger API (``OwnerLedger``), the way a client and the coordinator
charge them:

- ``st-mary``: record-level DP-SGD charges (run ``exp-1``, RDP, budget 8) and owner-level charges with
  fixed-size owner sampling, 2 of 20 owners per round (run ``exp-1/owner``, RDP, budget 3.6): its
  owner-level budget is near spent (84%), its record-level one is not;
- ``leeds``: owner-level only, Poisson owner sampling (PLD, budget 6), then an owner-level refusal;
- ``oslo``: record-level only (PLD), as before owners could hold two units.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest

from privfl.cli import main as cli_main
from privfl.privacy.accountants import get_accountant
from privfl.privacy.events import PoissonSubsampledGaussian, SampledWithoutReplacementGaussian
from privfl.privacy.keys import generate_owner_keys, load_private_key
from privfl.privacy.ledger import OwnerLedger, update_hash
from privfl.privacy.ledger.entry import unit_of
from privfl.privacy.ledger.export import read_ledger
from privfl.privacy.report import (
    CSV_COLUMNS,
    SCHEMA_VERSION,
    build_report,
    load_schema,
    render_csv,
    render_html,
    render_json,
    write_pdf,
)
from privfl.privacy.report.accounting import PLD_NO_FIXED_SIZE

EXP = "exp-1"
DELTA = 1e-5
RECORD_EVENT = PoissonSubsampledGaussian(1.1, 0.05, 20)
FIXED_SIZE_EVENT = SampledWithoutReplacementGaussian(2.0, 2, 20, 1)  # 2 of 20 owners drawn per round
POISSON_OWNER_EVENT = PoissonSubsampledGaussian(1.5, 0.2, 1)  # each owner drawn with probability 0.2 per round
REL = 1e-12


def _record(ledger: OwnerLedger, rnd: int, *, accountant: str = "rdp", budget: float = 8.0) -> None:
    ledger.charge(EXP, rnd, RECORD_EVENT, clipping_norm=1.0, delta=DELTA, epsilon_budget=budget,
                  accountant=accountant, purpose="train model", privacy_unit="record",
                  update_hash=update_hash(f"{ledger.owner_id}/{rnd}".encode()))


def _owner_level(ledger: OwnerLedger, rnd: int, event, *, accountant: str, budget: float, **kw) -> None:
    ledger.charge(f"{EXP}/owner", rnd, event, clipping_norm=2.0, delta=DELTA, epsilon_budget=budget,
                  accountant=accountant, purpose="train model", privacy_unit="owner", **kw)


def build_two_unit_ledgers(folder: Path) -> dict:
    keys = folder / "keys"
    private = {o: load_private_key(generate_owner_keys(keys, o).private_key) for o in ("st-mary", "leeds", "oslo")}
    with OwnerLedger.open(folder / "st-mary.db", "st-mary", private["st-mary"]) as ledger:
        for rnd in (1, 2, 3):  # interleaved, as a run with both units writes them
            _owner_level(ledger, rnd, FIXED_SIZE_EVENT, accountant="rdp", budget=3.6)
            _record(ledger, rnd)
    with OwnerLedger.open(folder / "leeds.db", "leeds", private["leeds"]) as ledger:
        for rnd in range(1, 6):
            _owner_level(ledger, rnd, POISSON_OWNER_EVENT, accountant="pld", budget=6.0)
        ledger.refuse(f"{EXP}/owner", 6, "policy: the coordinator asked for less noise than this owner's minimum",
                      delta=DELTA, epsilon_budget=6.0, accountant="pld", event=POISSON_OWNER_EVENT,
                      privacy_unit="owner")
    with OwnerLedger.open(folder / "oslo.db", "oslo", private["oslo"]) as ledger:
        for rnd in (1, 2):
            _record(ledger, rnd, accountant="pld")
    history = {"experiment": "two units", "status": "finished", "config": {"experiment-id": EXP}, "rounds": []}
    (folder / "history.json").write_text(json.dumps(history), encoding="utf-8")
    return {"folder": folder, "keys": keys, "history": folder / "history.json",
            "ledgers": [folder / f"{o}.db" for o in ("leeds", "oslo", "st-mary")]}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    return build_two_unit_ledgers(tmp_path_factory.mktemp("two-units"))


@pytest.fixture(scope="module")
def report(built):
    return build_report(built["ledgers"], history=built["history"], keys=built["keys"])


def _events(path: Path, unit: str) -> list:
    _, entries = read_ledger(path)
    return [e.event for e in entries if e.is_charge and unit_of(e) == unit]


def _close(a, b) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=REL, abs_tol=1e-15)


# --------------------------------------------------------------------------- each unit composed alone


def test_both_units_are_accounted_apart_and_the_ledger_is_intact(report):
    assert report.intact and report.ok, report.problems  # no "these events mix neighbouring relations"
    owner = report.owner("st-mary")
    assert owner.privacy_units == ["record", "owner"]
    assert [u.privacy_unit for u in owner.units] == ["record", "owner"]
    assert owner.privacy_unit == "record"  # the statement's own figures: the record-level unit (as in 1.1)
    assert owner.epsilon_spent == owner.unit("record").epsilon_spent
    assert owner.epsilon_budget == 8.0 and owner.unit("owner").epsilon_budget == 3.6
    assert owner.unit_views()[0].epsilon_spent == owner.epsilon_spent
    # Every stated epsilon matches its own unit's recomputation (the ledger states per unit too).
    assert owner.stated_epsilons_not_matching == [] and owner.stated_epsilons_matching == 6
    for unit in owner.units:
        assert unit.charges == 3 and unit.stated_epsilons_matching == 3 and unit.unsupported_event is None
    record, owner_level = owner.unit("record"), owner.unit("owner")
    assert record.label == "record-level" and "one record" in record.protects
    assert owner_level.label == "owner-level" and "took part at all" in owner_level.protects \
        and "everything it contributed" in owner_level.protects


def test_each_units_epsilon_is_its_own_events_under_pld_and_rdp(built, report):
    checked = 0
    for owner in report.owners:
        path = next(p for p in built["ledgers"] if p.stem == owner.owner_id)
        for unit in owner.units:
            events = _events(path, unit.privacy_unit)
            assert unit.delta == DELTA
            enforced = get_accountant(unit.accountant).epsilon(events, DELTA)
            assert _close(unit.epsilon_spent, enforced)
            assert _close(unit.epsilon_remaining, unit.epsilon_budget - enforced)
            assert _close(unit.budget_used_fraction, enforced / unit.epsilon_budget)
            figures = {a.accountant: a for a in unit.epsilon_by_accountant}
            assert set(figures) == {"pld", "rdp"}
            assert [a.accountant for a in unit.epsilon_by_accountant if a.enforced] == [unit.accountant]
            for name in ("pld", "rdp"):
                accountant = get_accountant(name)
                if accountant.supports(events):
                    assert figures[name].supported
                    assert figures[name].epsilon == accountant.epsilon(events, DELTA), (owner.owner_id, name)
                    checked += 1
                else:
                    assert figures[name].epsilon is None and not figures[name].supported
    assert checked == 7  # st-mary: record pld + rdp, owner rdp; leeds: pld + rdp; oslo: pld + rdp
    # never composed together: the record-level figure is not the two units' composition
    mary = report.owner("st-mary")
    assert mary.unit("record").epsilon_spent < get_accountant("rdp").epsilon(
        _events(built["ledgers"][2], "record") + [PoissonSubsampledGaussian(2.0, 0.1, 3)], DELTA)


def test_entries_state_and_show_the_cumulative_epsilon_of_their_own_unit(built, report):
    owner = report.owner("st-mary")
    _, entries = read_ledger(built["ledgers"][2])
    so_far: dict[str, list] = {"record": [], "owner": []}
    for row, entry in zip(owner.entries, entries):
        unit = unit_of(entry)
        so_far[unit].append(entry.event)
        expected = get_accountant(entry.accountant).epsilon(so_far[unit], entry.delta)
        assert row.privacy_unit == unit and _close(row.epsilon_cumulative, expected)
        assert row.epsilon_stated_matches is True and _close(row.epsilon_remaining, entry.epsilon_budget - expected)
    fixed = next(r for r in owner.entries if r.privacy_unit == "owner")
    assert fixed.event.type == "sampled_without_replacement_gaussian"
    assert (fixed.event.sample_size, fixed.event.population_size, fixed.event.steps) == (2, 20, 1)
    doc = report.document
    assert doc["owners"][2]["entries"][0]["event"] == {
        "type": "sampled_without_replacement_gaussian", "noise_multiplier": 2.0, "sample_rate": 0.1, "steps": 1,
        "sample_size": 2, "population_size": 20}
    runs = {r.run_id: r for r in owner.runs}
    assert runs[EXP].privacy_units == ["record"] and runs[f"{EXP}/owner"].privacy_units == ["owner"]
    assert runs[f"{EXP}/owner"].epsilon_before == 0.0  # its own unit's curve, not the record-level one
    assert runs[EXP].epsilon_after == owner.unit("record").epsilon_spent


def test_fixed_size_owner_level_unit_shows_pld_not_applicable(report, tmp_path):
    unit = report.owner("st-mary").unit("owner")
    pld, rdp = unit.epsilon_under("pld"), unit.epsilon_under("rdp")
    assert pld.epsilon is None and not pld.supported and pld.note == PLD_NO_FIXED_SIZE
    assert PLD_NO_FIXED_SIZE == "n/a (PLD does not support fixed-size sampling)"
    assert rdp.enforced and rdp.epsilon == unit.epsilon_spent
    assert not any("PLD" in p or "pld" in p for p in report.problems)
    html = render_html(report, figures=[])
    table = html[html.index('id="owners"'):html.index('id="refusals"')]
    assert "n/a (PLD does not support fixed-size sampling)" in table
    rows = [r for r in csv.DictReader(io.StringIO(render_csv(report)))
            if r["kind"] in ("charge", "refusal")]  # the entries (the decision rows follow them)
    owner_rows = [r for r in rows if r["owner_id"] == "st-mary" and r["privacy_unit"] == "owner"]
    assert owner_rows and all(r["unit_epsilon_spent_pld"] == "" for r in owner_rows)
    assert all("pld: n/a (PLD does not support fixed-size sampling)" in r["unit_accountant_notes"]
               for r in owner_rows)
    assert all(float(r["unit_epsilon_spent_rdp"]) == rdp.epsilon for r in owner_rows)
    assert all((r["sample_size"], r["population_size"]) == ("2", "20") for r in owner_rows)
    record_rows = [r for r in rows if r["owner_id"] == "st-mary" and r["privacy_unit"] == "record"]
    assert all(float(r["unit_epsilon_spent_pld"]) == report.owner("st-mary").unit("record").epsilon_under(
        "pld").epsilon for r in record_rows)
    assert tuple(rows[0]) == CSV_COLUMNS


# --------------------------------------------------------------------------- owner-level only


def test_an_owner_level_only_ledger(built, report):
    leeds = report.owner("leeds")
    assert leeds.privacy_unit == "owner" and leeds.privacy_units == ["owner"] and len(leeds.units) == 1
    unit = leeds.units[0]
    events = _events(built["ledgers"][0], "owner")
    assert len(events) == 5 and unit.charges == 5 and unit.refusals == 1
    # the statement's own figures describe its only unit
    assert leeds.epsilon_spent == unit.epsilon_spent and leeds.epsilon_budget == 6.0 == unit.epsilon_budget
    assert leeds.accountant == "pld" and leeds.outlook.privacy_unit == "owner"
    assert _close(leeds.epsilon_spent, get_accountant("pld").epsilon(events, DELTA))
    figures = {a.accountant: a for a in unit.epsilon_by_accountant}
    assert figures["pld"].enforced and figures["pld"].epsilon == get_accountant("pld").epsilon(events, DELTA)
    assert figures["rdp"].epsilon == get_accountant("rdp").epsilon(events, DELTA)
    assert figures["pld"].epsilon < figures["rdp"].epsilon  # PLD is the tighter of the two
    refusal = leeds.refused_releases[0]
    assert _close(refusal.epsilon_spent_before, unit.epsilon_spent)
    assert "owner-level" in report.summary.in_words and "took part at all" in report.summary.in_words


# --------------------------------------------------------------------------- who is near budget, per unit


def test_an_owner_near_its_owner_level_budget_is_flagged_naming_the_unit(report):
    mary = report.owner("st-mary")
    record, owner_level = mary.unit("record"), mary.unit("owner")
    assert record.budget_status == "within" and owner_level.budget_status == "near"
    assert mary.budget_status == "within"  # the statement's own (record-level) figures, as in 1.1
    assert mary.budget_status_all_units == "near" and mary.budget_used_fraction_max_unit == "owner"
    assert _close(mary.budget_used_fraction_max, owner_level.budget_used_fraction)
    alerts = report.status.budget_alerts
    assert [(a.owner_id, a.privacy_unit, a.level) for a in alerts] == [("st-mary", "owner", "near")]
    assert _close(alerts[0].epsilon_spent, owner_level.epsilon_spent) and alerts[0].epsilon_budget == 3.6
    assert alerts[0].rounds_left == owner_level.outlook.rounds_left
    headline = report.status.headline
    assert "Near budget" in headline and "owner-level budget: st-mary (84%)" in headline
    assert any("owner-level budget: st-mary" in w for w in report.warnings)
    assert report.summary.owners_near_budget == ["st-mary"]
    assert report.summary.owners_by_budget_used[0] == "st-mary"  # ordered by its owner-level share
    assert report.owners_by_budget_used()[0].owner_id == "st-mary"
    units = {u.privacy_unit: u for u in report.summary.units}
    assert units["owner"].owners_near_budget == ["st-mary"] and units["record"].owners_near_budget == []
    assert units["owner"].owners == 2 and units["record"].owners == 2
    html = render_html(report, figures=[])
    banner = html[: html.index("<h1>")]
    assert "owner-level budget: st-mary (84%)" in banner


def test_an_owner_over_its_owner_level_budget_is_a_problem_naming_the_unit(tmp_path):
    key = load_private_key(generate_owner_keys(tmp_path / "keys", "over").private_key)
    with OwnerLedger.open(tmp_path / "over.db", "over", key) as ledger:
        _record(ledger, 1)
        for rnd in (1, 2, 3):  # the coordinator's owner-level rounds, charged past the budget (not enforced)
            _owner_level(ledger, rnd, FIXED_SIZE_EVENT, accountant="rdp", budget=2.5, enforce_budget=False)
    report = build_report(tmp_path / "over.db", keys=tmp_path / "keys")
    owner = report.owner("over")
    assert owner.unit("owner").over_budget and not owner.over_budget  # the record-level unit is within
    assert report.intact and not report.ok
    assert any("owner over: owner-level epsilon" in p and "exceeds the owner-level budget 2.5" in p
               for p in report.problems)
    assert report.summary.owners_over_budget == ["over"]
    assert "Over budget: owner-level budget: over (" in report.status.headline


# --------------------------------------------------------------------------- what is next, this experiment


def test_rounds_left_per_unit_fit_its_budget_and_one_more_does_not(built, report):
    checked = 0
    for owner in report.owners:
        path = next(p for p in built["ledgers"] if p.stem == owner.owner_id)
        for unit in owner.units:
            events = _events(path, unit.privacy_unit)
            latest = events[-1]
            outlook = unit.outlook
            assert outlook.privacy_unit == unit.privacy_unit and not outlook.at_least
            k = outlook.rounds_left
            accountant = get_accountant(unit.accountant)
            after_k = accountant.epsilon(events + [latest] * k, DELTA)
            after_k1 = accountant.epsilon(events + [latest] * (k + 1), DELTA)
            assert after_k <= unit.epsilon_budget < after_k1, (owner.owner_id, unit.privacy_unit, k)
            assert _close(outlook.epsilon_after, after_k) and _close(outlook.epsilon_after_one_more, after_k1)
            checked += 1
    assert checked == 4
    mary = report.owner("st-mary")
    assert mary.unit("owner").outlook.rounds_left < mary.unit("record").outlook.rounds_left
    assert "2 of 20 sampled" in mary.unit("owner").outlook.note
    assert "owner-level budget of 3.6" in mary.unit("owner").outlook.note
    assert mary.outlook.rounds_left == mary.unit("record").outlook.rounds_left  # the statement's own: record


def test_this_experiments_share_per_unit(built, report):
    assert report.summary.experiment_id == EXP
    mary = report.owner("st-mary")
    record, owner_level = mary.unit("record").experiment, mary.unit("owner").experiment
    assert (record.run_id, record.privacy_unit, record.charges) == (EXP, "record", 3)
    assert (owner_level.run_id, owner_level.privacy_unit, owner_level.charges) == (f"{EXP}/owner", "owner", 3)
    assert _close(record.epsilon, mary.unit("record").epsilon_spent)  # every charge of the unit is this run's
    assert _close(owner_level.epsilon, mary.unit("owner").epsilon_spent)
    leeds = report.owner("leeds").units[0].experiment
    assert leeds.charges == 5 and leeds.refusals == 1 and f"(run {EXP}/owner)" in leeds.note
    assert "owner-level epsilon up to" in report.summary.in_words


# --------------------------------------------------------------------------- the document and every format


def test_document_schema_and_back_compatible_fields(report, built):
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed; the schema is not checked")
    doc = json.loads(render_json(report))
    jsonschema.Draft202012Validator(load_schema()).validate(doc)
    assert doc["schema_version"] == SCHEMA_VERSION == "1.2"
    mary = next(o for o in doc["owners"] if o["owner_id"] == "st-mary")
    # 1.1 fields still there, describing the record-level unit; the units list holds both
    assert mary["privacy_unit"] == "record" and mary["epsilon_spent"] == mary["units"][0]["epsilon_spent"]
    assert [u["privacy_unit"] for u in mary["units"]] == ["record", "owner"]
    pld = next(a for a in mary["units"][1]["epsilon_by_accountant"] if a["accountant"] == "pld")
    assert pld == {"accountant": "pld", "epsilon": None, "enforced": False, "supported": False,
                   "note": "n/a (PLD does not support fixed-size sampling)"}
    assert doc["status"]["budget_alerts"][0]["privacy_unit"] == "owner"
    assert [m["privacy_unit"] for m in doc["plain_words"]["privacy_units"]] == ["record", "owner"]
    assert "PLD" in doc["plain_words"]["accountants"] and "RDP" in doc["plain_words"]["accountants"]
    statement = report.for_owner("st-mary")
    assert statement.owner("st-mary").units == report.owner("st-mary").units
    assert [a.privacy_unit for a in statement.status.budget_alerts] == ["owner"]


def test_the_command_reports_a_ledger_with_both_units(built, tmp_path, capsys):
    ledger = built["folder"] / "st-mary.db"
    code = cli_main(["report", str(ledger), "--public-key", str(built["keys"] / "st-mary.pub"), "--format", "json",
                     "--jobs", "1", "--strict"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    doc = json.loads(captured.out)
    assert doc["status"]["intact"] and doc["status"]["ok"]
    assert "mix neighbouring relations" not in captured.out + captured.err
    units = {u["privacy_unit"]: u for u in doc["owners"][0]["units"]}
    assert units["record"]["epsilon_spent"] is not None and units["owner"]["epsilon_spent"] is not None
    assert "owner-level budget: st-mary" in doc["status"]["headline"]
    # several ledgers, helper processes: the same figures
    out = tmp_path / "r.json"
    assert cli_main(["report", *map(str, built["ledgers"]), "--keys-dir", str(built["keys"]), "--format", "json",
                     "--out", str(out), "--jobs", "2"]) == 0
    doc2 = json.loads(out.read_text())
    mary = next(o for o in doc2["owners"] if o["owner_id"] == "st-mary")
    assert mary["units"] == doc["owners"][0]["units"]
    # helper processes (PLD figures composed in a helper of their own) and one process: the same document
    parallel = build_report(built["ledgers"], history=built["history"], keys=built["keys"], workers=2)
    alone = build_report(built["ledgers"], history=built["history"], keys=built["keys"], workers=1)
    assert parallel.document["owners"] == alone.document["owners"]
    assert parallel.document["status"] == alone.document["status"]


def test_html_and_pdf_show_both_units_side_by_side(report, tmp_path):
    html = render_html(report)
    table = html[html.index('id="owners"'):html.index('id="refusals"')]
    assert "<th>&epsilon; PLD</th><th>&epsilon; RDP</th>" in table
    assert table.count('rowspan="2"') == 3  # st-mary: owner id, purposes, ledger span its two unit rows
    assert table.count("<td>record-level</td>") == 2 and table.count("<td>owner-level</td>") == 2
    assert "<b>" in table and "*" in table  # the enforced accountant marked
    detail = html[html.index('id="detail"'):]
    assert "owner-level: PLD and RDP" in detail and "record-level: what is next" in detail
    assert "What each privacy unit protects" in html and "whether the institution took part at all" in html
    assert html.count('src="data:image/png;base64,') >= 2
    pdf = write_pdf(report, tmp_path / "units.pdf")
    assert pdf.read_bytes().startswith(b"%PDF-")
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True,
                              timeout=60).stdout
        assert "owner-level budget: st-mary (84%)" in text.replace("\n", " ")
        assert "highest owner-level" in text and "PLD" in text and "RDP" in text
        assert "n/a (PLD does not support fixed-size sampling)" in text.replace("\n", " ")


def test_record_level_only_reports_keep_their_1_1_figures(report):
    oslo = report.owner("oslo")
    assert oslo.privacy_unit == "record" and [u.privacy_unit for u in oslo.units] == ["record"]
    unit = oslo.units[0]
    for name in ("accountant", "delta", "epsilon_spent", "epsilon_budget", "epsilon_remaining",
                 "budget_used_fraction", "budget_status", "outlook", "experiment"):
        assert getattr(oslo, name) == getattr(unit, name), name


def test_a_thousand_owners_with_both_units_render_compactly(report, tmp_path):
    """Every owner with a record-level and an owner-level unit: a row per unit, still bounded at 1,000 owners."""
    from dataclasses import replace

    from privfl.privacy.report import html_report, pdf_report
    from privfl.privacy.report.build import _assemble

    source = report.owner("st-mary")
    owners = [replace(source, owner_id=f"site-{i:04d}") for i in range(1000)]
    context = report._context
    big = _assemble(context, owners, context.files, scope_owner=None)
    alerts = big.status.budget_alerts
    assert len(alerts) == 1000 and {a.privacy_unit for a in alerts} == {"owner"}
    assert "owner-level budget: site-0000 (84%)" in big.status.headline and "and 992 more" in big.status.headline
    html = html_report.render_html(big)
    table = html[html.index('id="owners"'):html.index('id="refusals"')]
    assert table.count("<td>owner-level</td>") == 1000 and table.count("<td>record-level</td>") == 1000
    assert html.count('<details class="owner"') == 1000 and len(html) < 25_000_000
    pdf = pdf_report.write_pdf(big, tmp_path / "thousand-units.pdf")
    pages = pdf.read_bytes().count(b"/Type /Page ")
    assert pages < 80, pages  # 300 owners listed (a row per unit), detail for the 20 needing attention
