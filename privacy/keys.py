"""An owner's Ed25519 signing keys: generate, store, load, fingerprint.

The private key signs the owner's ledger entries; the public key is what the server
registers for the owner and what an auditor verifies the ledger against.

Files (both PEM):
- private key: PKCS#8, file mode 0600, optionally encrypted with a passphrase
  (``BestAvailableEncryption``); created exclusively, never silently overwritten;
- public key: SubjectPublicKeyInfo.

A key's fingerprint is the hex sha256 of its raw 32-byte public key; ledger entries
name their signer by it.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from privfl.privacy.files import replaceable_by_others, write_file_atomically

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"
_OWNER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # used with fullmatch: '$' would accept a final newline


class KeyFileError(ValueError):
    """A key file that cannot be used; the message says what is wrong and how to mend it."""


@dataclass(frozen=True)
class OwnerKeyFiles:
    owner_id: str
    private_key: Path
    public_key: Path
    fingerprint: str


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The raw 32-byte public key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_from_bytes(raw: bytes) -> Ed25519PublicKey:
    if len(raw) != 32:
        raise KeyFileError(f"an Ed25519 public key has 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def fingerprint(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """Hex sha256 of the raw public key (64 hex digits)."""
    return hashlib.sha256(public_key_bytes(key)).hexdigest()


def check_owner_id(owner_id: str) -> str:
    """Owner ids name files and ledger rows: letters, digits, '.', '_', '-'."""
    if not isinstance(owner_id, str) or not _OWNER_ID.fullmatch(owner_id):
        raise ValueError(
            f"owner id {owner_id!r} is not usable: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return owner_id


def _passphrase_bytes(passphrase: str | bytes | None) -> bytes | None:
    if passphrase is None:
        return None
    data = passphrase.encode() if isinstance(passphrase, str) else bytes(passphrase)
    if not data:
        raise KeyFileError("the passphrase is empty; give a non-empty one or none at all")
    return data


def _write_file(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    write_file_atomically(path, data, mode, overwrite=overwrite, what="a key")


def save_private_key(
    key: Ed25519PrivateKey, path: str | Path, passphrase: str | bytes | None = None, *, overwrite: bool = False
) -> Path:
    """Write ``key`` as PEM PKCS#8 with mode 0600, encrypted when a passphrase is given."""
    secret = _passphrase_bytes(passphrase)
    encryption = (serialization.BestAvailableEncryption(secret) if secret
                  else serialization.NoEncryption())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    _write_file(Path(path), pem, 0o600, overwrite)
    return Path(path)


def save_public_key(key: Ed25519PrivateKey | Ed25519PublicKey, path: str | Path, *, overwrite: bool = False) -> Path:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_file(Path(path), pem, 0o644, overwrite)
    return Path(path)


def _read(path: str | Path, what: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    return path.read_bytes()


def check_private_file_mode(path: str | Path, what: str = "private key") -> None:
    """Refuse a secret file that others may read or write, as ssh does ("UNPROTECTED PRIVATE KEY FILE").

    A key readable by the group or the world can be copied by another account on the host and
    used to sign in the owner's name; a writable one can be swapped.  The error says the chmod.
    """
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise KeyFileError(f"{path}: this {what} is accessible by others (mode {mode:04o}); it must be readable by "
                           f"its owner only: run  chmod 600 {path}")
    problem = replaceable_by_others(path)
    if problem:
        raise KeyFileError(f"this {what}: {problem}")


def load_private_key(path: str | Path, passphrase: str | bytes | None = None) -> Ed25519PrivateKey:
    data = _read(path, "private key file")
    if b"PUBLIC KEY-----" in data:
        raise KeyFileError(f"{path} holds a public key; the private key is the {PRIVATE_SUFFIX} file")
    try:
        key = serialization.load_pem_private_key(data, password=_passphrase_bytes(passphrase))
    except TypeError as err:  # cryptography says "not encrypted"/"not given" with TypeError
        if passphrase is None:
            raise KeyFileError(f"{path} is encrypted; give its passphrase") from None
        raise KeyFileError(f"{path} is not encrypted; load it without a passphrase") from err
    except ValueError as err:
        if b"ENCRYPTED PRIVATE KEY" in data:
            raise KeyFileError(f"{path}: wrong passphrase (the key could not be decrypted)") from None
        raise KeyFileError(f"{path} is not a PEM private key ({err})") from None
    except UnsupportedAlgorithm as err:
        raise KeyFileError(f"{path}: unsupported key algorithm ({err})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(
            f"{path} holds a {type(key).__name__.removeprefix('_')}, not an Ed25519 key; "
            "create one with 'privfl keys generate'"
        )
    check_private_file_mode(path)
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    data = _read(path, "public key file")
    if b"PRIVATE KEY-----" in data:
        raise KeyFileError(f"{path} holds a private key; give the public ({PUBLIC_SUFFIX}) file instead")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as err:
        raise KeyFileError(f"{path} is not a PEM public key ({err})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__.removeprefix('_')}, not an Ed25519 public key")
    return key


def owner_key_paths(directory: str | Path, owner_id: str) -> tuple[Path, Path]:
    directory = Path(directory)
    check_owner_id(owner_id)
    return directory / f"{owner_id}{PRIVATE_SUFFIX}", directory / f"{owner_id}{PUBLIC_SUFFIX}"


def generate_owner_keys(
    directory: str | Path, owner_id: str, passphrase: str | bytes | None = None
) -> OwnerKeyFiles:
    """Create ``<owner>.key`` (0600) and ``<owner>.pub`` in ``directory``; refuse to overwrite."""
    private_path, public_path = owner_key_paths(directory, owner_id)
    for path in (private_path, public_path):
        if path.exists():
            raise FileExistsError(f"{path} already exists; refusing to overwrite the owner's key")
    key = generate_key()
    save_private_key(key, private_path, passphrase)
    save_public_key(key, public_path)
    return OwnerKeyFiles(owner_id, private_path, public_path, fingerprint(key))
