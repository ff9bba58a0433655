"""One audit, one verdict: every command that judges a run says the same thing, exit code included.

Runs are real (privfl's ServerApp and ClientApp in this process, against real ledgers,
keys and registry; see tests/test_ledger_attacks.py), built once and copied per test.
Each test damages a copy from outside privfl (sqlite3, file copies, deletions) and
checks that ``privfl ledger verify RUN``, ``privfl report RUN`` and the report the run
writes at its end (the launcher's own closing step, ``_settle_run``) all say NOT INTACT,
exit 1 and name the owner.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench.inprocess_grid import run_apps
from privfl.cli import main as privfl
from privfl.client.app import app as client_app
from privfl.client.owner_ledger import close_owner_ledgers
from privfl.config import ExperimentConfig
from privfl.server.app import app as server_app
from privfl.server.run_dir import locate, settle
from privfl.simulations.launcher import _settle_run
from privfl.simulations.summary import run_problems
from tests.ledger_helpers import without_guards
from tests.owner_helpers import run_in_process

OWNERS = 3


def _run(run_dir: Path, federation: Path | None = None, rounds: int = 1) -> ExperimentConfig:
    return run_in_process(run_dir, federation, rounds, OWNERS)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """run-1 (its federation folder beside it, the default), then run-2 on the same federation folder; a copy of
    owner-1's ledger taken between them (for a rollback)."""
    root = tmp_path_factory.mktemp("one-verdict")
    _run(root / "run-1")
    shutil.copy(_ledger(root / "run-1", "owner-1"), root / "owner-1-after-run-1.db")
    _run(root / "run-2", root / "run-1.federation")
    return root


@pytest.fixture
def world(base, tmp_path) -> Path:
    shutil.copytree(base, tmp_path / "w")
    return tmp_path / "w"


def _ledger(run: Path, owner: str, federation: Path | None = None) -> Path:
    return (federation or run.with_name(run.name + ".federation")) / "owners" / owner / "ledger.db"


def _sql(path: Path, *statements: str) -> None:
    """What an attacker with the file does: drop the append-only guards, edit, put the guards back."""
    without_guards(path, *((statement, ()) for statement in statements))


def _verdicts(run: Path, capsys, *trust: str, config: ExperimentConfig | None = None) -> dict:
    """What each command says about ``run``: (exit code, text, owners named)."""
    code, out = privfl(["ledger", "verify", str(run), *trust]), capsys.readouterr()
    verify = (code, out.out + out.err)
    out_json = run.parent / f"{run.name}-report.json"
    code, out = privfl(["report", str(run), *trust, "--format", "json", "--out", str(out_json), "--jobs", "1"]), \
        capsys.readouterr()
    doc = json.loads(out_json.read_text())
    report = (code, out.out + out.err, doc["status"])
    # The end of `privfl simulate`: the launcher audits the run with its own layout and writes the report.
    config = config or ExperimentConfig.from_mapping(json.loads((run / "config.json").read_text()))
    where = locate(run, federation_dir=trust[1] if trust else None)
    result = _settle_run(config, where)
    written = json.loads((run / "report.json").read_text())["status"]
    simulate = (1 if run_problems(result) else 0, result.audit.verdict_line(), written)
    return {"verify": verify, "report": report, "simulate": simulate}


def _assert_not_intact(verdicts: dict, owner: str) -> None:
    verify_code, verify_text = verdicts["verify"]
    report_code, report_text, report_status = verdicts["report"]
    simulate_code, simulate_text, written = verdicts["simulate"]
    assert verify_code == report_code == simulate_code == 1, (verify_code, report_code, simulate_code)
    for text in (verify_text, report_text, simulate_text):
        assert "NOT INTACT" in text and "INTACT: run" not in text.replace("NOT INTACT: run", ""), text
        assert f"owners not intact: " in text and owner in text.split("owners not intact: ", 1)[1], text
    for status in (report_status, written):
        assert status["verdict"] == "NOT INTACT" and not status["intact"], status["headline"]
        assert owner in status["owners_not_intact"], status["owners_not_intact"]
        assert status["headline"].startswith("NOT INTACT") and owner in status["headline"]


def test_an_untouched_run_is_intact_everywhere(world, capsys):
    run = world / "run-1"
    verdicts = _verdicts(run, capsys)
    assert verdicts["verify"][0] == verdicts["report"][0] == verdicts["simulate"][0] == 0, verdicts
    assert verdicts["verify"][1].startswith("INTACT: run")
    assert verdicts["report"][2]["verdict"] == verdicts["simulate"][2]["verdict"] == "INTACT"


def test_a_deleted_owner_ledger_is_not_intact(world, capsys):
    run = world / "run-1"
    _ledger(run, "owner-1").unlink()
    verdicts = _verdicts(run, capsys)
    _assert_not_intact(verdicts, "owner-1")
    assert "owner owner-1's ledger" in verdicts["verify"][1] and "is missing" in verdicts["verify"][1]


def test_an_owner_ledger_replaced_by_another_owners_copy_is_not_intact(world, capsys):
    run = world / "run-1"
    shutil.copy(_ledger(run, "owner-2"), _ledger(run, "owner-1"))
    verdicts = _verdicts(run, capsys)
    _assert_not_intact(verdicts, "owner-1")
    assert "replaced by another owner's copy" in verdicts["verify"][1]


def test_a_rolled_back_owner_ledger_is_not_intact(world, capsys):
    run = world / "run-1"
    shutil.copy(world / "owner-1-after-run-1.db", _ledger(run, "owner-1"))
    _assert_not_intact(_verdicts(run, capsys), "owner-1")


def test_a_truncated_owner_ledger_is_not_intact(world, capsys):
    run = world / "run-1"
    _sql(_ledger(run, "owner-0"), "DELETE FROM entries WHERE sequence = (SELECT MAX(sequence) FROM entries)")
    _assert_not_intact(_verdicts(run, capsys), "owner-0")


def test_a_pruned_receipt_is_not_intact(world, capsys):
    run = world / "run-1"
    _sql(run / "ledgers" / "federation.db", "DELETE FROM entries WHERE owner_id = 'owner-2'")
    _assert_not_intact(_verdicts(run, capsys), "owner-2")


def test_the_same_entry_deleted_from_both_ledgers_is_not_intact(world, capsys):
    run = world / "run-2"
    federation = world / "run-1.federation"
    _sql(_ledger(run, "owner-1", federation), "DELETE FROM entries WHERE sequence = 2")
    _sql(run / "ledgers" / "federation.db", "DELETE FROM entries WHERE owner_id = 'owner-1' AND sequence = 2",
         "DELETE FROM anchors WHERE owner_id = 'owner-1' AND owner_sequence = 2")
    _assert_not_intact(_verdicts(run, capsys, "--federation", str(federation)), "owner-1")


def test_a_moved_copy_is_judged_by_its_own_files(base, tmp_path, capsys):
    """config.json of the copy still names the original folders: they must not be read."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copytree(base / "run-1", elsewhere / "run-1")
    shutil.copytree(base / "run-1.federation", elsewhere / "run-1.federation")
    copy = elsewhere / "run-1"
    assert str(base / "run-1.federation") in (copy / "config.json").read_text()  # it names the original
    _ledger(copy, "owner-2").unlink()
    verdicts = _verdicts(copy, capsys)
    _assert_not_intact(verdicts, "owner-2")
    assert str(base / "run-1.federation") not in verdicts["verify"][1]  # nothing of the original was read
    assert privfl(["ledger", "verify", str(base / "run-1")]) == 0  # the original is untouched
    capsys.readouterr()


def test_a_config_pointing_elsewhere_does_not_change_the_verdict(world, tmp_path, capsys):
    """Issue 24 item 5: the trust root comes from beside the run, never from config.json."""
    intact = tmp_path / "intact.federation"
    shutil.copytree(world / "run-1.federation", intact)
    run = world / "run-1"
    _sql(_ledger(run, "owner-0"), "DELETE FROM entries WHERE sequence = (SELECT MAX(sequence) FROM entries)")
    config = json.loads((run / "config.json").read_text())
    config.update({"federation-dir": str(intact), "coordinator-dir": str(intact / "coordinator")})
    (run / "config.json").write_text(json.dumps(config))
    _assert_not_intact(_verdicts(run, capsys), "owner-0")


def test_a_rollback_across_two_runs_on_one_federation_folder(tmp_path, capsys):
    """One owner rolled back to its state after run-1, another's ledger deleted; run-3 on the same federation
    folder refuses both, and its own report, verify and report agree: NOT INTACT, naming both.

    Built from scratch, not from a copy: a simulated owner's policy names its ledger by absolute path, so a run on
    a copied federation folder would append to the original's ledgers."""
    federation = tmp_path / "run-1.federation"
    _run(tmp_path / "run-1")
    shutil.copy(_ledger(tmp_path / "run-1", "owner-1"), tmp_path / "owner-1-after-run-1.db")
    _run(tmp_path / "run-2", federation)
    shutil.copy(tmp_path / "owner-1-after-run-1.db", _ledger(tmp_path / "run-1", "owner-1"))
    config = _run(tmp_path / "run-3", federation)
    # A simulated owner whose ledger is gone is refused at enrolment (no fresh lifetime budget), so run-3 could not
    # start with owner-2's ledger deleted: it is deleted after run-3.
    _ledger(tmp_path / "run-1", "owner-2").unlink()
    verdicts = _verdicts(tmp_path / "run-3", capsys, "--federation", str(federation), config=config)
    _assert_not_intact(verdicts, "owner-1")
    _assert_not_intact(verdicts, "owner-2")


def test_the_report_of_an_unfinished_run_sees_the_rounds_of_its_round_log(world, capsys):
    """One history reader: a crashed run's report replays history.jsonl, as the server and the audit do."""
    from privfl.privacy.report.history import load_history as report_history
    from privfl.server.history import load_history as server_history

    run = world / "run-1"
    assert (run / "history.jsonl").read_text().strip()
    data = json.loads((run / "history.json").read_text())
    data.update(status="running", rounds=[r for r in data["rounds"] if r["round"] < 1])
    (run / "history.json").write_text(json.dumps(data))
    replayed = server_history(run / "history.json")
    assert any(r["round"] == 1 for r in replayed["rounds"])
    assert report_history(run / "history.json")[0]["rounds"] == replayed["rounds"]


# --------------------------------------------------------------------------- signed by default


def _check(*args: str, capsys) -> tuple[int, str]:
    code = privfl(["report", "--verify-report", *args])
    return code, capsys.readouterr().out


def test_the_runs_report_is_signed_and_every_format_is_covered(world, tmp_path, capsys):
    import hashlib

    from privfl.privacy.keys import generate_owner_keys, load_private_key
    from privfl.privacy.report.signing import canonical_bytes, sign_content_hash

    run = world / "run-1"
    config = ExperimentConfig.from_mapping(json.loads((run / "config.json").read_text()))
    _settle_run(config, locate(run))  # what the end of `privfl simulate` writes
    doc = json.loads((run / "report.json").read_text())
    assert doc["signature"] and (run / "report.manifest.json").is_file()
    for name in ("report.json", "report.html", "report.pdf", "report.csv"):
        code, out = _check(str(run / name), capsys=capsys)
        assert code == 0 and "signer pinned" in out, out
    code, out = _check(str(run / "report.json"), "--regenerate", capsys=capsys)
    assert code == 0 and "every figure, verdict and problem is the same" in out, out
    # The HTML, PDF and CSV carry no hash of their own: the signed manifest does.
    html = (run / "report.html").read_bytes()
    (run / "report.html").write_bytes(html.replace(b"INTACT", b"INTACT!", 1))
    code, out = _check(str(run / "report.html"), capsys=capsys)
    assert code == 1 and "altered" in out, out

    # An edited figure: caught whether or not the hash was recomputed, and whoever re-signs it.
    spent = doc["owners"][0]
    spent["epsilon_spent"] = (spent.get("epsilon_spent") or 1.0) / 2
    (run / "report.json").write_text(json.dumps(doc))
    assert _check(str(run / "report.json"), capsys=capsys)[0] == 1
    doc["content_hash"]["value"] = hashlib.sha256(canonical_bytes(doc)).hexdigest()
    (run / "report.json").write_text(json.dumps(doc))
    code, out = _check(str(run / "report.json"), capsys=capsys)
    assert code == 1 and "signature does not verify" in out, out
    doc["signature"] = None  # unsigned: refused, even with the flag, since the run's coordinator key is pinned
    (run / "report.json").write_text(json.dumps(doc))
    assert _check(str(run / "report.json"), capsys=capsys)[0] == 1
    assert _check(str(run / "report.json"), "--accept-unsigned", capsys=capsys)[0] == 1
    forger = generate_owner_keys(tmp_path / "forger", "forger")
    doc["signature"] = json.loads(json.dumps(sign_content_hash(doc["content_hash"]["value"],
                                                               load_private_key(forger.private_key)).__dict__))
    (run / "report.json").write_text(json.dumps(doc))
    (run / "report.manifest.json").unlink()  # the forger drops the manifest it cannot sign
    assert _check(str(run / "report.json"), capsys=capsys)[0] == 1  # not the coordinator's key
    code, out = _check(str(run / "report.json"), "--public-key", str(forger.public_key), "--regenerate", capsys=capsys)
    assert code == 1 and "the report differs" in out and "owners[0]" in out, out


def test_an_unsigned_report_is_refused_unless_accepted(world, tmp_path, capsys):
    run = world / "run-1"
    out = tmp_path / "unsigned.json"
    assert privfl(["report", str(run), "--unsigned", "--out", str(out), "--jobs", "1"]) == 0
    capsys.readouterr()
    code, text = _check(str(out), capsys=capsys)
    assert code == 1 and "not signed" in text, text
    code, text = _check(str(out), "--accept-unsigned", capsys=capsys)
    assert code == 0, text


# --------------------------------------------------------------------------- one home per rule


def test_get_budget_answers_per_privacy_unit_with_both_units_charged(tmp_path):
    """The ledger service composed record-level and owner-level charges together against one budget (issue 20)."""
    import grpc

    from privfl.privacy.accountants import get_accountant
    from privfl.privacy.events import PoissonSubsampledGaussian
    from privfl.privacy.keys import generate_key
    from privfl.privacy.ledger import OwnerLedger
    from privfl.privacy.ledger.service import serve
    from privfl.protos import ledger_pb2, ledger_pb2_grpc

    record = [PoissonSubsampledGaussian(1.1, 0.05, 40), PoissonSubsampledGaussian(1.1, 0.05, 40)]
    owner = [PoissonSubsampledGaussian(2.0, 0.3, 1)]
    path = tmp_path / "both.db"
    with OwnerLedger.open(path, "st-mary", generate_key()) as ledger:
        for i, event in enumerate(record, start=1):
            ledger.charge("exp", i, event, clipping_norm=1.0, delta=1e-5, epsilon_budget=8.0, accountant="rdp",
                          privacy_unit="record")
        ledger.charge("exp/owner", 1, owner[0], clipping_norm=1.0, delta=1e-5, epsilon_budget=3.0,
                      accountant="rdp", privacy_unit="owner")
    server, port = serve(path, "127.0.0.1:0", insecure=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ledger_pb2_grpc.PrivacyLedgerStub(channel)
            by_unit = {unit: stub.GetBudget(ledger_pb2.GetBudgetRequest(privacy_unit=unit), timeout=60)
                       for unit in (ledger_pb2.PRIVACY_UNIT_RECORD, ledger_pb2.PRIVACY_UNIT_OWNER)}
            default = stub.GetBudget(ledger_pb2.GetBudgetRequest(), timeout=60)
    finally:
        server.stop(grace=None)
    rdp = get_accountant("rdp")
    rec, own = by_unit[ledger_pb2.PRIVACY_UNIT_RECORD], by_unit[ledger_pb2.PRIVACY_UNIT_OWNER]
    assert rec.epsilon_spent == pytest.approx(rdp.epsilon(record, 1e-5), rel=1e-9)
    assert (rec.epsilon_budget, rec.charges, rec.privacy_unit) == (8.0, 2, ledger_pb2.PRIVACY_UNIT_RECORD)
    assert own.epsilon_spent == pytest.approx(rdp.epsilon(owner, 1e-5), rel=1e-9)
    assert (own.epsilon_budget, own.charges, own.privacy_unit) == (3.0, 1, ledger_pb2.PRIVACY_UNIT_OWNER)
    assert own.epsilon_spent < rdp.epsilon([*record, *owner], 1e-5)  # never the two units composed together
    assert default.privacy_unit == ledger_pb2.PRIVACY_UNIT_OWNER and default.epsilon_spent == own.epsilon_spent


# --------------------------------------------------------------------------- runs end


@pytest.mark.parametrize("level", ["record", "owner"])
def test_a_run_in_which_every_owner_refuses_ends_with_a_clear_status(tmp_path, level):
    """Every owner refuses in round 1 (its budget is below one round's cost): the run ends there, in both
    strategies, instead of running (and, in a deployment, waiting out) every remaining round."""
    changes = dict(dp=True, epsilon_budget=0.01) if level == "record" else dict(
        dp=False, owner_dp=True, owner_noise_multiplier=1.2, owner_clipping_norm=1.0, owner_epsilon_budget=0.01)
    config = settle(ExperimentConfig(num_owners=OWNERS, num_rounds=40, run_dir=str(tmp_path / "run"),
                                     federated_evaluation="every", round_timeout=600.0, **changes))
    run_apps(server_app, client_app, OWNERS, config.to_mapping())
    close_owner_ledgers()
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["status"] == "finished"
    assert "every owner refused before round 2" in history["stopped"], history["stopped"]
    assert max(r["round"] for r in history["rounds"]) <= 2  # not 40 rounds of nobody
    refused = history["rounds"][1]["refused"] if history["rounds"][0]["round"] == 0 else history["rounds"][0]["refused"]
    assert len(refused) == OWNERS


@pytest.mark.e2e
def test_an_owner_level_run_in_which_every_owner_refuses_ends_in_flowers_simulation(tmp_path):
    """The same through Flower's simulation engine (SuperLink, Ray): the run ends after round 1, not after 30."""
    import time

    from privfl.simulations.launcher import run_simulation

    config = settle(ExperimentConfig(num_owners=OWNERS, num_rounds=30, run_dir=str(tmp_path / "run"),
                                     federated_evaluation="every", round_timeout=600.0, dp=False, owner_dp=True,
                                     owner_noise_multiplier=1.2, owner_clipping_norm=1.0, owner_epsilon_budget=0.01))
    started = time.monotonic()
    result = run_simulation(config, stream=False)
    assert time.monotonic() - started < 300
    history = result.history
    assert "every owner refused before round 2" in history["stopped"], history.get("stopped")
    assert max(r["round"] for r in history["rounds"]) <= 2
    assert result.audit is not None and result.audit.ok, result.audit.summary()


def test_a_federation_folder_is_judged_with_every_owner_it_knows(world, capsys):
    federation = world / "run-1.federation"
    assert privfl(["ledger", "verify", str(federation)]) == 0
    capsys.readouterr()
    _ledger(world / "run-1", "owner-2").unlink()
    assert privfl(["ledger", "verify", str(federation)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("NOT INTACT: federation folder") and "owners not intact: owner-2" in out, out


def test_the_ledger_service_refuses_a_ledger_behind_the_registry(world):
    """The service answers from the same audit: with the coordinator's registry, a truncated ledger gets no budget."""
    import grpc

    from privfl.privacy.keys import load_public_key
    from privfl.privacy.ledger.service import serve
    from privfl.protos import ledger_pb2, ledger_pb2_grpc

    run = world / "run-1"
    coordinator = world / "run-1.federation" / "coordinator"
    ledger = _ledger(run, "owner-0")
    _sql(ledger, "DELETE FROM entries WHERE sequence = (SELECT MAX(sequence) FROM entries)")
    answers = {}
    for name, trust in (("alone", {}), ("registry", {"registry": coordinator / "registry.db",
                                                      "coordinator_key": load_public_key(coordinator / "coordinator.pub")})):
        server, port = serve(ledger, "127.0.0.1:0", insecure=True, **trust)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = ledger_pb2_grpc.PrivacyLedgerStub(channel)
                try:
                    answers[name] = stub.GetBudget(ledger_pb2.GetBudgetRequest(), timeout=60)
                except grpc.RpcError as err:
                    answers[name] = err
        finally:
            server.stop(grace=None)
    assert isinstance(answers["alone"], ledger_pb2.GetBudgetResponse)  # a truncated chain is a valid chain
    refused = answers["registry"]
    assert isinstance(refused, grpc.RpcError) and refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "registry accepted entry" in refused.details(), refused.details()
