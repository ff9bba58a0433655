"""Owner signing keys: Ed25519, stored safely, loaded with clear errors."""

from __future__ import annotations

import hashlib
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from privfl.cli import main
from privfl.privacy import keys


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generate_save_load_roundtrip(tmp_path):
    key = keys.generate_key()
    private = keys.save_private_key(key, tmp_path / "o.key")
    public = keys.save_public_key(key, tmp_path / "o.pub")
    assert _mode(private) == 0o600
    assert b"BEGIN PRIVATE KEY" in private.read_bytes()
    assert b"BEGIN PUBLIC KEY" in public.read_bytes()
    loaded = keys.load_private_key(private)
    assert keys.public_key_bytes(loaded) == keys.public_key_bytes(key)
    assert keys.public_key_bytes(keys.load_public_key(public)) == keys.public_key_bytes(key)
    message = b"entry"
    keys.load_public_key(public).verify(loaded.sign(message), message)


def test_fingerprint_is_sha256_of_raw_public_key():
    key = keys.generate_key()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert keys.fingerprint(key) == hashlib.sha256(raw).hexdigest()
    assert keys.fingerprint(key) == keys.fingerprint(key.public_key())
    assert keys.fingerprint(key) != keys.fingerprint(keys.generate_key())


def test_passphrase_encryption(tmp_path):
    key = keys.generate_key()
    path = keys.save_private_key(key, tmp_path / "o.key", passphrase="correct horse")
    assert _mode(path) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    assert keys.fingerprint(keys.load_private_key(path, "correct horse")) == keys.fingerprint(key)
    with pytest.raises(keys.KeyFileError, match="wrong passphrase"):
        keys.load_private_key(path, "battery staple")
    with pytest.raises(keys.KeyFileError, match="is encrypted; give its passphrase"):
        keys.load_private_key(path)


def test_passphrase_for_plain_key_is_refused(tmp_path):
    path = keys.save_private_key(keys.generate_key(), tmp_path / "o.key")
    with pytest.raises(keys.KeyFileError, match="not encrypted"):
        keys.load_private_key(path, "something")


def test_not_a_key(tmp_path):
    junk = tmp_path / "junk.key"
    junk.write_text("hello\n")
    with pytest.raises(keys.KeyFileError, match="not a PEM private key"):
        keys.load_private_key(junk)
    with pytest.raises(keys.KeyFileError, match="not a PEM public key"):
        keys.load_public_key(junk)
    with pytest.raises(FileNotFoundError):
        keys.load_private_key(tmp_path / "missing.key")


def test_wrong_key_type(tmp_path):
    other = ec.generate_private_key(ec.SECP256R1())
    private = tmp_path / "ec.key"
    private.write_bytes(other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    public = tmp_path / "ec.pub"
    public.write_bytes(other.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(keys.KeyFileError, match="not an Ed25519 key"):
        keys.load_private_key(private)
    with pytest.raises(keys.KeyFileError, match="not an Ed25519 public key"):
        keys.load_public_key(public)


def test_private_and_public_files_mixed_up(tmp_path):
    key = keys.generate_key()
    private = keys.save_private_key(key, tmp_path / "o.key")
    public = keys.save_public_key(key, tmp_path / "o.pub")
    with pytest.raises(keys.KeyFileError, match="holds a private key"):
        keys.load_public_key(private)
    with pytest.raises(keys.KeyFileError, match="holds a public key"):
        keys.load_private_key(public)


def test_never_overwrites(tmp_path):
    first = keys.generate_owner_keys(tmp_path, "hospital-a")
    before = first.private_key.read_bytes()
    with pytest.raises(FileExistsError):
        keys.generate_owner_keys(tmp_path, "hospital-a")
    with pytest.raises(FileExistsError):
        keys.save_private_key(keys.generate_key(), first.private_key)
    assert first.private_key.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hospital-a.key", "hospital-a.pub"]  # no temp files left


@pytest.mark.parametrize("owner", ["", "../x", "a/b", ".hidden", "x" * 200, "spaced name"])
def test_owner_ids_that_cannot_name_a_file(tmp_path, owner):
    with pytest.raises(ValueError, match="owner id"):
        keys.generate_owner_keys(tmp_path, owner)


def test_cli_generate_with_passphrase(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PRIVFL_TEST_PASS", "s3cret")
    rc = main(["keys", "generate", "--out", str(tmp_path / "k"), "--owner", "bank-1",
               "--passphrase-env", "PRIVFL_TEST_PASS"])
    assert rc == 0
    out = capsys.readouterr().out
    private = tmp_path / "k" / "bank-1.key"
    assert _mode(private) == 0o600
    key = keys.load_private_key(private, "s3cret")
    assert keys.fingerprint(key) in out
    assert isinstance(keys.load_public_key(tmp_path / "k" / "bank-1.pub"), ed25519.Ed25519PublicKey)
    assert main(["keys", "fingerprint", str(tmp_path / "k" / "bank-1.pub")]) == 0
    assert capsys.readouterr().out.strip() == keys.fingerprint(key)


def test_cli_missing_passphrase_variable(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PRIVFL_UNSET_VAR", raising=False)
    rc = main(["keys", "generate", "--out", str(tmp_path), "--owner", "a", "--passphrase-env", "PRIVFL_UNSET_VAR"])
    assert rc == 2
    assert "PRIVFL_UNSET_VAR" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
