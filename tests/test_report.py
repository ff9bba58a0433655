"""Privacy budget reports: every figure recomputed from the ledgers, tampering reported, formats.

The ledgers here are built with the real ledger APIs (``OwnerLedger``, ``FederationLedger``):
three owners, one of them with runs in other federations and a second accountant, one that
runs out of budget and refuses, a federation ledger holding the receipts of one run, and the
run's history.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from privfl.cli import main as cli_main
from privfl.privacy.accountants import get_accountant
from privfl.privacy.events import PoissonSubsampledGaussian as Event
from privfl.privacy.keys import generate_owner_keys, load_private_key, load_public_key
from privfl.privacy.ledger import BudgetExceeded, FederationLedger, OwnerLedger, update_hash
from privfl.privacy.ledger.export import read_ledger
from privfl.privacy.report import (
    CSV_COLUMNS,
    SCHEMA_VERSION,
    ProcessingRecordError,
    build_report,
    example_path,
    load_processing_record,
    load_schema,
    render_csv,
    render_html,
    render_json,
    write_run_report,
)

RUN = "run-1"
REL = 1e-9  # recomputation here and in the report use the same accountants: agree to rounding


# --------------------------------------------------------------------------- the ledgers


def _charge_or_refuse(ledger: OwnerLedger, run: str, rnd: int, event: Event, *, budget: float, delta: float,
                      accountant: str = "rdp", purpose: str = "train heart model v1"):
    try:
        return ledger.charge(run, rnd, event, clipping_norm=1.0, delta=delta, epsilon_budget=budget,
                             accountant=accountant, purpose=purpose, update_hash=update_hash(f"{run}/{rnd}".encode()))
    except BudgetExceeded as err:
        return ledger.refuse(run, rnd, f"would exceed the budget: {err}", delta=delta, epsilon_budget=budget,
                             accountant=accountant, event=event, purpose=purpose, clipping_norm=1.0)


def build_small_run(folder: Path) -> dict:
    """A run folder (ledgers/, keys/, history.json) with three owners; returns what was built."""
    ledgers, keys = folder / "ledgers", folder / "keys"
    private = {o: load_private_key(generate_owner_keys(keys, o).private_key)
               for o in ("hospital-a", "hospital-b", "clinic-c")}
    sent: dict[int, dict[str, str]] = {}  # round -> owner -> "charge" | "refusal"
    with FederationLedger.open(ledgers / "federation.db") as federation:
        for owner, key in private.items():
            federation.register_owner(owner, key.public_key())
        # hospital-a: two releases for another federation first, then run-1, then two PLD-accounted releases.
        with OwnerLedger.open(ledgers / "hospital-a.db", "hospital-a", private["hospital-a"]) as a:
            for rnd in (1, 2):
                _charge_or_refuse(a, "other-federation", rnd, Event(1.5, 0.02, 40), budget=10.0, delta=1e-5)
            for rnd in range(1, 5):
                entry = _charge_or_refuse(a, RUN, rnd, Event(1.2 + 0.1 * (rnd % 2), 0.04, 25), budget=10.0,
                                          delta=1e-5)
                federation.append_received(entry.signed_bytes())
                sent.setdefault(rnd, {})["hospital-a"] = entry.kind
            for rnd in (1, 2):
                _charge_or_refuse(a, "run-2", rnd, Event(2.0, 0.05, 30), budget=10.0, delta=1e-5, accountant="pld",
                                  purpose="train heart model v2")
        # hospital-b: a small budget: refuses in round 3, and the server stops asking.
        with OwnerLedger.open(ledgers / "hospital-b.db", "hospital-b", private["hospital-b"]) as b:
            for rnd in range(1, 5):
                entry = _charge_or_refuse(b, RUN, rnd, Event(1.2, 0.1, 10), budget=3.2, delta=1e-5)
                federation.append_received(entry.signed_bytes())
                sent.setdefault(rnd, {})["hospital-b"] = entry.kind
                if not entry.is_charge:
                    break
        # clinic-c: another delta.
        with OwnerLedger.open(ledgers / "clinic-c.db", "clinic-c", private["clinic-c"]) as c:
            for rnd in range(1, 5):
                entry = _charge_or_refuse(c, RUN, rnd, Event(1.1, 0.1, 12), budget=12.0, delta=1e-6)
                federation.append_received(entry.signed_bytes())
                sent.setdefault(rnd, {})["clinic-c"] = entry.kind
    rounds = [{"round": 0, "test_loss": 2.3, "test_accuracy": 0.1, "participants": [], "refused": {}}]
    for rnd in range(1, 5):
        trained = sorted(o for o, k in sent[rnd].items() if k == "charge")
        evaluated = {o: {"loss": 1.0 / rnd + i / 10, "accuracy": 0.5 + 0.05 * rnd + i / 100, "num_examples": 40 + i}
                     for i, o in enumerate(trained)}
        rounds.append({
            "round": rnd, "test_loss": 2.0 / rnd, "test_accuracy": 0.5 + 0.1 * rnd, "participants": trained,
            "refused": {o: "budget" for o, k in sent[rnd].items() if k == "refusal"},
            "federated_evaluation": {
                "loss": sum(e["loss"] * e["num_examples"] for e in evaluated.values())
                / sum(e["num_examples"] for e in evaluated.values()),
                "accuracy": sum(e["accuracy"] * e["num_examples"] for e in evaluated.values())
                / sum(e["num_examples"] for e in evaluated.values()),
                "num_examples": sum(e["num_examples"] for e in evaluated.values()), "owners": evaluated}})
    history = {"experiment": "report-test", "status": "finished", "final_test_accuracy": 0.9,
               "config": {"experiment-id": RUN, "dataset": "digits", "model": "logreg", "dp": True,
                          "epsilon-budget": 10.0, "delta": 1e-5, "accountant": "rdp"}, "owners": {}, "rounds": rounds}
    (folder / "history.json").write_text(json.dumps(history), encoding="utf-8")
    return {"folder": folder, "ledgers": ledgers, "keys": keys, "history": folder / "history.json",
            "owners": sorted(private), "sent": sent}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> dict:
    return build_small_run(tmp_path_factory.mktemp("report-run"))


@pytest.fixture()
def run_copy(small_run, tmp_path) -> dict:
    """A private copy of the run folder, for tests that tamper with it."""
    folder = tmp_path / "run"
    shutil.copytree(small_run["folder"], folder)
    return {**small_run, "folder": folder, "ledgers": folder / "ledgers", "keys": folder / "keys",
            "history": folder / "history.json"}


def _all_ledgers(run: dict) -> list[Path]:
    return sorted(run["ledgers"].glob("*.db"))


@pytest.fixture(scope="module")
def full_report(small_run):
    return build_report(_all_ledgers(small_run), history=small_run["history"], keys=small_run["keys"])


def _edit(path: Path, sql: str, args: tuple = ()) -> None:
    """Edit a ledger file the way an attacker with write access would: guards dropped, then put back."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        triggers = db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall()
        for name, _ in triggers:
            db.execute(f"DROP TRIGGER {name}")
        db.execute(sql, args)
        for _, statement in triggers:
            db.execute(statement)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


def _flip_byte(path: Path, owner: str, sequence: int, offset: int = -20) -> None:
    db = sqlite3.connect(path)
    entry = db.execute("SELECT entry FROM entries WHERE owner_id = ? AND sequence = ?", (owner, sequence)).fetchone()[0]
    db.close()
    changed = bytearray(entry)
    changed[offset] ^= 0x01
    _edit(path, "UPDATE entries SET entry = ? WHERE owner_id = ? AND sequence = ?", (bytes(changed), owner, sequence))


def _close(a, b) -> bool:
    if a == "inf" or b == "inf" or a is None or b is None:
        return a == b
    return math.isclose(a, b, rel_tol=REL, abs_tol=1e-12)


# --------------------------------------------------------------------------- every figure recomputed


def test_every_figure_is_recomputed_from_the_ledger_events(small_run, full_report):
    doc = json.loads(render_json(full_report))  # what a reader of the JSON gets
    assert doc["status"]["intact"] and doc["status"]["ok"], doc["status"]
    assert [o["owner_id"] for o in doc["owners"]] == small_run["owners"]
    for owner in doc["owners"]:
        meta, entries = read_ledger(small_run["ledgers"] / f"{owner['owner_id']}.db")  # the ledger itself
        assert owner["source"]["ledger_kind"] == "owner" and owner["source"]["chain_complete"]
        assert len(owner["entries"]) == len(entries)
        charges: list[Event] = []
        previous: dict[tuple[str, float], float] = {}
        for row, entry in zip(owner["entries"], entries):
            assert (row["sequence"], row["kind"], row["run_id"], row["round"]) == \
                (entry.sequence, entry.kind, entry.run_id, entry.round)
            assert (row["accountant"], row["delta"], row["epsilon_budget"]) == \
                (entry.accountant, entry.delta, entry.epsilon_budget)
            event = entry.event
            assert row["event"] == {"type": "poisson_subsampled_gaussian", "noise_multiplier": event.noise_multiplier,
                                    "sample_rate": event.sample_rate, "steps": event.steps}
            accountant = get_accountant(entry.accountant)
            before = accountant.epsilon(charges, entry.delta)
            if entry.is_charge:
                charges.append(event)
                assert _close(row["epsilon_release"], accountant.epsilon([event], entry.delta))
            else:
                assert row["epsilon_release"] is None and row["epsilon_increment"] is None
            cumulative = accountant.epsilon(charges, entry.delta)  # from scratch, not incrementally
            assert _close(row["epsilon_cumulative"], cumulative)
            if entry.is_charge:
                assert _close(row["epsilon_increment"], cumulative - before)
            assert _close(row["epsilon_remaining"], entry.epsilon_budget - cumulative)
            assert row["epsilon_cumulative_stated"] == entry.cumulative_epsilon
            assert row["epsilon_stated_matches"] is True
            assert row["entry_hash"] == entry.hash.hex() and row["update_hash"] == entry.update_hash.hex()
            previous[(entry.accountant, entry.delta)] = cumulative
        last = entries[-1]
        spent = get_accountant(last.accountant).epsilon(charges, last.delta)
        assert _close(owner["epsilon_spent"], spent)
        assert owner["epsilon_spent_basis"] == "recomputed"
        assert owner["accountant"] == last.accountant and owner["delta"] == last.delta
        assert owner["epsilon_budget"] == last.epsilon_budget
        assert _close(owner["epsilon_remaining"], last.epsilon_budget - spent)
        assert _close(owner["budget_used_fraction"], spent / last.epsilon_budget)
        assert owner["charges"] == sum(e.is_charge for e in entries)
        assert owner["refusals"] == sum(not e.is_charge for e in entries)
        assert [(r["run_id"], r["round"], r["reason"]) for r in owner["refused_releases"]] == \
            [(e.run_id, e.round, e.refusal_reason) for e in entries if not e.is_charge]
        assert owner["purposes"] == sorted({e.purpose for e in entries})
        steps = {}
        for e in entries:
            if e.is_charge:
                steps[(e.event.noise_multiplier, e.event.sample_rate)] = \
                    steps.get((e.event.noise_multiplier, e.event.sample_rate), 0) + e.event.steps
        assert {(s["noise_multiplier"], s["sample_rate"]): s["steps_total"] for s in owner["mechanism_settings"]} \
            == steps
        registry = {i["field"]: i for i in owner["epsilon_registry"]}
        assert registry["epsilon"]["value"] == owner["epsilon_spent"]
        assert registry["epsilon"]["evidence"] == "recomputed"
        assert registry["delta"]["value"] == owner["delta"]
        assert registry["epsilon_budget"]["value"] == owner["epsilon_budget"]
        assert registry["epsilon_remaining"]["value"] == owner["epsilon_remaining"]
        for run in owner["runs"]:  # a run's epsilon after it: the cumulative at its last entry
            rows = [r for r in owner["entries"] if r["run_id"] == run["run_id"]]
            assert run["epsilon_after"] == rows[-1]["epsilon_cumulative"]
            assert run["charges"] == sum(r["kind"] == "charge" for r in rows)

    summary = doc["summary"]
    spent = {o["owner_id"]: o["epsilon_spent"] for o in doc["owners"]}
    assert summary["epsilon_spent_max"] == max(spent.values())
    assert summary["epsilon_spent_max_owner"] == max(spent, key=spent.get)
    assert summary["epsilon_spent_min"] == min(spent.values())
    assert summary["charges"] == sum(o["charges"] for o in doc["owners"])
    assert summary["refusals"] == 1 and summary["owners_with_refusals"] == ["hospital-b"]
    assert summary["accountants"] == ["pld", "rdp"] and summary["deltas"] == [1e-6, 1e-5]


def test_history_rounds_carry_each_owners_epsilon_from_the_ledger(small_run, full_report):
    history = full_report.document["history"]
    assert history["experiment_id"] == RUN
    assert history["matched_run_id"] == RUN and history["evidence"] == "run-history"
    source = json.loads(small_run["history"].read_text())
    # Each owner's lifetime epsilon after round r of run-1, recomputed from its ledger's events.
    after: dict[str, dict[int, float]] = {}
    for owner in small_run["owners"]:
        _, entries = read_ledger(small_run["ledgers"] / f"{owner}.db")
        charges, start = [], None
        for entry in entries:
            if entry.run_id == RUN and start is None:
                start = get_accountant(entry.accountant).epsilon(charges, entry.delta)
                after[owner] = {0: start}
            if entry.is_charge:
                charges.append(entry.event)
                if entry.run_id == RUN:
                    after[owner][entry.round] = get_accountant(entry.accountant).epsilon(charges, entry.delta)
    for row, given in zip(history["rounds"], source["rounds"]):
        assert row["round"] == given["round"] and row["test_accuracy"] == given["test_accuracy"]
        current = [after[o][max(r for r in after[o] if r <= row["round"])] for o in after]
        assert _close(row["epsilon_max"], max(current)) and _close(row["epsilon_min"], min(current))


def test_csv_has_one_row_per_entry_with_the_json_figures(full_report):
    rows = list(csv.DictReader(io.StringIO(render_csv(full_report))))
    assert tuple(rows[0]) == CSV_COLUMNS
    rows = [r for r in rows if r["kind"] in ("charge", "refusal")]  # the decision, channel and DPIA rows follow
    flat = [(o, r) for o in full_report.owners for r in o.entries]
    assert len(rows) == len(flat)
    for row, (owner, entry) in zip(rows, flat):
        assert row["owner_id"] == owner.owner_id and int(row["sequence"]) == entry.sequence
        assert float(row["epsilon_cumulative"]) == entry.epsilon_cumulative
        assert row["epsilon_release"] == ("" if entry.epsilon_release is None else repr(entry.epsilon_release))
        assert row["ledger_intact"] == "true" and row["key_independently_supplied"] == "true"
        assert row["purpose_declared"] == ""  # no processing record: not checked


def test_json_report_matches_its_published_schema(full_report, small_run):
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed; the schema is not checked")
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(json.loads(render_json(full_report)))
    federation_only = build_report(small_run["ledgers"] / "federation.db")
    validator.validate(json.loads(render_json(federation_only)))
    assert full_report.document["schema_version"] == SCHEMA_VERSION == "1.2"


# --------------------------------------------------------------------------- what is proved, what is declared


def test_federation_ledger_alone_is_a_partial_view_and_says_so(small_run):
    report = build_report([small_run["ledgers"] / "federation.db"], keys=small_run["keys"])
    assert report.intact
    a = report.owner("hospital-a")
    assert a.source.ledger_kind == "federation" and not a.source.chain_complete
    assert a.source.first_sequence == 3  # the two releases for another federation are not here
    assert a.epsilon_spent_basis == "owner-signed-partial"
    assert a.epsilon_spent == a.epsilon_spent_stated
    assert a.epsilon_spent_recomputed_lower_bound < a.epsilon_spent
    assert a.outlook.rounds_left is None and "part of the owner's chain" in a.outlook.note  # not guessed
    assert any("partial copy" in w for w in report.warnings)
    full = build_report([small_run["ledgers"] / "hospital-a.db"], keys=small_run["keys"]).owner("hospital-a")
    assert full.charges == a.charges + 4  # the owner's own ledger holds more (other federations)
    # The federation's last copy is the owner's entry 6, signed with the epsilon recomputed over entries 1-6.
    assert a.epsilon_spent == full.entries[5].epsilon_cumulative_stated
    assert _close(a.epsilon_spent, full.entries[5].epsilon_cumulative)
    b = report.owner("hospital-b")
    assert b.source.chain_complete and b.epsilon_spent_basis == "recomputed"


def test_keys_read_from_the_ledger_files_are_flagged(small_run):
    report = build_report(_all_ledgers(small_run))
    assert report.intact and report.ok
    assert not any(o.integrity.key_independently_supplied for o in report.owners)
    assert any("read from the ledger files themselves" in w for w in report.warnings)
    measures = {m["id"]: m for m in report.document["gdpr"]["article_32"]}
    assert measures["keys_independent"]["status"] == "not met"
    html = render_html(report, figures=[])
    assert "from the file" in html


def test_owner_ledgers_are_checked_against_the_federation_copies(full_report):
    for owner in full_report.owners:
        assert owner.integrity.checked_against, owner.owner_id
        assert owner.integrity.key_independently_supplied
    measures = {m["id"]: m for m in full_report.document["gdpr"]["article_32"]}
    assert measures["truncation_checked"]["status"] == "met"
    assert measures["signed_entries"]["status"] == "met"
    measures25 = {m["id"]: m for m in full_report.document["gdpr"]["article_25"]}
    assert measures25["dp_every_release"]["status"] == "met"
    assert measures25["budget_enforced"]["status"] == "met"
    assert measures25["data_stays_at_owner"]["evidence"] == "privfl-design"
    assert measures25["privacy_by_default"]["evidence"] == "run-history"


def test_processing_record_is_shown_as_owner_declared(small_run):
    record = load_processing_record(example_path())
    assert record.owner_ids == ("cleveland",)
    text = example_path().read_text().replace('owner_ids = ["cleveland"]', 'owner_ids = ["hospital-a"]')
    text = text.replace("delta = 1e-5\n", "delta = 1e-3\n")  # a record that disagrees with the ledger's delta
    path = small_run["folder"] / "record-a.toml"
    path.write_text(text)
    report = build_report(_all_ledgers(small_run), keys=small_run["keys"], processing_record=path)
    sections = report.document["gdpr"]["article_30"]
    declared = next(s for s in sections if s["record"] == str(path))
    assert declared["owners"] == ["hospital-a"]
    items = {i["field"]: i for i in declared["items"]}
    assert items["controller.name"]["evidence"] == "owner-declared"
    assert items["processing.retention"]["value"].startswith("Training records")
    assert items["ledger.purposes"]["evidence"] == "ledger-verified"
    undeclared = next(s for s in sections if s["record"] is None)
    assert set(undeclared["owners"]) == {"hospital-b", "clinic-c"} and "controller.name" in undeclared["missing"]
    registry = {i["field"]: i for i in report.owner("hospital-a").epsilon_registry}
    assert registry["budget_set_by"]["value"] == "Research data governance board"
    assert registry["budget_set_by"]["evidence"] == "owner-declared"
    other = {i["field"]: i for i in report.owner("hospital-b").epsilon_registry}
    assert other["budget_set_by"]["evidence"] == "not-declared"
    # The record (edited) declares budget 10 and delta 1e-3; hospital-a's ledger says 10 and 1e-5.
    assert any("declares delta 0.001" in w for w in report.warnings)
    assert not any("declares an epsilon budget" in w for w in report.warnings)


def test_a_bad_processing_record_is_refused_with_the_key_named(tmp_path, small_run, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[processing]\nretension = "5 years"\n')
    with pytest.raises(ProcessingRecordError, match="did you mean 'retention'"):
        load_processing_record(bad)
    wrong_type = tmp_path / "wrong.toml"
    wrong_type.write_text('[privacy_budget]\nepsilon = "ten"\n')
    with pytest.raises(ProcessingRecordError, match=r"\[privacy_budget\] epsilon"):
        load_processing_record(wrong_type)
    code = cli_main(["report", str(small_run["ledgers"] / "clinic-c.db"), "--processing-record", str(bad),
                     "--format", "json", "--out", str(tmp_path / "r.json")])
    assert code == 2 and "retension" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


# --------------------------------------------------------------------------- tampering


def _banner_before_title(html: str) -> str:
    return html[: html.index("<h1>")]


def test_a_flipped_byte_is_reported_prominently_and_strict_fails(run_copy, tmp_path, capsys):
    _flip_byte(run_copy["ledgers"] / "hospital-b.db", "hospital-b", 2)
    report = build_report(_all_ledgers(run_copy), keys=run_copy["keys"], history=run_copy["history"])
    assert not report.intact and not report.ok
    assert report.document["status"]["verdict"] == "NOT INTACT"
    b = report.owner("hospital-b")
    assert not b.integrity.intact and "entry 2" in b.integrity.problem
    assert b.integrity.evidence == "ledger-unverified"
    assert {i["field"]: i for i in b.epsilon_registry}["epsilon"]["evidence"] == "ledger-unverified"
    assert report.owner("clinic-c").integrity.intact  # the others still verify
    assert any("hospital-b.db: NOT INTACT" in p and "entry 2" in p for p in report.problems)
    top = _banner_before_title(render_html(report, figures=[]))
    assert "NOT INTACT" in top and "TAMPERING" in top and "hospital-b.db" in top
    measures = {m["id"]: m for m in report.document["gdpr"]["article_32"]}
    assert measures["signed_entries"]["status"] == "failed"

    out = tmp_path / "report.html"
    # A damaged ledger: the report is written (red banner first) and the command fails, --strict or not.
    assert cli_main(["report", str(run_copy["folder"]), "--out", str(out)]) == 1
    assert "NOT INTACT" in _banner_before_title(out.read_text())
    assert cli_main(["report", str(run_copy["folder"]), "--out", str(out), "--strict", "--jobs", "1"]) == 1
    err = capsys.readouterr().err
    assert "NOT INTACT" in err and "hospital-b" in err


def test_strict_exit_status_of_the_installed_command(run_copy, tmp_path):
    command = Path(sys.executable).parent / "privfl"
    if not command.exists():
        command = shutil.which("privfl")
    if not command:
        pytest.skip("the privfl command is not installed next to this Python")
    ledger = run_copy["ledgers"] / "clinic-c.db"
    key = run_copy["keys"] / "clinic-c.pub"
    assert cli_main(["report", str(ledger), "--public-key", str(key), "--strict", "--format", "json",
                     "--out", str(tmp_path / "ok.json")]) == 0
    _flip_byte(ledger, "clinic-c", 3)
    bad = subprocess.run([str(command), "report", str(ledger), "--public-key", str(key), "--strict",
                          "--format", "json", "--out", str(tmp_path / "bad.json")], capture_output=True, text=True)
    assert bad.returncode == 1 and "NOT INTACT" in bad.stderr
    assert json.loads((tmp_path / "bad.json").read_text())["status"]["intact"] is False


def test_an_edited_row_in_the_federation_ledger_is_reported(run_copy):
    _edit(run_copy["ledgers"] / "federation.db",
          "UPDATE entries SET round = 7 WHERE owner_id = 'clinic-c' AND sequence = 2")
    report = build_report(_all_ledgers(run_copy), keys=run_copy["keys"])
    assert not report.intact
    federation = next(lg for lg in report.document["ledgers"] if lg["ledger_kind"] == "federation")
    assert not federation["intact"] and "round" in federation["problem"]
    # The owners' own ledgers are intact; they were not checked against an unreliable federation copy.
    assert report.owner("clinic-c").integrity.intact
    assert report.owner("clinic-c").integrity.checked_against == []


def test_entries_removed_from_the_end_are_caught_against_the_federation(run_copy):
    _edit(run_copy["ledgers"] / "clinic-c.db", "DELETE FROM entries WHERE sequence = 4")
    alone = build_report([run_copy["ledgers"] / "clinic-c.db"], keys=run_copy["keys"])
    assert alone.intact  # one file alone cannot show a shorter chain
    both = build_report(_all_ledgers(run_copy), keys=run_copy["keys"])
    assert not both.intact
    assert "clinic-c" in both.owner("clinic-c").integrity.problem
    assert "entry 4" in both.owner("clinic-c").integrity.problem


def test_a_ledger_signed_under_another_key_is_not_intact(small_run):
    wrong = {"clinic-c": load_public_key(small_run["keys"] / "hospital-a.pub")}
    report = build_report([small_run["ledgers"] / "clinic-c.db"], keys=wrong)
    assert not report.intact
    assert "expected the owner's key" in report.owner("clinic-c").integrity.problem


def test_a_file_that_is_not_a_ledger_is_reported_not_crashed(small_run, tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a ledger" * 100)
    report = build_report([junk, small_run["ledgers"] / "clinic-c.db"])
    assert not report.intact
    assert any("junk.db" in p for p in report.problems)
    assert report.owner("clinic-c").integrity.intact


# --------------------------------------------------------------------------- run folders and the command


def test_write_run_report_writes_every_format_from_a_run_folder(run_copy):
    written = write_run_report(run_copy["folder"])
    assert [p.name for p in written] == ["report.html", "report.json", "report.csv", "report.pdf"]
    assert all(p.stat().st_size > 0 for p in written)
    doc = json.loads((run_copy["folder"] / "report.json").read_text())
    assert doc["status"]["intact"] and doc["history"]["matched_run_id"] == RUN
    assert all(o["integrity"]["key_independently_supplied"] for o in doc["owners"])
    measures = {m["id"]: m for m in doc["gdpr"]["article_32"]}
    assert measures["key_files_0600"]["status"] == "met"  # keys/ holds the private keys, mode 0600
    html = (run_copy["folder"] / "report.html").read_text()
    # budget used, lifetime epsilon, privacy-utility, federated evaluation
    assert html.count('src="data:image/png;base64,') == 4
    assert (run_copy["folder"] / "report.pdf").read_bytes().startswith(b"%PDF-")
    only = write_run_report(run_copy["folder"], formats=["json"], out_dir=run_copy["folder"] / "out")
    assert [p.name for p in only] == ["report.json"]


def test_key_files_readable_by_others_are_reported(run_copy):
    (run_copy["keys"] / "clinic-c.key").chmod(0o644)
    write_run_report(run_copy["folder"], formats=["json"])
    doc = json.loads((run_copy["folder"] / "report.json").read_text())
    measure = {m["id"]: m for m in doc["gdpr"]["article_32"]}["key_files_0600"]
    assert measure["status"] == "not met" and "clinic-c" in measure["detail"]


def test_cli_formats_keys_and_stdout(small_run, tmp_path, capsys):
    ledger = str(small_run["ledgers"] / "hospital-b.db")
    assert cli_main(["report", ledger, "--public-key", str(small_run["keys"] / "hospital-b.pub"),
                     "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["owners"][0]["integrity"]["key_independently_supplied"]
    assert cli_main(["report", ledger, "--public-key", f"hospital-b={small_run['keys'] / 'hospital-b.pub'}",
                     "--out", str(tmp_path / "b.csv")]) == 0  # format from the suffix
    assert (tmp_path / "b.csv").read_text().startswith("owner_id,")
    assert cli_main(["report", str(small_run["ledgers"]), "--keys-dir", str(small_run["keys"]),
                     "--history", str(small_run["history"]), "--out", str(tmp_path / "r.html"),
                     "--title", "Quarterly privacy report"]) == 0
    assert "<title>Quarterly privacy report</title>" in (tmp_path / "r.html").read_text()
    assert cli_main(["report", ledger, "--format", "pdf"]) == 2  # a PDF needs --out
    assert "needs --out" in capsys.readouterr().err
    assert cli_main(["report", str(tmp_path / "missing.db"), "--format", "json"]) == 2
    assert cli_main(["report", "--example-processing-record"]) == 0
    assert "[controller]" in capsys.readouterr().out


def test_html_is_self_contained(full_report):
    html = render_html(full_report)
    lowered = html.lower()
    for outside in ("http://", "https://", "<script", "<link", "@import", "url(", "<iframe", "//fonts"):
        assert outside not in lowered, outside
    assert html.count("data:image/png;base64,") == 4


def test_a_signed_entry_stating_a_wrong_epsilon_is_not_intact(tmp_path):
    """An owner (or its software) that signs a wrong cumulative epsilon: signatures and chain verify, figures don't."""
    from privfl.privacy.keys import generate_key
    from privfl.privacy.ledger import CHARGE, sign_entry
    from privfl.privacy.ledger.chain import entry_hash
    from privfl.privacy.ledger.entry import KIND_TO_PROTO, encode_entry
    from privfl.privacy.ledger.store import OWNER_LEDGER, LedgerStore

    key, path = generate_key(), tmp_path / "owner.db"
    with OwnerLedger.open(path, "liar", key) as ledger:
        for rnd in (1, 2):
            last = _charge_or_refuse(ledger, RUN, rnd, Event(1.2, 0.05, 20), budget=10.0, delta=1e-5)
    event = Event(1.2, 0.05, 20)
    entry = encode_entry(sequence=3, previous_hash=entry_hash(last.entry_bytes), run_id=RUN, round=3,
                         owner_id="liar", kind=CHARGE, event=event, clipping_norm=1.0, privacy_unit="record",
                         delta=1e-5, accountant="rdp", cumulative_epsilon=0.5, epsilon_budget=10.0, purpose="x",
                         update_hash=update_hash(b"3"), refusal_reason="")
    signed = sign_entry(entry, key)
    store = LedgerStore.open_for_writing(path, OWNER_LEDGER, {"owner_id": "liar"})
    with store.write():
        store.insert(owner_id="liar", sequence=3, run_id=RUN, round=3, kind=KIND_TO_PROTO[CHARGE], entry=entry,
                     signature=signed.signature, key_fingerprint=signed.key_fingerprint)
    store.close()
    report = build_report(path, keys={"liar": key.public_key()})
    assert not report.intact
    owner = report.owner("liar")
    assert owner.stated_epsilons_not_matching == [3] and owner.entries[2].epsilon_stated_matches is False
    expected = get_accountant("rdp").epsilon([event] * 3, 1e-5)
    assert _close(owner.epsilon_spent, expected)  # the report shows the recomputed figure, not the stated 0.5
    assert "entry 3: states cumulative epsilon 0.5" in owner.integrity.problem
    assert "states cumulative epsilon 0.5" in report.document["ledgers"][0]["problem"]
