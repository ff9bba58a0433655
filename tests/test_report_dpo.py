"""What a data-protection officer acts on: who is over or near budget, what epsilon means, what is next,
lifetime against this experiment, federated evaluation, undeclared purposes, one owner's statement, escaping.

The ledgers are the three-owner run of ``tests/test_report.py`` (real ledger APIs): hospital-a has runs of
other federations and a PLD-accounted run-2, hospital-b is near its budget (it refused round 3), clinic-c has
another delta; the history names run-1 as its experiment id and carries federated evaluation.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from privfl.privacy.accountants import get_accountant
from privfl.privacy.events import PoissonSubsampledGaussian as Event
from privfl.privacy.keys import generate_owner_keys, load_private_key
from privfl.privacy.ledger import OwnerLedger, update_hash
from privfl.privacy.ledger.export import read_ledger
from privfl.privacy.report import (
    NEAR_BUDGET_FRACTION,
    build_report,
    render_html,
    render_json,
    write_html,
    write_pdf,
)
from privfl.privacy.report.accounting import budget_status, rounds_left
from privfl.privacy.report.model import BudgetAlert
from privfl.privacy.report.status import budget_alerts
from privfl.privacy.report.words import odds_text, plain_words, strength_tier

from privfl.cli import main as cli_main
from tests.test_report import RUN, _close, _flip_byte, build_small_run


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> dict:
    return build_small_run(tmp_path_factory.mktemp("dpo-run"))


def _ledgers(run: dict) -> list[Path]:
    return sorted(run["ledgers"].glob("*.db"))


@pytest.fixture(scope="module")
def report(small_run):
    return build_report(_ledgers(small_run), history=small_run["history"], keys=small_run["keys"])


# --------------------------------------------------------------------------- the headline


def test_budget_status_warns_from_80_percent_and_flags_over():
    assert NEAR_BUDGET_FRACTION == 0.8
    assert budget_status(0.79, False) == "within"
    assert budget_status(0.8, False) == "near"
    assert budget_status(0.999, False) == "near"
    assert budget_status(1.2, True) == "over"
    assert budget_status(None, False) == "unknown"


def test_headline_names_owners_over_or_near_budget_highest_share_first(report):
    b = report.owner("hospital-b")
    assert b.budget_status == "near" and 0.8 <= b.budget_used_fraction < 1  # 2.95 of 3.2
    alerts = report.status.budget_alerts
    assert [a.owner_id for a in alerts] == ["hospital-b"]
    assert "Near budget" in report.status.headline and "hospital-b (92%)" in report.status.headline
    assert any("80% or more of their budget" in w for w in report.warnings)
    assert report.summary.owners_near_budget == ["hospital-b"]
    ranked = report.summary.owners_by_budget_used
    fractions = [report.owner(o).budget_used_fraction for o in ranked]
    assert fractions == sorted(fractions, reverse=True) and ranked[0] == "hospital-b"
    html = render_html(report, figures=[])
    banner = html[: html.index("<h1>")]
    assert "Near budget" in banner and "hospital-b" in banner
    table = html[html.index('id="owners"'):]
    assert table.index(">hospital-b<") < table.index(">clinic-c<") < table.index(">hospital-a<")


def test_alerts_are_ordered_by_share_and_over_comes_in_the_headline(report):
    owners = [report.owner("hospital-a"), report.owner("hospital-b"), report.owner("clinic-c")]
    fake = [
        type("O", (), {"owner_id": "x", "over_budget": True, "budget_status": "over", "budget_used_fraction": 1.3,
                       "epsilon_spent": 13.0, "epsilon_budget": 10.0, "outlook": None})(),
        type("O", (), {"owner_id": "y", "over_budget": False, "budget_status": "near", "budget_used_fraction": 0.95,
                       "epsilon_spent": 9.5, "epsilon_budget": 10.0, "outlook": None})(),
        type("O", (), {"owner_id": "z", "over_budget": False, "budget_status": "near", "budget_used_fraction": 0.81,
                       "epsilon_spent": 8.1, "epsilon_budget": 10.0, "outlook": None})(),
        *owners]
    alerts = budget_alerts(fake)
    assert [(a.owner_id, a.level) for a in alerts] == [("x", "over"), ("y", "near"), ("hospital-b", "near"),
                                                       ("z", "near")]
    assert all(isinstance(a, BudgetAlert) for a in alerts)


# --------------------------------------------------------------------------- plain words


def test_epsilon_in_plain_words():
    assert "2.7x" in odds_text(1.0)
    assert "4,900x" in odds_text(8.5) and "about 5,000x" in odds_text(8.5)
    assert "unbounded" in odds_text(math.inf)
    assert (strength_tier(0.9), strength_tier(1.0), strength_tier(7.5), strength_tier(10.0), strength_tier(10.5)) \
        == ("strong", "strong", "reasonable", "reasonable", "weak")
    words = plain_words()
    assert "e^1 \u2248 2.7x" in words.epsilon and "about 5,000x" in words.epsilon
    assert "tiers commonly used in production systems" in words.tiers_source and "not law" in words.tiers_source
    assert [t.name for t in words.tiers] == ["strong", "reasonable", "weak"]
    assert "one row" in words.privacy_unit.lower() and "patient" in words.privacy_unit


def test_the_report_explains_epsilon_and_records_versus_patients(report):
    doc = report.document
    assert doc["plain_words"]["tiers_source"].startswith("tiers commonly used in production systems")
    c = report.owner("clinic-c")
    assert c.strength == "reasonable" and _close(c.odds_bound, math.exp(c.epsilon_spent))
    assert "One record is not one person" in report.summary.in_words
    assert "(e.g. one patient)" not in report.summary.in_words  # the old wording said the opposite
    html = render_html(report, figures=[])
    assert "What epsilon means" in html and "One record is not one patient" in html
    assert "conventions for talking about epsilon, not law" in html


# --------------------------------------------------------------------------- what is next


def test_rounds_left_fit_the_budget_and_one_more_does_not(small_run, report):
    checked = 0
    for owner in report.owners:
        outlook = owner.outlook
        _, entries = read_ledger(small_run["ledgers"] / f"{owner.owner_id}.db")
        charges = [e.event for e in entries if e.is_charge]
        latest = [e for e in entries if e.is_charge][-1]
        assert outlook.next_release.noise_multiplier == latest.event.noise_multiplier
        k = outlook.rounds_left
        assert k is not None and not outlook.at_least
        accountant = get_accountant(owner.accountant)
        after_k = accountant.epsilon(charges + [latest.event] * k, owner.delta)  # from scratch, k copies
        after_k1 = accountant.epsilon(charges + [latest.event] * (k + 1), owner.delta)
        assert after_k <= owner.epsilon_budget < after_k1, (owner.owner_id, k, after_k, after_k1)
        assert _close(outlook.epsilon_after, after_k) and _close(outlook.epsilon_after_one_more, after_k1)
        checked += 1
    assert checked == 3
    assert report.owner("hospital-b").outlook.rounds_left == 0  # it refused the next round already
    assert report.owner("hospital-a").outlook.accountant == "pld"  # the owner's own accountant


def test_rounds_left_search_agrees_with_a_linear_search():
    event = Event(1.5, 0.05, 20)
    spent = [Event(1.2, 0.1, 10)] * 3
    k, at_least = rounds_left(spent, event, "rdp", 1e-5, 6.0)
    accountant = get_accountant("rdp")
    linear = 0
    while accountant.epsilon(spent + [event] * (linear + 1), 1e-5) <= 6.0:
        linear += 1
    assert (k, at_least) == (linear, False)
    assert rounds_left(spent, Event(1.5, 0.05, 0), "rdp", 1e-5, 6.0, cap=64) == (64, True)  # no cost: capped


# --------------------------------------------------------------------------- lifetime and this experiment


def test_lifetime_and_this_experiments_share(small_run, report):
    assert report.summary.experiment_id == RUN
    for owner in report.owners:
        _, entries = read_ledger(small_run["ledgers"] / f"{owner.owner_id}.db")
        accountant = get_accountant(owner.accountant)
        lifetime = accountant.epsilon([e.event for e in entries if e.is_charge], owner.delta)
        mine = [e.event for e in entries if e.is_charge and e.run_id == RUN]
        assert _close(owner.epsilon_spent, lifetime)
        assert owner.experiment.experiment_id == RUN and owner.experiment.charges == len(mine)
        assert _close(owner.experiment.epsilon, accountant.epsilon(mine, owner.delta))
    a = report.owner("hospital-a")  # runs in other federations and run-2 as well: the share is smaller
    assert a.experiment.epsilon < a.epsilon_spent and "other runs" in a.experiment.note
    doc = json.loads(render_json(report))
    assert doc["owners"][1]["experiment"]["experiment_id"] == RUN
    html = render_html(report, figures=[])
    assert "this experiment" in html


def test_without_an_experiment_id_only_the_lifetime_is_shown(small_run):
    history = json.loads(small_run["history"].read_text())
    del history["config"]["experiment-id"]
    report = build_report(_ledgers(small_run), history=history, keys=small_run["keys"])
    assert report.summary.experiment_id is None
    assert all(o.experiment is None for o in report.owners)
    assert report.history.matched_run_id == RUN  # still matched by the rounds' participants
    assert "&epsilon; this experiment" not in render_html(report, figures=[])


# --------------------------------------------------------------------------- federated evaluation


def test_federated_evaluation_per_owner_and_over_rounds(small_run, report):
    source = json.loads(small_run["history"].read_text())
    evaluation = report.history.federated_evaluation
    assert evaluation is not None and evaluation.latest_round == 4
    assert [r.round for r in evaluation.rounds] == [1, 2, 3, 4]
    last = source["rounds"][-1]["federated_evaluation"]
    assert _close(evaluation.rounds[-1].accuracy, last["accuracy"])
    assert evaluation.rounds[-1].owners_evaluated == len(last["owners"])
    assert "not covered by the DP-SGD epsilon" in evaluation.note
    for owner_id, values in last["owners"].items():
        latest = report.owner(owner_id).federated_evaluation.latest
        assert (latest.round, latest.accuracy, latest.loss, latest.num_examples) == \
            (4, values["accuracy"], values["loss"], values["num_examples"])
    b = report.owner("hospital-b").federated_evaluation  # evaluated only while it trained (rounds 1-2)
    assert [p.round for p in b.rounds] == [1, 2] and b.latest.round == 2
    html = render_html(report, figures=[])
    assert 'id="evaluation"' in html and "Not covered by epsilon" in html
    assert any("Federated evaluation metrics are a release" in n for n in report.limitations)


def test_no_federated_evaluation_no_section(small_run):
    history = json.loads(small_run["history"].read_text())
    for record in history["rounds"]:
        record.pop("federated_evaluation", None)
    report = build_report(_ledgers(small_run), history=history, keys=small_run["keys"])
    assert report.history.federated_evaluation is None
    assert all(o.federated_evaluation is None for o in report.owners)
    assert 'id="evaluation"' not in render_html(report, figures=[])


# --------------------------------------------------------------------------- purposes


def test_a_purpose_the_processing_record_does_not_declare_is_flagged(small_run, tmp_path, capsys):
    record = tmp_path / "record.toml"
    record.write_text('owner_ids = ["hospital-a"]\n[processing]\npurpose = "heart disease research"\n'
                      'purposes = ["train heart model v1"]\n')
    report = build_report(_ledgers(small_run), keys=small_run["keys"], processing_record=record)
    a = report.owner("hospital-a")
    assert a.purpose_check.status == "mismatch" and a.purpose_check.undeclared_purposes == ["train heart model v2"]
    assert [m.sequence for m in a.purpose_check.undeclared] == [7, 8]  # run-2's two charges
    assert [r.purpose_declared for r in a.entries] == [True] * 6 + [False] * 2
    assert report.owner("clinic-c").purpose_check.status == "not-checked"  # no record declares its purposes
    assert report.intact and not report.ok
    assert any("hospital-a: 2 ledger entries signed with a purpose its processing record does not declare" in p
               for p in report.problems)
    measure = {m["id"]: m for m in report.document["gdpr"]["article_25"]}["purpose_limitation"]
    assert measure["status"] == "not met"
    assert "undeclared purpose" in render_html(report, figures=[])
    # An intact ledger with an undeclared purpose: exit 0, but 1 with --strict.
    args = ["report", str(small_run["ledgers"]), "--keys-dir", str(small_run["keys"]), "--processing-record",
            str(record), "--format", "json", "--out", str(tmp_path / "r.json"), "--jobs", "1"]
    assert cli_main(args) == 0
    assert cli_main([*args, "--strict"]) == 1
    assert "does not declare" in capsys.readouterr().err


def test_declared_purposes_match_case_and_spacing_insensitively(small_run, tmp_path):
    record = tmp_path / "record.toml"
    record.write_text('[processing]\npurposes = ["Train  heart model v1", "train heart MODEL v2"]\n')
    report = build_report(_ledgers(small_run), keys=small_run["keys"], processing_record=record)
    assert all(o.purpose_check.status == "declared" for o in report.owners)
    assert report.ok


# --------------------------------------------------------------------------- one owner's statement


def test_one_owners_statement_holds_nothing_about_the_others(small_run, report, tmp_path):
    statement = build_report(_ledgers(small_run), history=small_run["history"], keys=small_run["keys"],
                             owner="hospital-b")
    assert [o.owner_id for o in statement.owners] == ["hospital-b"]
    assert statement.scope.owner_id == "hospital-b" and statement.scope.owners_in_ledgers == 3
    assert statement.title == "Privacy budget statement: data owner hospital-b"
    assert sorted(Path(lg.path).name for lg in statement.ledgers) == ["federation.db", "hospital-b.db"]
    assert statement.owner("hospital-b").epsilon_spent == report.owner("hospital-b").epsilon_spent
    text = render_json(statement)
    assert "hospital-a" not in text and "clinic-c" not in text
    html = render_html(statement)
    assert "hospital-a" not in html and "clinic-c" not in html
    assert statement.history.rounds[-1].epsilon_max == statement.history.rounds[-1].epsilon_min  # one owner
    assert report.for_owner("hospital-b").document["owners"] == statement.document["owners"]
    out = tmp_path / "b.html"
    assert cli_main(["report", str(small_run["folder"]), "--owner", "hospital-b", "--out", str(out)]) == 0
    page = out.read_text()
    assert "data owner hospital-b" in page and "clinic-c" not in page
    assert cli_main(["report", str(small_run["folder"]), "--owner", "nobody", "--out", str(out)]) == 2


def test_a_statement_withholds_another_owners_problem_but_stays_not_intact(small_run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(small_run["folder"], folder)
    _flip_byte(folder / "ledgers" / "federation.db", "clinic-c", 2)
    statement = build_report(sorted((folder / "ledgers").glob("*.db")), keys=folder / "keys", owner="hospital-b")
    assert not statement.intact
    federation = next(lg for lg in statement.ledgers if lg.ledger_kind == "federation")
    assert not federation.intact and "another owner" in federation.problem
    assert "clinic-c" not in render_json(statement)


# --------------------------------------------------------------------------- exit status, escaping


def test_the_command_fails_on_a_damaged_ledger_without_strict(small_run, tmp_path, capsys):
    folder = tmp_path / "run"
    shutil.copytree(small_run["folder"], folder)
    _flip_byte(folder / "ledgers" / "clinic-c.db", "clinic-c", 1)
    for fmt in ("json", "html", "pdf", "csv"):
        out = tmp_path / f"report.{fmt}"
        assert cli_main(["report", str(folder), "--out", str(out)]) == 1, fmt
        assert out.stat().st_size > 0  # written all the same
    assert json.loads((tmp_path / "report.json").read_text())["status"]["intact"] is False
    assert "NOT INTACT" in capsys.readouterr().err
    assert cli_main(["report", str(small_run["folder"]), "--out", str(tmp_path / "ok.json")]) == 0


def test_cross_check_problems_are_problems_and_fail_the_report(small_run):
    report = build_report(_ledgers(small_run), keys=small_run["keys"],
                          cross_checks=["owner clinic-c: round 4 is in the history but not in its ledger"])
    assert not report.intact and not report.ok and report.fails_by_default  # one verdict: NOT INTACT (issue 20)
    assert report.status.verdict == "NOT INTACT"
    assert "cross-check: owner clinic-c: round 4 is in the history but not in its ledger" in report.problems
    assert "cross-check problem" in report.status.headline
    assert report.for_owner("hospital-b").status.cross_checks == []  # about another owner
    assert report.for_owner("clinic-c").status.cross_checks


def test_html_escapes_what_ledgers_and_callers_supply(tmp_path):
    key = load_private_key(generate_owner_keys(tmp_path / "keys", "evil-owner").private_key)
    script = '<script>alert("x")</script>'
    with OwnerLedger.open(tmp_path / "evil.db", "evil-owner", key) as ledger:
        ledger.charge(f"run-{script}", 1, Event(1.2, 0.05, 20), clipping_norm=1.0, delta=1e-5, epsilon_budget=10.0,
                      accountant="rdp", purpose=f"purpose {script} & more", update_hash=update_hash(b"1"))
    report = build_report(tmp_path / "evil.db", keys=tmp_path / "keys", title=f"title {script}")
    html = render_html(report, figures=[])
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "&amp; more" in html
    write_pdf(report, tmp_path / "evil.pdf")  # the PDF takes the same text without choking
    write_html(report, tmp_path / "evil.html")
