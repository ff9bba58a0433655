"""One home per rule (issue 20): every command gives the same verdict for the same input, and every caller of a
rule follows the rule's one home.

Runs are real (privfl's ServerApp and ClientApp in this process, real ledgers, keys and registry; see
tests/test_one_verdict.py).  Where a rule is pure arithmetic (0 < delta < 1, the least noise), the test makes the
rule's home stricter and checks that every caller follows it: a caller with its own copy would not.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from privfl.cli import main as privfl
from privfl.config import ExperimentConfig
from privfl.privacy.events import PoissonSubsampledGaussian
from privfl.privacy.keys import generate_key
from privfl.privacy.ledger import OwnerLedger
from tests.ledger_helpers import without_guards
from tests.owner_helpers import run_in_process

OWNERS = 3


def _run(run_dir: Path, federation: Path | None = None, rounds: int = 1) -> ExperimentConfig:
    return run_in_process(run_dir, federation, rounds, OWNERS)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rule-homes")
    _run(root / "run-1")
    return root


@pytest.fixture
def world(base, tmp_path) -> Path:
    shutil.copytree(base, tmp_path / "w")
    return tmp_path / "w"


def _federation(world: Path) -> Path:
    return world / "run-1.federation"


def _ledger(world: Path, owner: str) -> Path:
    return _federation(world) / "owners" / owner / "ledger.db"


def _sql(path: Path, *statements: str) -> None:
    """What an attacker with the file does: drop the append-only guards, edit, put the guards back."""
    without_guards(path, *((statement, ()) for statement in statements))


def _named(text: str) -> list[str]:
    line = next(line for line in text.splitlines() if "INTACT" in line)
    return line.split("owners not intact: ", 1)[1].split(", ") if "owners not intact: " in line else []


# --------------------------------------------------------------------------- one audit for a single ledger file


def test_ledger_verify_of_one_file_gives_the_one_audits_verdict(world, capsys):
    """`privfl ledger verify FILE --registry` goes through the one audit: the same verdict line (NOT INTACT, the
    owner named) and exit code as `privfl ledger verify RUN` for the same truncated ledger."""
    coordinator = _federation(world) / "coordinator"
    ledger = _ledger(world, "owner-0")
    _sql(ledger, "DELETE FROM entries WHERE sequence = (SELECT MAX(sequence) FROM entries)")
    run_code = privfl(["ledger", "verify", str(world / "run-1")])
    run_text = capsys.readouterr().out
    file_code = privfl(["ledger", "verify", str(ledger), "--registry", str(coordinator / "registry.db"),
                        "--coordinator-key", str(coordinator / "coordinator.pub"),
                        "--public-key", str(coordinator / "owner-keys" / "owner-0.pub")])
    file_text = capsys.readouterr().out
    assert run_code == file_code == 1, (run_code, file_code)
    assert run_text.startswith("NOT INTACT: run") and file_text.startswith(f"NOT INTACT: ledger {ledger}"), file_text
    assert _named(run_text) == _named(file_text) == ["owner-0"], (run_text, file_text)
    # --json: the same fields as for a run
    assert privfl(["ledger", "verify", str(ledger), "--registry", str(coordinator / "registry.db"), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "NOT INTACT" and list(doc["owners_not_intact"]) == ["owner-0"]


def test_a_damaged_registry_makes_one_ledger_not_intact_not_a_usage_error(world, capsys):
    """The registry a single file is judged against is part of the verdict: not intact -> NOT INTACT, exit 1 (as a
    run's audit says of a damaged registry), not a usage error (exit 2)."""
    coordinator = _federation(world) / "coordinator"
    _sql(coordinator / "registry.db", "DELETE FROM anchors WHERE sequence = 1")
    code = privfl(["ledger", "verify", str(_ledger(world, "owner-1")), "--registry", str(coordinator / "registry.db"),
                   "--coordinator-key", str(coordinator / "coordinator.pub")])
    out = capsys.readouterr().out
    assert code == 1 and out.startswith("NOT INTACT: ledger"), out
    assert "the coordinator's registry" in out and _named(out) == []  # the owner's own file is not blamed
    assert privfl(["ledger", "verify", str(world / "run-1")]) == 1
    capsys.readouterr()


def test_an_intact_file_says_what_it_was_checked_against(world, capsys):
    coordinator = _federation(world) / "coordinator"
    ledger = _ledger(world, "owner-2")
    assert privfl(["ledger", "verify", str(ledger)]) == 0
    alone = capsys.readouterr().out
    assert alone.startswith(f"INTACT: ledger {ledger}") and "checked on its own" in alone, alone
    assert privfl(["ledger", "verify", str(ledger), "--registry", str(coordinator / "registry.db"),
                   "--coordinator-key", str(coordinator / "coordinator.pub")]) == 0
    assert "checked against the registry" in capsys.readouterr().out


# --------------------------------------------------------------------------- report of a federation folder


def test_report_of_a_federation_folder_agrees_with_ledger_verify(world, tmp_path, capsys):
    federation = _federation(world)
    verdicts = {}
    for state in ("intact", "deleted"):
        if state == "deleted":
            _ledger(world, "owner-2").unlink()
        verify_code = privfl(["ledger", "verify", str(federation)])
        verify_line = capsys.readouterr().out.splitlines()[0]
        out = tmp_path / f"{state}.json"
        report_code = privfl(["report", str(federation), "--format", "json", "--out", str(out), "--jobs", "1"])
        report_err = capsys.readouterr().err
        status = json.loads(out.read_text())["status"]
        assert verify_line in report_err.splitlines(), (verify_line, report_err)  # the same verdict line
        verdicts[state] = (verify_code, report_code, status["verdict"], status["owners_not_intact"])
    assert verdicts["intact"][:3] == (0, 0, "INTACT"), verdicts
    assert verdicts["deleted"][:3] == (1, 1, "NOT INTACT") and "owner-2" in verdicts["deleted"][3], verdicts


# --------------------------------------------------------------------------- a deleted owner ledger before a run


def test_a_simulation_on_a_federation_folder_with_a_deleted_owner_ledger_refuses_naming_it(world, tmp_path,
                                                                                           capsys):
    """The next `privfl simulate` on the folder refuses before it starts (exit 1, NOT INTACT, the owner named), as
    the one audit judges the folder; it used to fail inside the ServerApp at enrolment with a traceback."""
    federation = _federation(world)
    _ledger(world, "owner-1").unlink()
    code = privfl(["simulate", "quickstart", "--set", f"num-owners={OWNERS}", "--set", "num-rounds=1",
                   "--run-dir", str(tmp_path / "next"), "--set", f"federation-dir={federation}"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "NOT INTACT: federation folder" in err and "owners not intact: owner-1" in err, err
    assert "Traceback" not in err and not (tmp_path / "next" / "history.json").exists()
    verify = privfl(["ledger", "verify", str(federation)])
    assert verify == code and "owners not intact: owner-1" in capsys.readouterr().out


def test_enrolment_refusal_names_only_owner_problems(world, tmp_path):
    from privfl.server.run_dir import Layout
    from privfl.simulations.owners import enrolment_refusal

    federation = _federation(world)
    where = Layout(tmp_path / "next", federation, federation / "coordinator")
    assert enrolment_refusal(where) is None
    assert enrolment_refusal(Layout(tmp_path / "n", tmp_path / "new.federation", tmp_path / "new.federation" /
                                    "coordinator")) is None  # nothing enrolled yet
    shutil.copy(_ledger(world, "owner-0"), _ledger(world, "owner-1"))  # another owner's copy
    assert "owners not intact: owner-1" in enrolment_refusal(where)


# --------------------------------------------------------------------------- spent per privacy unit


def _both_units(path: Path) -> tuple[list, list]:
    """Record-level charges at delta 1e-5 (budget 8, lowered to 6 by a later refusal), then owner-level charges at
    delta 1e-6 (budget 3): the latest entry is an owner-level one at another delta."""
    record = [PoissonSubsampledGaussian(1.1, 0.05, 40), PoissonSubsampledGaussian(1.1, 0.05, 40)]
    owner = [PoissonSubsampledGaussian(2.0, 0.3, 1), PoissonSubsampledGaussian(2.0, 0.3, 1)]
    with OwnerLedger.open(path, "st-mary", generate_key()) as ledger:
        for i, event in enumerate(record, start=1):
            ledger.charge("exp", i, event, clipping_norm=1.0, delta=1e-5, epsilon_budget=8.0, accountant="rdp",
                          privacy_unit="record")
        ledger.refuse("exp", 3, "the owner lowered its budget", delta=1e-5, epsilon_budget=6.0, accountant="rdp",
                      privacy_unit="record")
        for i, event in enumerate(owner, start=1):
            ledger.charge("exp/owner", i, event, clipping_norm=1.0, delta=1e-6, epsilon_budget=3.0,
                          accountant="rdp", privacy_unit="owner")
    return record, owner


def test_ledger_report_and_service_agree_on_spent_per_unit_with_both_units_charged(tmp_path):
    import grpc

    from privfl.privacy.accountants import get_accountant
    from privfl.privacy.budget import unit_spend
    from privfl.privacy.ledger.export import read_ledger
    from privfl.privacy.ledger.service import serve
    from privfl.privacy.report import build_report
    from privfl.protos import ledger_pb2, ledger_pb2_grpc

    path = tmp_path / "both.db"
    record, owner = _both_units(path)
    rdp = get_accountant("rdp")
    expected = {"record": (rdp.epsilon(record, 1e-5), 6.0), "owner": (rdp.epsilon(owner, 1e-6), 3.0)}
    entries = read_ledger(path)[1]
    with OwnerLedger.open_readonly(path) as ledger:
        by_ledger = {unit: ledger.spent_epsilon("rdp", unit=unit) for unit in expected}
    by_rule = {unit: unit_spend(entries, unit) for unit in expected}
    statement = build_report([path]).owners[0]
    by_report = {u.privacy_unit: u for u in statement.units}
    server, port = serve(path, "127.0.0.1:0", insecure=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ledger_pb2_grpc.PrivacyLedgerStub(channel)
            by_service = {unit: stub.GetBudget(ledger_pb2.GetBudgetRequest(privacy_unit=proto), timeout=60)
                          for unit, proto in (("record", ledger_pb2.PRIVACY_UNIT_RECORD),
                                              ("owner", ledger_pb2.PRIVACY_UNIT_OWNER))}
    finally:
        server.stop(grace=None)
    for unit, (epsilon, budget) in expected.items():
        figures = {"ledger": by_ledger[unit], "rule": by_rule[unit].epsilon, "report": by_report[unit].epsilon_spent,
                   "service": by_service[unit].epsilon_spent}
        for name, value in figures.items():
            assert value == pytest.approx(epsilon, rel=1e-9), (unit, name, figures)
        budgets = {"rule": by_rule[unit].budget, "report": by_report[unit].epsilon_budget,
                   "service": by_service[unit].epsilon_budget}
        assert set(budgets.values()) == {budget}, (unit, budgets)  # the latest entry's: the owner lowered it


# --------------------------------------------------------------------------- 0 < delta < 1 and the least noise


def _delta_refused_by(tmp_path: Path, capsys) -> dict[str, bool]:
    """For delta 0.01: which entry point refuses it."""
    from privfl.cli import build_parser
    from privfl.datafiles import check_owner_file
    from privfl.privacy.accountants import get_accountant
    from privfl.privacy.empirical.one_shot import gaussian_epsilon
    from privfl.settings import probability_delta

    data = tmp_path / "owner.csv"
    data.write_text("x,label\n" + "".join(f"{i},{i % 2}\n" for i in range(10)))
    refused: dict[str, bool] = {}

    def raises(name, call, errors=(ValueError,)):
        try:
            call()
            refused[name] = False
        except errors:
            refused[name] = True

    event = PoissonSubsampledGaussian(1.0, 0.1, 10)
    raises("pld", lambda: get_accountant("pld").epsilon([event], 0.01))
    raises("data file", lambda: check_owner_file(data, delta=0.01))
    raises("empirical", lambda: gaussian_epsilon(1.0, 0.01))
    raises("data --delta", lambda: build_parser().parse_args(["data", "check", str(data), "--delta", "0.01"]),
           (SystemExit,))
    refused["config/policy"] = probability_delta(0.01) is not None
    refused["accountant epsilon"] = privfl(["accountant", "epsilon", "--noise-multiplier", "1", "--sample-rate",
                                            "0.1", "--steps", "10", "--delta", "0.01"]) == 2
    capsys.readouterr()
    return refused


def test_every_delta_check_follows_the_one_home(tmp_path, capsys, monkeypatch):
    """Each entry point takes delta 0.01 today; with the home's rule made stricter (delta <= 1e-3) every one of
    them refuses it: none keeps a copy of the rule."""
    from privfl.privacy import budget

    assert not any(_delta_refused_by(tmp_path, capsys).values())
    real = budget.check_delta

    def stricter(delta):
        real(delta)
        if delta > 1e-3:
            raise ValueError(f"delta must be <= 1e-3 here, got {delta}")
        return float(delta)

    monkeypatch.setattr(budget, "check_delta", stricter)
    refused = _delta_refused_by(tmp_path, capsys)
    assert all(refused.values()), refused


def _noise_refused_by(noise: float) -> dict[str, bool]:
    from privfl.privacy.budget import noise_problem
    from privfl.privacy.ledger.federation import event_bound_problem
    from privfl.protocol import TrainingPlan, plan_value_problem

    plan = TrainingPlan(local_epochs=1, batch_size=32, learning_rate=0.1, momentum=0.0, dp=True,
                        noise_multiplier=noise, max_grad_norm=1.0, grad_sample_mode="hooks")
    return {"request": plan_value_problem(plan) is not None,
            "coordinator": event_bound_problem(PoissonSubsampledGaussian(noise, 0.1, 10)) is not None,
            "owner": noise_problem(noise, 0.0) is not None}


@pytest.mark.parametrize("noise", [0.05, 0.0999])
def test_the_least_noise_is_one_check_for_request_coordinator_and_owner(noise, monkeypatch):
    """Below LEAST_NOISE the request check, the coordinator's receipt check and the owner's noise check all refuse
    (the owner's check let 0.05 through when its policy's minimum was lower); with the floor raised in its home
    every one follows."""
    from privfl.privacy import events

    assert all(_noise_refused_by(noise).values()), _noise_refused_by(noise)
    assert not any(_noise_refused_by(0.3).values()), _noise_refused_by(0.3)
    monkeypatch.setattr(events, "LEAST_NOISE", 0.5)
    assert all(_noise_refused_by(0.3).values()), _noise_refused_by(0.3)
    assert not any(_noise_refused_by(0.6).values())


# --------------------------------------------------------------------------- the budget rule in planning


def test_planning_refuses_exactly_when_nothing_fits_the_budget():
    from privfl.privacy.accountants import get_accountant
    from privfl.privacy.planning import plan_noise

    spent = [PoissonSubsampledGaussian(1.0, 0.1, 50)]
    spent_epsilon = get_accountant("rdp").epsilon(spent, 1e-5)
    common = dict(accountant="rdp", target_epsilon=1.0, delta=1e-5, records=100, batch_size=10, local_epochs=1,
                  rounds=3, spent=spent)
    for budget in (spent_epsilon, spent_epsilon * 0.99):
        with pytest.raises(ValueError, match="spent already"):
            plan_noise(**common, budget=budget)
    plan = plan_noise(**common, budget=spent_epsilon * 1.5)
    assert plan.lifetime_epsilon <= spent_epsilon * 1.5 and math.isfinite(plan.noise_multiplier)


@pytest.mark.parametrize("key", ["noise-multiplier", "owner-noise-multiplier"])
def test_an_experiment_asking_for_less_than_the_least_noise_is_refused_before_it_starts(key):
    """Every owner refuses noise below LEAST_NOISE; a config that asks for it is an error up front, not a run
    in which every owner refuses every round."""
    from privfl.config import ConfigError, ExperimentConfig
    from privfl.privacy.events import LEAST_NOISE

    extra = {"owner-dp": True} if key.startswith("owner") else {}
    with pytest.raises(ConfigError, match=f"{key} = 0.05 is below {LEAST_NOISE:g}"):
        ExperimentConfig.from_mapping({key: 0.05, **extra})
    ExperimentConfig.from_mapping({key: LEAST_NOISE, **extra})
