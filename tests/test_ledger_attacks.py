"""What an attacker or an accident does *around* a ledger file is caught, by the command the docs name.

A real run (privfl's ServerApp and ClientApp, run in this process against real
ledgers, keys and registry; Flower's runtime is not what these tests are about) is
tampered with from outside privfl's code path: sqlite3 on the files, an older copy,
a flipped byte in a -wal file, an owner rewriting and re-signing its own history.
Each attack is then detected by ``privfl ledger verify`` (a file, or the whole run)
and by the next experiment on the same federation folder, which refuses the owner
with the reason instead of giving it a fresh budget.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from bench.inprocess_grid import run_apps
from privfl.cli import main as privfl
from privfl.client.app import app as client_app
from privfl.client.owner_ledger import close_owner_ledgers
from privfl.config import ExperimentConfig
from privfl.privacy.keys import generate_key, load_private_key, save_private_key
from privfl.privacy.ledger import OwnerLedger
from privfl.server.app import app as server_app
from privfl.server.run_dir import settle

OWNERS = 3


def _run(tmp: Path, name: str, federation: Path, rounds: int = 2) -> Path:
    config = settle(ExperimentConfig(num_owners=OWNERS, num_rounds=rounds, run_dir=str(tmp / name),
                                     federation_dir=str(federation), federated_evaluation="off"))
    run_apps(server_app, client_app, OWNERS, config.to_mapping())
    close_owner_ledgers()  # as a node process exits
    return tmp / name


@pytest.fixture
def world(tmp_path):
    federation = tmp_path / "federation"
    run = _run(tmp_path, "run-1", federation)
    return tmp_path, federation, run


def _owner_ledger(federation: Path, owner: str = "owner-1") -> Path:
    return federation / "owners" / owner / "ledger.db"


def _verify(capsys, *args) -> tuple[int, str]:
    code = privfl(["ledger", "verify", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out + out.err


def _owner_args(federation: Path, owner: str = "owner-1") -> list:
    return [_owner_ledger(federation, owner), "--public-key", federation / "coordinator" / "owner-keys" / f"{owner}.pub",
            "--registry", federation / "coordinator" / "registry.db",
            "--coordinator-key", federation / "coordinator" / "coordinator.pub"]


def _sql(path: Path, *statements: str) -> None:
    """What an attacker with the file does: drop the append-only guards and edit."""
    db = sqlite3.connect(path)
    try:
        for table in ("entries", "anchors"):
            for op in ("update", "delete", "replace"):
                db.execute(f"DROP TRIGGER IF EXISTS {table}_no_{op}")
        for statement in statements:
            db.execute(statement)
        db.commit()
    finally:
        db.close()


def _restore_triggers(path: Path) -> None:
    """Put the guards back, so the schema check alone does not give the attack away."""
    from privfl.privacy.ledger.store import SCHEMA

    db = sqlite3.connect(path)
    try:
        for statement in SCHEMA:
            if statement.startswith("CREATE TRIGGER") and any(f"{t}_no_" in statement for t in ("entries", "anchors")):
                db.execute(statement)
        db.commit()
    finally:
        db.close()


def _next_experiment_refuses(tmp_path, federation, capsys, expected: str) -> None:
    """The owner's own node refuses first (its head record); without that record, the coordinator's anchor does."""
    for name, reason in (("run-2", "but this node last wrote entry"), ("run-3", expected)):
        run = _run(tmp_path, name, federation, rounds=1)
        history = json.loads((run / "history.json").read_text())
        refusals = next(r["refused"] for r in history["rounds"] if r["round"] == 1)
        failures = " ".join(f for r in history["rounds"] for f in r["failures"])
        # an unsigned refusal is kept under the node that sent it, naming the owner it claims to serve
        unsigned = " ".join(r for r in refusals.values() if "names owner 'owner-1'" in r)
        assert reason in refusals.get("owner-1", "") + unsigned + failures, (refusals, failures)
        (federation / "owners" / "owner-1" / "signing.key.ledger-head").unlink()  # an owner that hides it


def test_an_untouched_run_verifies(world, capsys):
    tmp_path, federation, run = world
    code, out = _verify(capsys, run, "--federation", federation)
    assert code == 0 and "INTACT" in out and "NOT INTACT" not in out
    code, out = _verify(capsys, *_owner_args(federation))
    assert code == 0, out


def test_tail_truncation_is_caught(world, capsys):
    tmp_path, federation, run = world
    _sql(_owner_ledger(federation), "DELETE FROM entries WHERE sequence = 2")
    _restore_triggers(_owner_ledger(federation))
    code, out = _verify(capsys, *_owner_args(federation))
    assert code == 1 and "ends at entry 1, but the coordinator's registry accepted entry 2" in out
    code, out = _verify(capsys, run, "--federation", federation)
    assert code == 1 and "NOT INTACT" in out
    _next_experiment_refuses(tmp_path, federation, capsys, "does not hold entry 2")


def test_rollback_to_an_older_copy_is_caught(tmp_path, capsys):
    federation = tmp_path / "federation"
    _run(tmp_path, "run-1", federation, rounds=1)
    older = tmp_path / "older.db"
    shutil.copy(_owner_ledger(federation), older)  # a backup taken after round 1
    run = _run(tmp_path, "run-2", federation, rounds=1)
    shutil.copy(older, _owner_ledger(federation))  # ... restored after the next experiment
    code, out = _verify(capsys, *_owner_args(federation))
    assert code == 1 and "ends at entry 1, but the coordinator's registry accepted entry 2" in out
    assert _verify(capsys, run, "--federation", federation)[0] == 1
    _next_experiment_refuses(tmp_path / "again", federation, capsys, "does not hold entry 2")


def test_a_flipped_byte_in_the_wal_is_caught(world, capsys):
    tmp_path, federation, run = world
    # A copy taken while the owner's node had the ledger open: the newest entries are in its -wal.
    live = tmp_path / "live"
    live.mkdir()
    key = load_private_key(federation / "owners" / "owner-1" / "signing.key")
    ledger = OwnerLedger.open(_owner_ledger(federation), "owner-1", key)
    from privfl.privacy.events import PoissonSubsampledGaussian

    ledger.charge("other-experiment", 1, PoissonSubsampledGaussian(2.3, 0.5, 2), clipping_norm=1.0, delta=1e-5,
                  epsilon_budget=8.0, accountant="rdp")
    for suffix in ("", "-wal"):
        shutil.copy(f"{_owner_ledger(federation)}{suffix}", f"{live / 'ledger.db'}{suffix}")
    ledger.close()
    wal = live / "ledger.db-wal"
    data = bytearray(wal.read_bytes())
    data[-100] ^= 0x01
    wal.write_bytes(bytes(data))
    code, out = _verify(capsys, live / "ledger.db")
    assert code == 1 and "-wal file is damaged at frame" in out


def test_a_receipt_deleted_from_the_federation_ledger_is_caught(world, capsys):
    tmp_path, federation, run = world
    ledger = run / "ledgers" / "federation.db"
    _sql(ledger, "DELETE FROM entries WHERE owner_id = 'owner-1' AND sequence = 1")
    _restore_triggers(ledger)
    code, out = _verify(capsys, ledger, "--coordinator-key", federation / "coordinator" / "coordinator.pub")
    assert code == 1 and "names is missing in this file (a receipt was deleted or replaced)" in out
    code, out = _verify(capsys, run, "--federation", federation)
    assert code == 1 and "missing in this file" in out


def test_the_same_entry_deleted_from_both_ledgers_is_caught(world, capsys):
    tmp_path, federation, run = world
    _sql(_owner_ledger(federation), "DELETE FROM entries WHERE sequence = 2")
    _sql(run / "ledgers" / "federation.db", "DELETE FROM entries WHERE owner_id = 'owner-1' AND sequence = 2",
         "DELETE FROM anchors WHERE owner_id = 'owner-1' AND owner_sequence = 2")
    for path in (_owner_ledger(federation), run / "ledgers" / "federation.db"):
        _restore_triggers(path)
    code, out = _verify(capsys, run, "--federation", federation)
    assert code == 1 and "NOT INTACT" in out
    assert "accepted entry 2" in out or "anchors" in out


def test_an_owner_that_rewrites_and_re_signs_its_own_ledger_is_caught(world, capsys):
    """The owner's own key signs a history with less noise-free spend: only an outside anchor can tell."""
    tmp_path, federation, run = world
    path = _owner_ledger(federation)
    key = load_private_key(federation / "owners" / "owner-1" / "signing.key")
    rewritten = tmp_path / "rewritten.db"
    from privfl.privacy.events import PoissonSubsampledGaussian

    with OwnerLedger.open_readonly(path) as original, OwnerLedger.open(rewritten, "owner-1", key) as fake:
        for entry in original.entries():  # sigma 2.3 -> 9: the epsilon drops
            fake.charge(entry.run_id, entry.round, PoissonSubsampledGaussian(9.0, entry.event.sample_rate,
                                                                             entry.event.steps),
                        clipping_norm=entry.clipping_norm, delta=entry.delta, epsilon_budget=entry.epsilon_budget,
                        accountant=entry.accountant, purpose=entry.purpose, update_hash=entry.update_hash)
    shutil.copy(rewritten, path)
    code, out = _verify(capsys, path, "--public-key", federation / "coordinator" / "owner-keys" / "owner-1.pub")
    assert code == 0  # its own key and chain check out: this is why anchors exist
    code, out = _verify(capsys, *_owner_args(federation))
    assert code == 1 and "differs from the entry the coordinator's registry accepted" in out
    _next_experiment_refuses(tmp_path, federation, capsys, "holds a different entry")


def test_a_ledger_regenerated_under_a_new_key_is_caught(world, capsys):
    tmp_path, federation, run = world
    path = _owner_ledger(federation)
    new_key = generate_key()
    forged = tmp_path / "forged.db"
    with OwnerLedger.open_readonly(path) as original, OwnerLedger.open(forged, "owner-1", new_key) as fake:
        for entry in original.entries():
            fake.charge(entry.run_id, entry.round, entry.event, clipping_norm=entry.clipping_norm, delta=entry.delta,
                        epsilon_budget=entry.epsilon_budget, accountant=entry.accountant, purpose=entry.purpose,
                        update_hash=entry.update_hash)
    shutil.copy(forged, path)
    code, out = _verify(capsys, path)
    assert code == 0 and "not supplied independently" in out  # alone, the file vouches for itself
    code, out = _verify(capsys, *_owner_args(federation))
    assert code == 1 and "expected the owner's key" in out
    save_private_key(new_key, tmp_path / "attacker.key")  # the attacker's key cannot pass as registered


def test_expected_head_catches_a_truncation_without_a_registry(world, capsys):
    tmp_path, federation, run = world
    with OwnerLedger.open_readonly(_owner_ledger(federation)) as ledger:
        sequence, digest = ledger.head()
    _sql(_owner_ledger(federation), f"DELETE FROM entries WHERE sequence = {sequence}")
    _restore_triggers(_owner_ledger(federation))
    code, out = _verify(capsys, _owner_ledger(federation), "--expected-head", f"{sequence}:{digest.hex()}")
    assert code == 1 and f"but the expected head accepted entry {sequence}" in out


def test_two_experiments_on_one_federation_folder_compose_the_lifetime_spend(tmp_path):
    """The second experiment starts where the first ended; lifetime epsilon composes every event."""
    from privfl.privacy.accountants import get_accountant
    from privfl.privacy.audit import audit_run

    federation = tmp_path / "federation"
    first = _run(tmp_path, "run-1", federation, rounds=2)
    second = _run(tmp_path, "run-2", federation, rounds=2)
    audit = audit_run(second, federation_dir=federation)
    assert audit.ok, audit.summary()
    with OwnerLedger.open_readonly(_owner_ledger(federation)) as ledger:
        entries = ledger.entries()
        events = ledger.events()
    assert [e.sequence for e in entries] == [1, 2, 3, 4]
    assert {e.run_id for e in entries[:2]} != {e.run_id for e in entries[2:]}
    lifetime = get_accountant("pld").epsilon(events, 1e-5)
    assert entries[-1].cumulative_epsilon == pytest.approx(lifetime, rel=1e-9)
    spend = audit.epsilon["owner-1"]
    assert spend["lifetime"] == pytest.approx(lifetime, rel=1e-9)
    assert spend["experiment"] == pytest.approx(get_accountant("pld").epsilon(events[2:], 1e-5), rel=1e-9)
    assert spend["experiment"] < spend["lifetime"]
    assert audit_run(first, federation_dir=federation).ok
    # The registry links both experiments' heads per owner, contiguously.
    rounds = {r["round"]: r for r in json.loads((second / "history.json").read_text())["rounds"]}
    assert {r["sequence"] for r in rounds[1]["receipts"]} == {3}  # the second experiment continues the first's
    assert {r["sequence"] for r in rounds[2]["receipts"]} == {4}  # chains, for every owner
