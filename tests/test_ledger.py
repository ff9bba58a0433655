"""The owner's ledger and the federation ledger: chained, signed, idempotent, durable."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privfl.privacy.accountants import get_accountant
from privfl.privacy.events import Gaussian
from privfl.privacy.events import PoissonSubsampledGaussian as Event
from privfl.privacy.keys import fingerprint, generate_key
from privfl.privacy.ledger import (
    GENESIS_HASH,
    BudgetExceeded,
    ChargeConflict,
    Entry,
    FederationLedger,
    LedgerError,
    LedgerKeyMismatch,
    NotALedgerError,
    OwnerLedger,
    ReceiptRejected,
    UnsupportedEvent,
    entry_hash,
    sign_entry,
    signature_problem,
    verify,
)
from privfl.privacy.ledger.entry import encode_entry
from privfl.privacy.ledger.epsilon import PrefixEpsilons
from privfl.privacy.ledger.store import LedgerStore
from tests.ledger_helpers import DELTA, RUN, build_ledger, charge, raw

# ---------------------------------------------------------------------------
# chain, signatures, epsilon


def test_entries_form_a_signed_hash_chain(tmp_path):
    key = build_ledger(tmp_path / "a.db", rounds=4)
    with OwnerLedger.open_readonly(tmp_path / "a.db") as ledger:
        entries = ledger.entries()
    assert [e.sequence for e in entries] == list(range(1, 6))
    assert entries[0].previous_hash == GENESIS_HASH == bytes(32)
    for before, after in zip(entries, entries[1:]):
        assert after.previous_hash == entry_hash(before.entry_bytes) == before.hash
    for entry in entries:
        assert entry.key_fingerprint == fingerprint(key)
        assert signature_problem(entry.signed_entry(), key.public_key()) is None
        assert Entry.from_signed(entry.signed_bytes()) == entry  # the receipt round-trips
    assert [e.kind for e in entries] == ["charge", "charge", "charge", "refusal", "charge"]
    assert all(e.privacy_unit == "record" and e.owner_id == "hospital-a" for e in entries)
    assert entries[3].update_hash == b"" and entries[3].refusal_reason
    assert len(entries[0].update_hash) == 32 and entries[0].purpose == "train test model"


noise = st.sampled_from([0.8, 1.0, 1.5, 2.5])
rate = st.sampled_from([0.01, 0.05, 0.2])


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(noise, rate, st.integers(1, 50)), min_size=1, max_size=8))
def test_stored_epsilon_equals_recomputed(rounds):
    with tempfile.TemporaryDirectory() as tmp:
        with OwnerLedger.open(Path(tmp) / "o.db", "o", generate_key()) as ledger:
            for r, (s, q, k) in enumerate(rounds):
                entry = charge(ledger, r, Event(s, q, k))
                recomputed = get_accountant("rdp").epsilon(ledger.events(), DELTA)
                assert entry.cumulative_epsilon == recomputed  # same function, same events: exact
            assert ledger.events() == [Event(s, q, k) for s, q, k in rounds]
            assert ledger.spent_epsilon("rdp") == entry.cumulative_epsilon
        assert verify(Path(tmp) / "o.db").ok


def test_pld_and_prv_ledgers_verify(tmp_path):
    for accountant in ("pld", "prv"):
        path = tmp_path / f"{accountant}.db"
        build_ledger(path, rounds=3, accountant=accountant)
        report = verify(path)
        assert report.ok, report.summary()
        assert report.epsilons_checked == 4


def test_switching_accountant_composes_all_charges(tmp_path):
    with OwnerLedger.open(tmp_path / "o.db", "o", generate_key()) as ledger:
        charge(ledger, 0, Event(1.0, 0.1, 50), accountant="rdp")
        second = charge(ledger, 1, Event(1.0, 0.1, 50), accountant="pld")
        assert second.cumulative_epsilon == pytest.approx(
            get_accountant("pld").epsilon([Event(1.0, 0.1, 100)], DELTA), rel=1e-9)
        assert ledger.spent_epsilon("pld") < ledger.spent_epsilon("rdp")
    assert verify(tmp_path / "o.db").ok


def test_recomputing_10000_events_with_rdp_is_fast():
    # 10,000 rounds drawn from a few settings: merge_repeats folds them (exactly).
    settings_ = [Event(1.1, 0.01, 10), Event(1.3, 0.02, 5), Event(0.9, 0.005, 20), Event(2.0, 0.1, 1)]
    events = [settings_[i % 4] for i in range(10_000)]
    accountant = get_accountant("rdp")
    start = time.perf_counter()
    epsilon = accountant.epsilon(events, DELTA)  # cold: includes computing the four RDP curves
    assert time.perf_counter() - start < 1.0
    start = time.perf_counter()
    assert accountant.epsilon(events, 2 * DELTA) < epsilon
    assert time.perf_counter() - start < 0.1  # warm
    # verify's path: the epsilon of every prefix, incrementally
    prefix = PrefixEpsilons()
    start = time.perf_counter()
    for event in events:
        prefix.add_charge(event)
    assert prefix.epsilon("rdp", DELTA) == pytest.approx(epsilon, rel=1e-9)
    assert time.perf_counter() - start < 1.0


# ---------------------------------------------------------------------------
# idempotency, refusals, budget


def test_recharging_a_release_returns_the_first_entry(tmp_path):
    with OwnerLedger.open(tmp_path / "o.db", "o", generate_key()) as ledger:
        first = charge(ledger, 7)
        again = charge(ledger, 7)
        assert again == first and len(ledger) == 1
        assert ledger.is_charged(RUN, 7) and not ledger.is_charged(RUN, 8)
        assert ledger.charge_for(RUN, 7) == first
        assert not ledger.is_charged("another-run", 7)
        charge(ledger, 7, run="another-run")
        assert len(ledger) == 2
        with pytest.raises(ChargeConflict, match="already charged"):
            charge(ledger, 7, Event(9.0, 0.05, 20))
        assert len(ledger) == 2


def test_refusals_never_count_and_are_idempotent(tmp_path):
    with OwnerLedger.open(tmp_path / "o.db", "o", generate_key()) as ledger:
        spent = charge(ledger, 0).cumulative_epsilon
        refusal = ledger.refuse(RUN, 1, "budget", delta=DELTA, epsilon_budget=5.0, accountant="rdp",
                                event=Event(0.1, 1.0, 1000))
        assert refusal.kind == "refusal" and refusal.cumulative_epsilon == spent
        assert refusal.event == Event(0.1, 1.0, 1000)  # what was asked for, recorded, not charged
        assert ledger.refuse(RUN, 1, "budget again", delta=DELTA, epsilon_budget=5.0, accountant="rdp") == refusal
        assert ledger.events() == [Event(1.5, 0.05, 20)]
        assert ledger.spent_epsilon("rdp") == spent
        assert len(ledger) == 2


def test_charge_past_budget_writes_nothing(tmp_path):
    with OwnerLedger.open(tmp_path / "o.db", "o", generate_key()) as ledger:
        ok = charge(ledger, 0, Event(1.0, 0.1, 20), budget=5.0)
        with pytest.raises(BudgetExceeded) as caught:
            charge(ledger, 1, Event(1.0, 0.1, 20), budget=5.0)
        assert caught.value.projected_epsilon > 5.0 >= ok.cumulative_epsilon
        assert len(ledger) == 1 and not ledger.is_charged(RUN, 1)
        # recorded over budget only when explicitly allowed (verify then notes it)
        charge(ledger, 1, Event(1.0, 0.1, 20), budget=5.0, enforce_budget=False)
    report = verify(tmp_path / "o.db")
    assert report.ok and any("past the budget" in n for n in report.notes)


def test_unknown_mechanism_is_refused_not_guessed(tmp_path):
    with OwnerLedger.open(tmp_path / "o.db", "o", generate_key()) as ledger:
        with pytest.raises(UnsupportedEvent):
            ledger.charge(RUN, 0, Gaussian(2.0), clipping_norm=1.0, delta=DELTA, epsilon_budget=5.0,
                          accountant="prv")  # PRV composes DP-SGD steps only
        assert len(ledger) == 0
        with pytest.raises(ValueError, match="unknown accountant"):
            charge(ledger, 0, accountant="gdp")


@pytest.mark.parametrize("bad", [dict(delta=0.0), dict(delta=1.0), dict(epsilon_budget=0.0),
                                 dict(clipping_norm=0.0), dict(update_hash=b"short"), dict(round=-1),
                                 dict(run_id="")])
def test_invalid_charges_are_refused(tmp_path, bad):
    args = dict(run_id=RUN, round=0, event=Event(1.0, 0.1, 1), clipping_norm=1.0, delta=DELTA,
                epsilon_budget=5.0, accountant="rdp", update_hash=bytes(32))
    args.update(bad)
    with OwnerLedger.open(tmp_path / "o.db", "o", generate_key()) as ledger:
        with pytest.raises(ValueError):
            ledger.charge(args.pop("run_id"), args.pop("round"), args.pop("event"), **args)
        assert len(ledger) == 0


# ---------------------------------------------------------------------------
# storage


def test_durable_settings_and_append_only_triggers(tmp_path):
    path = tmp_path / "o.db"
    with OwnerLedger.open(path, "o", generate_key()) as ledger:
        charge(ledger, 0)
        db = ledger._store._db
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    db = raw(path)
    for sql in ("UPDATE entries SET round = 5", "DELETE FROM entries", "UPDATE meta SET value = 'x'",
                "DELETE FROM keys",
                "INSERT OR REPLACE INTO entries (id, owner_id, sequence, run_id, round, kind, entry, signature, "
                "key_fingerprint) SELECT id, owner_id, sequence, run_id, round, kind, x'00', signature, "
                "key_fingerprint FROM entries",
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('owner_id', 'mallory')"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute(sql)
    db.close()
    assert verify(path).ok


def test_ledger_identity_is_checked_on_open(tmp_path):
    path = tmp_path / "o.db"
    key = build_ledger(path, rounds=1, owner="o")
    with pytest.raises(LedgerKeyMismatch, match="not with the key given"):
        OwnerLedger.open(path, "o", generate_key())
    with pytest.raises(LedgerError, match="belongs to owner_id 'o'"):
        OwnerLedger.open(path, "p", key)
    with pytest.raises(NotALedgerError, match="not a federation ledger"):
        FederationLedger.open(path)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(NotALedgerError):
        OwnerLedger.open(junk, "o", key)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(NotALedgerError, match="not a privfl ledger"):
        OwnerLedger.open(other, "o", key)
    assert not verify(junk).ok
    with OwnerLedger.open_readonly(path) as ledger:
        with pytest.raises(LedgerError, match="read-only"):
            charge(ledger, 9)


def _charge_then_hang(path: str, key_pem: bytes, ready) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    ledger = OwnerLedger.open(path, "o", load_pem_private_key(key_pem, None))
    charge(ledger, 3)
    ready.set()  # committed; the update would be released now
    time.sleep(60)


def _pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _context():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def test_killed_between_commit_and_release_leaves_exactly_one_entry(tmp_path):
    path, key = tmp_path / "o.db", generate_key()
    ctx = _context()
    ready = ctx.Event()
    child = ctx.Process(target=_charge_then_hang, args=(str(path), _pem(key), ready))
    child.start()
    try:
        assert ready.wait(60)
        os.kill(child.pid, signal.SIGKILL)  # no close, no checkpoint: the WAL holds the entry
    finally:
        child.join(10)
    with OwnerLedger.open(path, "o", key) as ledger:  # the round runs again
        assert len(ledger) == 1
        retried = charge(ledger, 3)
        assert retried.sequence == 1 and len(ledger) == 1
    assert verify(path, key.public_key()).ok


def _append_many(path: str, key_pem: bytes, worker: int, start, count: int) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    ledger = OwnerLedger.open(path, "o", load_pem_private_key(key_pem, None))
    start.wait(30)
    for i in range(count):
        charge(ledger, 1000 * worker + i, Event(1.0 + 0.01 * worker, 0.01, 5))
        if i % 4 == 0:
            charge(ledger, i, Event(1.0, 0.01, 5))  # the same releases from both workers
    ledger.close()


def test_two_processes_appending_never_fork_or_corrupt(tmp_path):
    path, key, count = tmp_path / "o.db", generate_key(), 40
    OwnerLedger.open(path, "o", key).close()
    ctx = _context()
    start = ctx.Event()
    workers = [ctx.Process(target=_append_many, args=(str(path), _pem(key), w, start, count)) for w in (1, 2)]
    for w in workers:
        w.start()
    start.set()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    with OwnerLedger.open_readonly(path) as ledger:
        entries = ledger.entries()
    shared = len(range(0, count, 4))
    assert len(entries) == 2 * count + shared
    assert [e.sequence for e in entries] == list(range(1, len(entries) + 1))
    assert len({(e.run_id, e.round) for e in entries}) == len(entries)  # each release charged once
    report = verify(path, key.public_key())
    assert report.ok, report.summary()


# ---------------------------------------------------------------------------
# the federation ledger


def test_federation_ledger_keeps_receipts_verbatim(tmp_path):
    key = build_ledger(tmp_path / "a.db", rounds=4, owner="a")
    other = build_ledger(tmp_path / "b.db", rounds=2, owner="b")
    with OwnerLedger.open_readonly(tmp_path / "a.db") as a, OwnerLedger.open_readonly(tmp_path / "b.db") as b:
        a_entries, b_entries = a.entries(), b.entries()
    with FederationLedger.open(tmp_path / "fed.db") as fed:
        fed.register_owner("a", key.public_key())
        fed.register_owner("b", other.public_key())
        for entry in a_entries + b_entries:
            assert fed.append_received(entry.signed_bytes()) == entry
        assert fed.append_received(a_entries[1].signed_bytes()) == a_entries[1]  # duplicate: no-op
        assert [e.entry_bytes for e in fed.entries("a")] == [e.entry_bytes for e in a_entries]
        assert fed.owner_ids() == ["a", "b"]
        assert fed.latest_epsilon("a") == a_entries[-1].cumulative_epsilon
    report = verify(tmp_path / "fed.db", {"a": key.public_key(), "b": other.public_key()})
    assert report.ok and report.keys_independently_supplied, report.summary()
    assert report.entries_checked == len(a_entries) + len(b_entries)
    assert verify(tmp_path / "a.db", anchors=a_entries).ok


def test_federation_ledger_rejects_bad_receipts(tmp_path):
    key = build_ledger(tmp_path / "a.db", rounds=3, owner="a", refusal=False)
    with OwnerLedger.open_readonly(tmp_path / "a.db") as a:
        entries = a.entries()
    forger = generate_key()
    with FederationLedger.open(tmp_path / "fed.db") as fed:
        with pytest.raises(ReceiptRejected, match="no registered public key"):
            fed.append_received(entries[0].signed_bytes())
        fed.register_owner("a", key.public_key())
        with pytest.raises(LedgerKeyMismatch):
            fed.register_owner("a", forger.public_key())
        with pytest.raises(ReceiptRejected, match="not a serialized SignedEntry"):
            fed.append_received(b"\xff\x00garbage")
        unsigned = entries[0].signed_entry()
        unsigned.signature = b""
        with pytest.raises(ReceiptRejected, match="signature"):
            fed.append_received(unsigned)
        with pytest.raises(ReceiptRejected, match="signed by key"):
            fed.append_received(sign_entry(entries[0].entry_bytes, forger))
        with pytest.raises(ReceiptRejected, match="registered with another key"):
            fed.append_received(entries[0].signed_entry(), forger.public_key())
        fed.append_received(entries[0].signed_bytes())
        fed.append_received(entries[2].signed_bytes())  # a gap is fine: the owner's chain continues elsewhere
        with pytest.raises(ReceiptRejected, match="older than"):
            fed.append_received(entries[1].signed_bytes())
        # a forked chain: a different, validly signed entry 3
        fork = encode_entry(sequence=3, previous_hash=entries[1].hash, run_id=RUN, round=99, owner_id="a",
                            kind="charge", event=Event(1.5, 0.05, 20), clipping_norm=1.0, privacy_unit="record",
                            delta=DELTA, accountant="rdp", cumulative_epsilon=entries[2].cumulative_epsilon,
                            epsilon_budget=1000.0, purpose="", update_hash=bytes(32), refusal_reason="")
        with pytest.raises(ReceiptRejected, match="forked"):
            fed.append_received(sign_entry(fork, key))
        # an understated epsilon, signed by the owner itself
        low = encode_entry(sequence=4, previous_hash=entries[2].hash, run_id=RUN, round=4, owner_id="a",
                           kind="charge", event=Event(1.5, 0.05, 20), clipping_norm=1.0, privacy_unit="record",
                           delta=DELTA, accountant="rdp", cumulative_epsilon=0.01, epsilon_budget=1000.0,
                           purpose="", update_hash=bytes(32), refusal_reason="")
        with pytest.raises(ReceiptRejected, match="less than"):
            fed.append_received(sign_entry(low, key))
        assert len(fed.entries("a")) == 2
    report = verify(tmp_path / "fed.db")
    assert report.ok and any("part of the owner's chain" in n for n in report.notes)
    assert not report.keys_independently_supplied


def test_verify_rejects_an_understated_epsilon_signed_by_the_owner(tmp_path):
    path = tmp_path / "o.db"
    key = build_ledger(path, rounds=3, refusal=False)
    store = LedgerStore.open_for_writing(path, "owner", {"owner_id": "hospital-a"})
    try:
        head = store.head("hospital-a")
        data = encode_entry(sequence=4, previous_hash=entry_hash(head.entry), run_id=RUN, round=50,
                            owner_id="hospital-a", kind="charge", event=Event(1.5, 0.05, 20), clipping_norm=1.0,
                            privacy_unit="record", delta=DELTA, accountant="rdp", cumulative_epsilon=0.5,
                            epsilon_budget=1000.0, purpose="", update_hash=bytes(32), refusal_reason="")
        signed = sign_entry(data, key)
        with store.write():
            store.insert(owner_id="hospital-a", sequence=4, run_id=RUN, round=50, kind=1, entry=data,
                         signature=signed.signature, key_fingerprint=signed.key_fingerprint)
    finally:
        store.close()
    report = verify(path, key.public_key())
    assert not report.ok
    assert report.problem.sequence == 4 and "compose to" in report.problem.reason
    assert verify(path, key.public_key(), epsilon_check="none").ok


# ---------------------------------------------------------------------------
# show and export


def test_cli_show_and_export(tmp_path, capsys):
    import csv
    import json

    from privfl.cli import main

    path = tmp_path / "o.db"
    key = build_ledger(path, rounds=3)
    assert main(["ledger", "show", str(path)]) == 0
    table = capsys.readouterr().out
    assert "hospital-a" in table and "refusal" in table and "sigma=1.2" in table
    assert main(["ledger", "show", str(path), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["ledger"] == {"ledger_kind": "owner", "owner_id": "hospital-a", "schema_version": "2"}
    assert [e["sequence"] for e in document["entries"]] == [1, 2, 3, 4]
    # the export carries the signed bytes: a third party can re-verify each entry from it
    import base64

    from privfl.protos import ledger_pb2

    for row in document["entries"]:
        signed = ledger_pb2.SignedEntry(entry=base64.b64decode(row["entry_base64"]),
                                        signature=bytes.fromhex(row["signature"]),
                                        key_fingerprint=row["key_fingerprint"])
        assert signature_problem(signed, key.public_key()) is None
    out = tmp_path / "export" / "ledger.csv"
    assert main(["ledger", "export", str(path), "--format", "csv", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 4 and rows[0]["kind"] == "charge" and rows[0]["noise_multiplier"] == "1.2"
    assert rows[2]["kind"] == "refusal" and rows[2]["refusal_reason"]
    assert main(["ledger", "export", str(path), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == document
    junk = tmp_path / "junk.db"
    junk.write_text("not a ledger")
    assert main(["ledger", "show", str(junk)]) == 2
    assert "not a" in capsys.readouterr().err
