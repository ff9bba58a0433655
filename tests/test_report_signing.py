"""A JSON report's content hash and Ed25519 signature: verified, and any tampering detected."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from privfl.privacy.keys import fingerprint, generate_owner_keys, load_private_key, load_public_key
from privfl.privacy.report import build_report, canonical_bytes, render_json, verify_report_json

from privfl.cli import main as cli_main
from tests.test_report import build_small_run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("signing-run")
    built = build_small_run(folder)
    built["dpo"] = generate_owner_keys(folder / "dpo", "dpo", passphrase="correct horse")
    built["other"] = generate_owner_keys(folder / "dpo", "other")
    return built


def _write(doc: dict, path: Path) -> Path:
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def test_content_hash_is_sha256_of_the_canonical_document(run):
    report = build_report(run["ledgers"] / "clinic-c.db")
    doc = json.loads(render_json(report))
    body = {k: v for k, v in doc.items() if k not in ("content_hash", "signature")}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert canonical_bytes(doc) == canonical
    assert doc["content_hash"]["algorithm"] == "sha256"
    assert doc["content_hash"]["value"] == hashlib.sha256(canonical).hexdigest()
    assert doc["signature"] is None
    assert verify_report_json(doc, accept_unsigned=True) == (True, "content hash matches; the report is not signed")
    ok, reason = verify_report_json(doc)  # unsigned is refused unless accepted explicitly (issue 20)
    assert not ok and "not signed" in reason


def test_signed_report_verifies_and_tampering_is_detected(run, tmp_path):
    key = load_private_key(run["dpo"].private_key, "correct horse")
    report = build_report(sorted(run["ledgers"].glob("*.db")), keys=run["keys"])
    signature = report.sign(key)
    assert signature.key_fingerprint == fingerprint(key)
    path = tmp_path / "report.json"
    path.write_text(render_json(report), encoding="utf-8")
    public = load_public_key(run["dpo"].public_key)
    ok, reason = verify_report_json(path, public)
    assert ok, reason
    ok, reason = verify_report_json(path)  # the key the report carries: says it is not independent
    assert ok and "supply the signer's public key" in reason
    ok, reason = verify_report_json(path, run["other"].public_key)
    assert not ok and "not by the given key" in reason

    doc = json.loads(path.read_text())
    edits = {
        "a figure": lambda d: d["owners"][0].__setitem__("epsilon_spent", 0.1),
        "the verdict": lambda d: d["status"].__setitem__("intact", not d["status"]["intact"]),
        "an owner removed": lambda d: d["owners"].pop(),
        "a problem hidden": lambda d: d["status"].__setitem__("problems", []) or d["status"]["warnings"].clear(),
    }
    for name, edit in edits.items():
        changed = json.loads(json.dumps(doc))
        edit(changed)
        ok, reason = verify_report_json(_write(changed, tmp_path / "edited.json"), public)
        assert not ok and "content hash mismatch" in reason, name
    # Re-hashing after an edit does not help: the signature covers the hash.
    forged = json.loads(json.dumps(doc))
    forged["owners"][0]["epsilon_spent"] = 0.1
    forged["content_hash"]["value"] = hashlib.sha256(canonical_bytes(forged)).hexdigest()
    ok, reason = verify_report_json(forged, public)
    assert not ok and "signature does not verify" in reason
    # Removing the signature is seen when the signer's key is given.
    unsigned = json.loads(json.dumps(doc))
    unsigned["signature"] = None
    ok, reason = verify_report_json(unsigned, public)
    assert not ok and "not signed" in reason


def test_cli_signs_with_a_passphrase_and_verifies(run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "signed.json"
    monkeypatch.setenv("DPO_KEY_PASS", "correct horse")
    assert cli_main(["report", str(run["folder"]), "--out", str(out), "--sign-key", str(run["dpo"].private_key),
                     "--key-passphrase-env", "DPO_KEY_PASS", "--jobs", "1"]) == 0
    doc = json.loads(out.read_text())
    assert doc["signature"]["key_fingerprint"] == run["dpo"].fingerprint
    assert cli_main(["report", "--verify-report", str(out), "--public-key", str(run["dpo"].public_key)]) == 0
    assert "OK" in capsys.readouterr().out
    doc["summary"]["owners"] += 1
    _write(doc, out)
    assert cli_main(["report", "--verify-report", str(out), "--public-key", str(run["dpo"].public_key)]) == 1
    assert "content hash mismatch" in capsys.readouterr().out
    # A wrong or missing passphrase is a usage error; nothing is written.
    monkeypatch.setenv("DPO_KEY_PASS", "wrong")
    assert cli_main(["report", str(run["folder"]), "--out", str(tmp_path / "x.json"), "--sign-key",
                     str(run["dpo"].private_key), "--key-passphrase-env", "DPO_KEY_PASS"]) == 2
    assert cli_main(["report", str(run["folder"]), "--out", str(tmp_path / "x.json"), "--sign-key",
                     str(run["dpo"].private_key)]) == 2
    assert not (tmp_path / "x.json").exists()


def test_html_and_pdf_name_the_json_hash(run, tmp_path):
    from privfl.privacy.report import render_html

    report = build_report(run["ledgers"] / "clinic-c.db")
    assert report.content_hash in render_html(report, figures=[])
