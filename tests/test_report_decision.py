"""Issue 22: a report a data-protection officer decides from in one minute, and files.

Every format (HTML, PDF, JSON, CSV) carries the decision box, the release channels and the
DPIA section; the banner is amber for a weak guarantee (owner-level too) and for an owner near
its budget, red for a damaged run (a ledger edited, or an owner's ledger deleted from an
audited run), green otherwise; epsilon and delta are put in an attacker's terms with n and
delta x n; an empirical audit's lower bound is shown beside the claim.  Ledgers are built with
the real ledger APIs (no simulation), except the one audited run, made by the in-process grid.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from privfl.privacy.accountants import get_accountant
from privfl.privacy.events import PoissonSubsampledGaussian as Event
from privfl.privacy.keys import generate_owner_keys, load_private_key
from privfl.privacy.ledger import OwnerLedger, update_hash
from privfl.privacy.report import build_report, render_csv, render_html, write_html, write_pdf
from privfl.privacy.report.decision import attacker_certainty, certainty_text
from privfl.privacy.report.processing_record import example_path, load_processing_record
from privfl.privacy.report.synthetic import build_synthetic_federation
from tests.test_report import _flip_byte, build_small_run

DELTA = 1e-5
RECORD_EVENT = Event(1.2, 0.1, 10)


def _ledger(folder: Path, owner: str, charges: int, budget: float, *, delta: float = DELTA,
            event: Event = RECORD_EVENT) -> Path:
    key = load_private_key(generate_owner_keys(folder / "keys", owner).private_key)
    path = folder / f"{owner}.db"
    with OwnerLedger.open(path, owner, key) as ledger:
        for rnd in range(1, charges + 1):
            ledger.charge("exp-1", rnd, event, clipping_norm=1.0, delta=delta, epsilon_budget=budget,
                          accountant="rdp", purpose="train sepsis model",
                          update_hash=update_hash(f"{owner}/{rnd}".encode()))
    return path


def _pdf_text(path: Path) -> str:
    try:
        import pypdf
    except ImportError:
        pypdf = None
    if pypdf is not None:
        return "\n".join(page.extract_text() for page in pypdf.PdfReader(str(path)).pages)
    if shutil.which("pdftotext") is None:
        pytest.skip("neither pypdf nor poppler's pdftotext is installed (apt-get install poppler-utils)")
    done = subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def weak_owner_level(tmp_path_factory):
    """Three owners whose owner-level epsilon is weak (sigma 0.6, every owner drawn): record-level is fine."""
    folder = tmp_path_factory.mktemp("weak-owner-level")
    fed = build_synthetic_federation(folder, owners=3, rounds=3, owner_level="poisson", owner_noise_multiplier=0.6,
                                     owner_epsilon_budget=100.0, epsilon_budget=50.0)
    history = {"experiment": "digits-secagg", "status": "finished", "rounds": [],
               "config": {"experiment-id": fed.run_id, "dp": True, "owner-dp": True, "secure-aggregation": True,
                          "federated-evaluation": "off"}}
    (folder / "history.json").write_text(json.dumps(history), encoding="utf-8")
    report = build_report(sorted(fed.ledgers.glob("*.db")), keys=fed.keys, history=folder / "history.json")
    return {"folder": folder, "report": report}


@pytest.fixture(scope="module")
def near_budget(tmp_path_factory):
    """One owner at 90% of a record-level budget (not weak), one far from its budget."""
    folder = tmp_path_factory.mktemp("near-budget")
    four = get_accountant("rdp").epsilon([RECORD_EVENT] * 4, DELTA)
    near = _ledger(folder, "st-mary", 4, budget=four / 0.9)
    far = _ledger(folder, "oslo", 1, budget=9.0)
    return build_report([near, far], keys=folder / "keys")


# --------------------------------------------------------------------------- the banner


def test_a_weak_owner_level_guarantee_makes_the_banner_amber_and_says_do_not_rely(weak_owner_level):
    report = weak_owner_level["report"]
    assert report.intact and report.ok  # nothing is over budget or damaged: before issue 22 this was green
    decision = report.decision
    assert decision.level == "amber"
    owner_rows = [r for r in decision.rows if r.privacy_unit == "owner"]
    assert owner_rows and all(r.strength == "weak" and r.level == "amber" for r in owner_rows)
    assert all(r.epsilon_spent > 10 for r in owner_rows)
    assert all("is weak" in r.action and "do not rely on it" in r.action for r in owner_rows)
    assert all(r.level == "green" and r.action.startswith("approve at most") for r in decision.rows
               if r.privacy_unit == "record")
    # the tier table counts owner-level figures too (it counted record-level ones only)
    assert decision.tier_counts["weak"] == len(owner_rows) == 3
    html = render_html(report, figures=[])
    assert 'class="banner caution"' in html and "INTACT, WITH CAUTIONS" in html
    tiers = html[html.index('id="meaning"'):]
    assert '<td><b>weak</b></td>' in tiers
    weak_row = tiers[tiers.index("<td><b>weak</b></td>"):tiers.index("</tr>", tiers.index("<td><b>weak</b></td>"))]
    assert weak_row.rstrip().endswith('<td class="num">3</td>')


def test_an_owner_near_its_budget_makes_the_banner_amber_with_the_rounds_left(near_budget):
    decision = near_budget.decision
    assert decision.level == "amber"
    near = next(r for r in decision.rows if r.owner_id == "st-mary")
    assert near.strength != "weak" and near.level == "amber"
    assert near.rounds_left is not None and f"approve at most {near.rounds_left:,} more round(s) of this plan" \
        in near.action
    far = next(r for r in decision.rows if r.owner_id == "oslo")
    assert far.level == "green"
    assert "near or over" in " ".join(decision.reasons)
    assert 'class="banner caution"' in render_html(near_budget, figures=[])


def test_a_report_with_nothing_to_act_on_is_green(tmp_path):
    report = build_report([_ledger(tmp_path, "oslo", 1, budget=9.0)], keys=tmp_path / "keys")
    assert report.decision.level == "green"
    assert 'class="banner intact"' in render_html(report, figures=[])


def test_a_damaged_ledger_makes_the_banner_red_and_says_stop(tmp_path):
    run = build_small_run(tmp_path / "run")
    _flip_byte(run["folder"] / "ledgers" / "clinic-c.db", "clinic-c", 2)
    report = build_report(sorted((run["folder"] / "ledgers").glob("*.db")), keys=run["keys"])
    assert report.decision.level == "red"
    row = next(r for r in report.decision.rows if r.owner_id == "clinic-c")
    assert row.level == "red" and "stop" in row.action and "recover" in row.action
    assert 'class="banner broken"' in render_html(report, figures=[])


def test_an_owner_ledger_deleted_from_an_audited_run_makes_the_report_red(tmp_path):
    """The one audit finds the missing ledger; the decision box names the owner and says to recover it."""
    from bench.inprocess_grid import run_apps
    from privfl.client.app import app as client_app
    from privfl.client.owner_ledger import close_owner_ledgers
    from privfl.config import ExperimentConfig
    from privfl.privacy.report.run import build_run_report
    from privfl.server.app import app as server_app
    from privfl.server.run_dir import settle

    federation = tmp_path / "federation"
    config = settle(ExperimentConfig(num_owners=2, num_rounds=1, run_dir=str(tmp_path / "run"),
                                     federation_dir=str(federation), federated_evaluation="off"))
    run_apps(server_app, client_app, 2, config.to_mapping())
    close_owner_ledgers()
    (federation / "owners" / "owner-1" / "ledger.db").unlink()
    report = build_run_report(tmp_path / "run")
    assert not report.intact and report.decision.level == "red"
    row = next(r for r in report.decision.rows if r.owner_id == "owner-1")
    assert row.level == "red" and "owner-1" in row.action and "recover" in row.action
    assert 'class="banner broken"' in render_html(report, figures=[])


# --------------------------------------------------------------------------- every format


def test_every_format_carries_the_decision_box_the_channels_and_the_dpia(weak_owner_level, tmp_path):
    report = weak_owner_level["report"]
    html = render_html(report, figures=[])
    for anchor, heading in (("decision", "What to decide"), ("channels", "Every release channel"),
                            ("dpia", "DPIA and record of processing")):
        assert f'id="{anchor}"' in html and heading in html
    assert html.index('id="decision"') < html.index('id="glance"')  # the decision box first
    assert "do not rely on it" in html and "evaluation answers" in html and "opinion of the DPO" in html

    pdf = _pdf_text(write_pdf(report, tmp_path / "report.pdf", figures=[]))
    flat = " ".join(pdf.split())
    for text in ("What to decide", "do not rely on it", "Every release channel", "evaluation answers",
                 "DPIA and record of processing", "opinion of the DPO", "INTACT, WITH CAUTIONS"):
        assert text in flat, text
    assert flat.index("What to decide") < flat.index("At a glance")

    document = json.loads(json.dumps(report.document))
    assert document["decision"]["level"] == "amber" and len(document["decision"]["rows"]) == 6
    assert {c["channel"] for c in document["release_channels"]} >= {
        "model update (record-level)", "model update (owner-level)", "final model", "training loss",
        "number of examples", "evaluation answers", "refusals", "participation and timing",
        "SecAgg+ (used in this run)"}
    assert {"processing", "risks", "rights", "roles", "budget_by_purpose", "budget_by_experiment",
            "sign_off"} <= set(document["dpia"])

    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    kinds = {r["kind"] for r in rows}
    assert {"charge", "decision", "release-channel", "dpia"} <= kinds
    decisions = [r for r in rows if r["kind"] == "decision"]
    assert len(decisions) == 6 and {r["decision_level"] for r in decisions} == {"amber", "green"}
    assert any("evaluation answers" in r["note"] for r in rows if r["kind"] == "release-channel")
    assert any("opinion of the DPO" in r["note"] for r in rows if r["kind"] == "dpia")
    assert all(r["decision_level"] for r in rows if r["kind"] == "charge")


# --------------------------------------------------------------------------- channels


def test_channels_follow_the_run_config(weak_owner_level, tmp_path):
    channels = {c.channel: c for c in weak_owner_level["report"].release_channels}
    assert channels["training loss"].coverage == "not released"
    assert channels["final model"].coverage == "post-processing"
    assert channels["evaluation answers"].coverage == "not released"  # federated-evaluation = off
    assert "not authenticated" in channels["SecAgg+ (used in this run)"].detail
    assert "public-record-count (default false)" in channels["number of examples"].detail
    assert channels["participation and timing"].coverage == "not covered"
    # the same ledgers with evaluation on and no SecAgg+: evaluation answers are released WITHOUT DP
    folder = weak_owner_level["folder"]
    history = json.loads((folder / "history.json").read_text())
    history["config"].update({"federated-evaluation": "every round", "secure-aggregation": False})
    other = build_report(sorted((folder / "ledgers").glob("*.db")), keys=folder / "keys", history=history)
    channels = {c.channel: c for c in other.release_channels}
    assert "SecAgg+ (used in this run)" not in channels
    assert channels["evaluation answers"].coverage == "no DP"
    assert "WITHOUT differential privacy" in channels["evaluation answers"].detail
    assert "max-evaluations (default 1 " in channels["evaluation answers"].detail


# --------------------------------------------------------------------------- attacker's terms, delta


def test_epsilon_in_an_attackers_terms():
    assert certainty_text(1.0) == "73.2%"  # e/(1+e) = 0.7311, rounded up: a bound is never understated
    assert math.isclose(attacker_certainty(math.log(3)), 0.75)
    assert certainty_text(6.95) == "over 99.9%"
    assert certainty_text(math.inf).startswith("100%")


def test_delta_not_well_below_one_over_n_is_flagged_with_n_and_delta_times_n(tmp_path):
    path = _ledger(tmp_path, "cleveland", 2, budget=10.0, delta=1e-3)
    text = example_path().read_text().replace("delta = 1e-5\n", "delta = 1e-3\n")
    (tmp_path / "record.toml").write_text(text)
    report = build_report([path], keys=tmp_path / "keys", processing_record=tmp_path / "record.toml")
    row = report.decision.rows[0]
    assert row.records == 199 and math.isclose(row.delta_times_n, 0.199)
    assert row.level == "amber" and "not well below 1/n" in row.delta_warning
    assert "with n = 199 records, up to delta x n = 0.199" in report.decision.attacker
    html = render_html(report, figures=[])
    assert "not well below 1/n" in html and "0.199" in html
    # the example record now offers a delta well below 1/n for its 199 records
    example = load_processing_record(example_path())
    assert example.get("privacy_budget", "delta") * example.get("dataset", "records") < 0.01
    assert example.get("processing", "requester")


def test_the_overclaim_is_gone(weak_owner_level):
    html = render_html(weak_owner_level["report"], figures=[])
    assert "reveals almost nothing" not in html
    assert "reveals almost nothing" not in json.dumps(weak_owner_level["report"].document)


# --------------------------------------------------------------------------- empirical audit, Art. 32


def _regular_testing(report) -> dict:
    return next(m for m in report.gdpr["article_32"] if m["id"] == "regular_verification")


def test_an_empirical_audit_is_shown_beside_the_claim_and_is_art_32_evidence(tmp_path):
    path = _ledger(tmp_path, "oslo", 2, budget=9.0)
    plain = build_report([path], keys=tmp_path / "keys")
    assert plain.empirical_audit is None and _regular_testing(plain)["status"] == "partly met"
    result = {"audit": True, "experiment": "quickstart",
              "units": {"record": {"claimed_epsilon": 2.5, "lower_bound": 0.4, "confidence": 0.95},
                        "owner": {"claimed_epsilon": 30.0, "lower_bound": None}}}
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "result.json").write_text(json.dumps(result))
    audited = build_report([path], keys=tmp_path / "keys", empirical_audit=tmp_path / "audit" / "result.json")
    units = {u.privacy_unit: u for u in audited.empirical_audit.units}
    assert units["record"].lower_bound == 0.4 and not units["record"].exceeds_claim
    assert units["owner"].lower_bound is None and "not audited" in units["owner"].meaning
    # the owner-level audit's one-shot estimate (branch audit21): shown as an estimate, never as a bound
    owner_estimate = {**result, "units": {**result["units"], "owner": {"claimed_epsilon": 30.0, "estimate": 12.5,
                                                                       "lower_bound": None, "confidence": None}}}
    estimated = build_report([path], keys=tmp_path / "keys", empirical_audit=owner_estimate)
    owner_unit = next(u for u in estimated.empirical_audit.units if u.privacy_unit == "owner")
    assert owner_unit.estimate == 12.5 and "an estimate, not a bound" in owner_unit.meaning
    assert _regular_testing(audited)["status"] == "met"
    html = render_html(audited, figures=[])
    assert 'id="empirical"' in html and "not a guarantee" in html and "0.4" in html
    result["units"]["record"]["lower_bound"] = 3.1  # above the claim: the claim is wrong
    broken = build_report([path], keys=tmp_path / "keys", empirical_audit=result)
    assert _regular_testing(broken)["status"] == "failed"
    assert "EXCEEDS THE CLAIM" in render_html(broken, figures=[])


def test_the_per_owner_statement_carries_its_own_decision(weak_owner_level, tmp_path):
    statement = weak_owner_level["report"].for_owner("owner-001")
    assert {r.owner_id for r in statement.decision.rows} == {"owner-001"}
    assert statement.decision.level == "amber"
    html = write_html(statement, tmp_path / "owner.html", figures=[]).read_text()
    assert "owner-000" not in html[html.index('id="decision"'):html.index('id="attacker"')]


# --------------------------------------------------------------------------- no torch in a report


def test_a_whole_report_in_every_format_imports_neither_torch_nor_opacus(tmp_path):
    """A report trains nothing: torch and Opacus (about 3.6 s of a fresh process) stay unimported."""
    _ledger(tmp_path, "oslo", 3, budget=9.0)
    script = (
        "import sys\n"
        "from privfl.cli import main\n"
        f"for fmt in ('html', 'json', 'csv', 'pdf'):\n"
        f"    assert main(['report', {str(tmp_path / 'oslo.db')!r}, '--keys-dir', {str(tmp_path / 'keys')!r},"
        f" '--out', {str(tmp_path)!r} + '/r.' + fmt]) == 0\n"
        "print('heavy:', sorted(m for m in ('torch', 'opacus', 'flwr') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "heavy: []" in done.stdout, done.stdout
    assert all((tmp_path / f"r.{fmt}").stat().st_size > 0 for fmt in ("html", "json", "csv", "pdf"))


def test_the_rdp_analysis_loaded_without_torch_is_opacus_own():
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as opacus_rdp

    from privfl.privacy.accountants import opacus_backed

    assert opacus_backed.RDP_ORDERS == tuple(RDPAccountant.DEFAULT_ALPHAS)
    ours = opacus_backed.rdp_analysis.compute_rdp(q=0.07, noise_multiplier=1.3, steps=40,
                                                  orders=opacus_backed.RDP_ORDERS)
    theirs = opacus_rdp.compute_rdp(q=0.07, noise_multiplier=1.3, steps=40, orders=opacus_backed.RDP_ORDERS)
    assert list(ours) == list(theirs)
    assert opacus_backed.rdp_analysis.get_privacy_spent(orders=opacus_backed.RDP_ORDERS, rdp=ours, delta=1e-5) == \
        opacus_rdp.get_privacy_spent(orders=opacus_backed.RDP_ORDERS, rdp=theirs, delta=1e-5)


def test_a_report_with_infinite_epsilons_over_many_owners_still_draws(tmp_path):
    """Owners that trained without DP (their policy allows it) have an infinite record-level epsilon; with more
    owners than get a line each, the range chart used to fail on it ('Axis limits cannot be NaN or Inf')."""
    from privfl.privacy.events import NonPrivateRelease
    from privfl.privacy.report.plots import LINES_MAX_OWNERS

    paths, keys = [], {}
    for i in range(LINES_MAX_OWNERS + 3):
        owner = f"owner-{i}"
        pair = generate_owner_keys(tmp_path / "keys", owner)
        with OwnerLedger.open(tmp_path / f"{owner}.db", owner, load_private_key(pair.private_key)) as ledger:
            ledger.charge("exp-1", 1, RECORD_EVENT, clipping_norm=1.0, delta=DELTA, epsilon_budget=8.0,
                          accountant="rdp", purpose="p", update_hash=update_hash(f"{owner}/1".encode()))
            if i % 2:
                ledger.charge("exp-1", 2, NonPrivateRelease(), clipping_norm=0.0, delta=DELTA, epsilon_budget=8.0,
                              accountant="rdp", purpose="p", update_hash=update_hash(f"{owner}/2".encode()),
                              enforce_budget=False)
        paths.append(tmp_path / f"{owner}.db")
        keys[owner] = pair.public_key
    report = build_report(paths, keys=keys)
    assert any(math.isinf(o.epsilon_spent) for o in report.owners)
    html = write_html(report, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<img" in html or "<svg" in html
