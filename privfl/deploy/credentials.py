"""The keys a deployment needs besides TLS certificates and ledger keys, in the formats Flower reads.

- **SuperNode authentication** (``--enable-supernode-auth``): an ECDSA key pair per
  institution on NIST P-384, the private half in OpenSSH format, unencrypted (Flower
  1.42's ``flower-supernode --auth-supernode-private-key`` reads it with
  ``load_ssh_private_key(data, None)``), the public half one OpenSSH line
  (``ecdsa-sha2-nistp384 AAAA... comment``: what ``flwr supernode register`` reads).
  It is what ``ssh-keygen -t ecdsa -b 384`` writes, made with ``cryptography``.
- **App signing**: Ed25519 key pairs (OpenSSH format) that sign the Flower app bundle.
  Each institution's SuperNode trusts only its own (``app-trust.key``, see
  :mod:`privfl.deploy.endorsement`) through ``--trusted-entities``, a YAML map
  ``{key id: "ssh-ed25519 AAAA..."}``; the coordinator's (``app-signing.key``) is trusted
  by no SuperNode.

Private keys are created exclusively with mode 0600 (never overwritten); public keys
with 0644.  Writes go through a temporary file linked into place, so a reader never
sees half a key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from privfl.deploy.errors import DeployError
from privfl.privacy.files import write_file_atomically
from privfl.privacy.keys import check_private_file_mode

NIST_CURVES = ("secp256r1", "secp384r1", "secp521r1")
APP_KEY_ID_PREFIX = "privfl-app-"


def write_file(path: str | Path, data: bytes, mode: int, *, overwrite: bool = False) -> Path:
    return write_file_atomically(path, data, mode, overwrite=overwrite)


def write_secret(path: str | Path, data: bytes) -> Path:
    return write_file(path, data, 0o600)


def write_public(path: str | Path, data: bytes, *, overwrite: bool = False) -> Path:
    return write_file(path, data, 0o644, overwrite=overwrite)


# -- SuperNode authentication ----------------------------------------------------------


def supernode_auth_key_pair(private_path: str | Path, public_path: str | Path, comment: str) -> str:
    """Create an ECDSA P-384 OpenSSH key pair for ``--auth-supernode-private-key``; returns the public line."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = openssh_public_line(key.public_key(), comment)
    for path in (Path(private_path), Path(public_path)):
        if path.exists() or path.is_symlink():
            raise FileExistsError(f"{path} already exists; refusing to overwrite a key (move it away first)")
    write_secret(private_path, private)
    write_public(public_path, (public + "\n").encode())
    return public


def openssh_public_line(key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey, comment: str) -> str:
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return f"{line} {comment}" if comment else line


def load_supernode_public_key(path: str | Path) -> ec.EllipticCurvePublicKey:
    """A SuperNode's public key as ``flwr supernode register`` accepts it (OpenSSH ECDSA on a NIST curve)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no SuperNode public key at {path}")
    data = path.read_bytes()
    if b"PRIVATE KEY" in data:
        raise DeployError(f"{path} holds a private key: send and register only the SuperNode's public key "
                          "(supernode-auth.pub)")
    try:
        key = serialization.load_ssh_public_key(data.strip())
    except (ValueError, UnsupportedAlgorithm) as err:
        raise DeployError(f"{path} is not an OpenSSH public key ({err}); a SuperNode key is one line "
                          "'ecdsa-sha2-nistp384 AAAA...' (privfl deploy institution writes supernode-auth.pub)") \
            from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in NIST_CURVES:
        raise DeployError(f"{path} is not an ECDSA key on a NIST curve (P-256/384/521), which Flower requires for "
                          "SuperNode authentication")
    return key


# -- app signing -----------------------------------------------------------------------


def app_key_id(public_key: ed25519.Ed25519PublicKey) -> str:
    """The id the SuperNodes know the app-signing key by: a prefix and 16 hex digits of its sha256."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return APP_KEY_ID_PREFIX + hashlib.sha256(raw).hexdigest()[:16]


def app_signing_key_pair(private_path: str | Path, public_path: str | Path, comment: str) -> str:
    """Create the Ed25519 app-signing key (OpenSSH, 0600) and its public line; returns the key id."""
    key = ed25519.Ed25519PrivateKey.generate()
    for path in (Path(private_path), Path(public_path)):
        if path.exists() or path.is_symlink():
            raise FileExistsError(f"{path} already exists; refusing to overwrite a key (move it away first)")
    write_secret(private_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                 serialization.NoEncryption()))
    write_public(public_path, (openssh_public_line(key.public_key(), comment) + "\n").encode())
    return app_key_id(key.public_key())


def load_app_signing_key(path: str | Path) -> ed25519.Ed25519PrivateKey:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no app-signing key at {path}")
    check_private_file_mode(path, "app-signing key")
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise DeployError(f"{path} is not an unencrypted OpenSSH private key ({err})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise DeployError(f"{path} is not an Ed25519 key; the app-signing key must be Ed25519 "
                          "(Flower's --trusted-entities accepts ssh-ed25519 keys only)")
    return key


def load_app_public_key(path: str | Path) -> ed25519.Ed25519PublicKey:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no app-signing public key at {path}")
    try:
        key = serialization.load_ssh_public_key(path.read_bytes().strip())
    except (ValueError, UnsupportedAlgorithm) as err:
        raise DeployError(f"{path} is not an OpenSSH public key ({err})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise DeployError(f"{path} is not an ssh-ed25519 key")
    return key


def trusted_entities_yaml(keys: dict[str, ed25519.Ed25519PublicKey]) -> str:
    """The ``--trusted-entities`` file: app publishers' key ids mapped to their ssh-ed25519 keys."""
    lines = ["# Flower SuperNode --trusted-entities: the only keys whose signature makes this SuperNode run an app.",
             "# Written by privfl deploy; key id: 'ssh-ed25519 AAAA...' (a FAB must carry a valid signature by one).",
             "# It names this institution's own app-trust key only: the SuperNode runs the bundle the institution",
             "# built and signed itself (app-endorsement.json), never one that only the coordinator signed."]
    # JSON strings are valid YAML scalars: no quoting surprises.
    lines += [f"{json.dumps(key_id)}: {json.dumps(openssh_public_line(key, ''))}" for key_id, key in keys.items()]
    return "\n".join(lines) + "\n"
