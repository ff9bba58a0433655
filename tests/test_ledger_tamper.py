"""verify detects every edit, deletion, reordering, insertion and re-signing of a ledger.

Two attack surfaces:
- the file's bytes: any single-byte change is either reported by verify, or it
  landed in bytes that hold no ledger data (SQLite's free space, counters in its
  header) and the ledger's content is byte-for-byte what it was;
- the rows, edited through SQLite by someone who drops the append-only triggers
  and puts them back afterwards, so only signatures and the chain can tell.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privfl.cli import main
from privfl.privacy.keys import generate_key, save_public_key
from privfl.privacy.ledger import FederationLedger, OwnerLedger, sign_entry, verify
from privfl.privacy.ledger.chain import entry_hash
from tests.ledger_helpers import build_ledger, raw, without_guards

OWNER = "hospital-a"
ROUNDS = 6  # 7 entries: 6 charges and a refusal (entry 5)


class Original(tuple):
    """(path, key, file bytes), with a short repr for hypothesis's failure reports."""

    def __repr__(self) -> str:
        return f"Original({self[0]}, {len(self[2])} bytes)"


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ledger")
    path = folder / "original.db"
    key = build_ledger(path, rounds=ROUNDS, owner=OWNER)
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    report = verify(path, key.public_key())
    assert report.ok and report.entries_checked == ROUNDS + 1, report.summary()
    return Original((path, key, path.read_bytes()))


@pytest.fixture
def copy(original, tmp_path):
    path, key, _ = original
    target = tmp_path / "ledger.db"
    shutil.copyfile(path, target)
    return target, key


def rows(path: Path) -> list[tuple]:
    db = raw(path)
    try:
        return db.execute("SELECT id, owner_id, sequence, run_id, round, kind, entry, signature, key_fingerprint "
                          "FROM entries ORDER BY sequence").fetchall()
    finally:
        db.close()


def _sorted(rows) -> list:
    return sorted(rows, key=repr)  # a byte flip can change a value's type: sort anything


def content(path: Path):
    """Everything the ledger records, read through SQLite (row ids excepted: storage order only)."""
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return (
                db.execute("PRAGMA application_id").fetchone(), db.execute("PRAGMA user_version").fetchone(),
                _sorted(db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")),
                _sorted(db.execute("SELECT key, value FROM meta")),
                _sorted(db.execute("SELECT fingerprint, owner_id, public_key FROM keys")),
                _sorted(db.execute("SELECT owner_id, sequence, run_id, round, kind, entry, signature, key_fingerprint "
                                  "FROM entries")),
            )
        finally:
            db.close()
    except (sqlite3.DatabaseError, UnicodeDecodeError):
        return None


def write_variant(folder: Path, data: bytes, name: str = "variant.db") -> Path:
    path = folder / name
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------
# the file's bytes


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_byte_change_is_detected_or_changes_nothing(original, tmp_path, data):
    path, key, pristine = original
    offset = data.draw(st.integers(0, len(pristine) - 1), label="offset")
    mask = data.draw(st.integers(1, 255), label="xor")
    changed = bytearray(pristine)
    changed[offset] ^= mask
    variant = write_variant(tmp_path, bytes(changed))
    report = verify(variant, key.public_key())
    if report.ok:  # only acceptable if the byte held no ledger data
        assert content(variant) == content(path), f"undetected change at byte {offset}"


def test_every_byte_of_stored_entries_and_signatures_is_protected(original, tmp_path):
    path, key, pristine = original
    stored = rows(path)
    assert stored[4][5] == 2  # kind: the refusal
    targets = []
    for row in (stored[0], stored[4], stored[-1]):  # first charge, the refusal, the head
        for blob in (row[6], row[7]):  # entry bytes, signature
            start = pristine.find(blob)
            assert start >= 0 and pristine.find(blob, start + 1) == -1
            targets.extend(range(start, start + len(blob)))
    for offset in targets:
        changed = bytearray(pristine)
        changed[offset] ^= 0x01
        report = verify(write_variant(tmp_path, bytes(changed)), key.public_key())
        assert not report.ok, f"undetected change at byte {offset}"


def test_truncated_or_garbage_file(original, tmp_path):
    path, key, pristine = original
    for data in (pristine[: len(pristine) // 2], pristine[:100], b"", b"\x00" * 4096):
        report = verify(write_variant(tmp_path, data), key.public_key())
        assert not report.ok


# ---------------------------------------------------------------------------
# the rows


def flip_entry_byte(path, seq, at=10):
    entry = bytearray(rows(path)[seq - 1][6])
    entry[at % len(entry)] ^= 0x01
    without_guards(path, ("UPDATE entries SET entry = ? WHERE sequence = ?", (bytes(entry), seq)))


def flip_signature_byte(path, seq, at=0):
    signature = bytearray(rows(path)[seq - 1][7])
    signature[at % 64] ^= 0x80
    without_guards(path, ("UPDATE entries SET signature = ? WHERE sequence = ?", (bytes(signature), seq)))


def delete_entry(path, seq):
    without_guards(path, ("DELETE FROM entries WHERE sequence = ?", (seq,)))


def swap_positions(path, seq):
    other = seq % (ROUNDS + 1) + 1
    without_guards(path, ("UPDATE entries SET sequence = -1 WHERE sequence = ?", (seq,)),
                   ("UPDATE entries SET sequence = ? WHERE sequence = ?", (seq, other)),
                   ("UPDATE entries SET sequence = ? WHERE sequence = -1", (other,)))


def swap_contents(path, seq):
    other = seq % (ROUNDS + 1) + 1
    a, b = rows(path)[seq - 1], rows(path)[other - 1]
    without_guards(path, ("UPDATE entries SET entry = ?, signature = ? WHERE sequence = ?", (b[6], b[7], seq)),
                   ("UPDATE entries SET entry = ?, signature = ? WHERE sequence = ?", (a[6], a[7], other)))


def insert_copy(path, seq):
    """Shift the entries from ``seq`` on and put a copy of entry ``seq`` in the gap."""
    r = rows(path)[seq - 1]
    without_guards(path, ("UPDATE entries SET sequence = sequence + 1000 WHERE sequence >= ?", (seq,)),
                   ("UPDATE entries SET sequence = sequence - 999 WHERE sequence >= 1000", ()),
                   ("INSERT INTO entries (owner_id, sequence, run_id, round, kind, entry, signature, key_fingerprint) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (r[1], seq, r[3], r[4] + 500, r[5], r[6], r[7], r[8])))


def resign_with_another_key(path, seq):
    r = rows(path)[seq - 1]
    signed = sign_entry(r[6], generate_key())
    without_guards(path, ("UPDATE entries SET signature = ?, key_fingerprint = ? WHERE sequence = ?",
                          (signed.signature, signed.key_fingerprint, seq)))


def flip_kind(path, seq):
    """A charge recorded as a refusal, or the other way round (in the column only)."""
    without_guards(path, ("UPDATE entries SET kind = 3 - kind WHERE sequence = ?", (seq,)))


def edit_column(column, value):
    def edit(path, seq):
        without_guards(path, (f"UPDATE entries SET {column} = ? WHERE sequence = ?", (value, seq)))
    edit.__name__ = f"edit_{column}"
    return edit


ROW_EDITS = [flip_entry_byte, flip_signature_byte, swap_positions, swap_contents, insert_copy,
             resign_with_another_key, edit_column("run_id", "forged-run"), edit_column("round", 4242), flip_kind,
             edit_column("owner_id", "hospital-b")]


@pytest.mark.parametrize("edit", ROW_EDITS, ids=lambda e: e.__name__)
@pytest.mark.parametrize("seq", [1, 4, 5, ROUNDS + 1])  # first, a charge, the refusal, the head
def test_row_edits_are_detected_at_the_edited_entry(copy, edit, seq):
    path, key = copy
    edit(path, seq)
    for keys_given in (key.public_key(), None):  # with the owner's key, and with the ledger's own
        report = verify(path, keys_given)
        assert not report.ok, f"{edit.__name__} at {seq} went unnoticed"
        if edit.__name__ in ("swap_positions", "swap_contents"):
            assert report.problem.sequence in (seq, seq % (ROUNDS + 1) + 1)
        elif edit.__name__ != "edit_owner_id":
            assert report.problem.sequence == seq, report.summary()


@pytest.mark.parametrize("seq", [1, 2, 4, ROUNDS])
def test_deleting_an_entry_is_detected(copy, seq):
    path, key = copy
    delete_entry(path, seq)
    report = verify(path, key.public_key())
    assert not report.ok
    assert report.problem.sequence == seq + 1 and "missing" in report.problem.reason


def test_deleting_the_last_entries_needs_an_outside_copy(copy, tmp_path):
    path, key = copy
    with OwnerLedger.open_readonly(path) as ledger:
        receipts = ledger.entries()
    with FederationLedger.open(tmp_path / "fed.db") as fed:
        fed.register_owner(OWNER, key.public_key())
        for entry in receipts:
            fed.append_received(entry.signed_bytes())
    delete_entry(path, ROUNDS + 1)
    delete_entry(path, ROUNDS)
    assert verify(path, key.public_key()).ok  # a shorter chain is still a valid chain...
    report = verify(path, key.public_key(), anchors=receipts, anchors_source="the federation ledger")
    assert not report.ok and report.problem.sequence == ROUNDS  # ...but not the one the server holds
    assert "federation ledger" in report.problem.reason


def test_inserting_a_forged_entry_at_the_head(copy):
    path, key = copy
    head = rows(path)[-1]
    forger = generate_key()
    from privfl.privacy.ledger.entry import encode_entry
    from privfl.privacy.events import PoissonSubsampledGaussian

    data = encode_entry(sequence=ROUNDS + 2, previous_hash=entry_hash(head[6]), run_id="run-1", round=77,
                        owner_id=OWNER, kind="charge", event=PoissonSubsampledGaussian(50.0, 0.01, 1),
                        clipping_norm=1.0, privacy_unit="record", delta=1e-5, accountant="rdp",
                        cumulative_epsilon=0.0, epsilon_budget=1000.0, purpose="", update_hash=bytes(32),
                        refusal_reason="")
    signed = sign_entry(data, forger)
    db = raw(path)  # appending needs no trigger dropped
    db.execute("INSERT INTO entries (owner_id, sequence, run_id, round, kind, entry, signature, key_fingerprint) "
               "VALUES (?, ?, 'run-1', 77, 1, ?, ?, ?)", (OWNER, ROUNDS + 2, data, signed.signature,
                                                         signed.key_fingerprint))
    db.close()
    report = verify(path)
    assert not report.ok and report.problem.sequence == ROUNDS + 2 and "signed by key" in report.problem.reason


def test_a_ledger_rewritten_under_another_key_needs_the_owners_key(tmp_path, original):
    _, key, _ = original
    impostor = tmp_path / "impostor.db"
    build_ledger(impostor, rounds=ROUNDS, owner=OWNER)  # same owner id, another key
    lenient = verify(impostor)
    assert lenient.ok and not lenient.keys_independently_supplied
    assert "not supplied independently" in lenient.summary()
    strict = verify(impostor, key.public_key())
    assert not strict.ok and strict.problem.sequence == 1 and strict.keys_independently_supplied


def test_removed_guards_and_edited_metadata_are_reported(copy):
    path, key = copy
    db = raw(path)
    db.execute("DROP TRIGGER entries_no_delete")
    db.close()
    report = verify(path, key.public_key())
    assert not report.ok and "schema" in report.problem.reason


def test_edited_owner_in_metadata(copy):
    path, key = copy
    without_guards(path, ("UPDATE meta SET value = 'hospital-b' WHERE key = 'owner_id'", ()))
    assert not verify(path, key.public_key()).ok


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edit=st.sampled_from(ROW_EDITS + [delete_entry]), seq=st.integers(1, ROUNDS + 1))
def test_random_row_edits_are_detected(original, tmp_path, edit, seq):
    path, key, pristine = original
    variant = write_variant(tmp_path, pristine)
    if edit is delete_entry and seq == ROUNDS + 1:
        seq = ROUNDS  # the head alone is the truncation case, tested with anchors above
    edit(variant, seq)
    assert not verify(variant, key.public_key()).ok


# ---------------------------------------------------------------------------
# the command line


def test_cli_verify_exit_codes(copy, tmp_path, capsys):
    path, key = copy
    public = save_public_key(key, tmp_path / "owner.pub")
    assert main(["ledger", "verify", str(path), "--public-key", str(public)]) == 0
    assert "INTACT" in capsys.readouterr().out
    flip_entry_byte(path, 3)
    assert main(["ledger", "verify", str(path), "--public-key", str(public)]) == 1
    out = capsys.readouterr().out
    assert "NOT INTACT" in out and f"first bad entry: owner {OWNER}, entry 3" in out
    assert main(["ledger", "verify", str(tmp_path / "missing.db")]) == 2
