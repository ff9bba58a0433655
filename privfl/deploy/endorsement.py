"""An institution's endorsement of privfl's app bundle: the only signature its SuperNode trusts.

Flower's SuperNode (``--trusted-entities``) runs any FAB that carries a valid signature
by a key it trusts, and imports the module the FAB's ``clientapp`` names, from the FAB
first.  If the SuperNodes trusted a key the coordinator holds, the coordinator could
sign a bundle that ships its own module and run it at every institution, next to the
institution's data and signing key.  So the key an institution's SuperNode trusts is
the institution's own (``app-trust.key``, made on its premises, never sent anywhere),
and what it signs is the hash of privfl's code-free bundle *as the institution builds
it from the privfl it has installed* (:func:`privfl.app_bundle.build_fab`,
deterministic).  The institution sends the coordinator only that signature
(``app-endorsement.json``); the coordinator's app registry serves it with the bundle,
the way Flower Hub serves a publisher's signature.

What this gives: a bundle whose bytes differ from the institution's own build in any
way (another module, another ``clientapp``, another version) has another sha256, which
no key the SuperNode trusts has signed, so Flower refuses it ("FAB verification failed")
before anything in it is imported, whoever signed it.  An upgrade of privfl at the
institution changes the bundle: ``privfl deploy endorse-app`` signs the new one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from privfl.deploy import credentials
from privfl.deploy.errors import DeployError

FORMAT = "privfl-app-endorsement/1"
MAX_SIZE = 4096  # an endorsement is a few hundred bytes; refuse to parse anything large
_HEX64 = re.compile(r"[0-9a-f]{64}")


def message_to_sign(fab_sha256: str, signed_at: int) -> bytes:
    """What Flower's SuperNode verifies (``create_message_to_sign``): signed_at (8 bytes big-endian) + sha256(FAB)."""
    return signed_at.to_bytes(8, byteorder="big") + bytes.fromhex(fab_sha256)


@dataclass(frozen=True)
class Endorsement:
    """One institution's signature on one bundle hash, with the public key that checks it."""

    owner_id: str
    app: str  # '@publisher/name==x.y.z', as the institution built it
    fab_sha256: str
    public_key: str  # 'ssh-ed25519 AAAA...', the key in the institution's trusted-entities.yaml
    key_id: str
    signature: str  # base64url, no padding
    signed_at: int
    format: str = FORMAT

    def verification(self) -> dict[str, Any]:
        """The entry Flower's SuperLink keeps with the FAB and its SuperNodes verify."""
        return {"public_key_id": self.key_id, "signature": self.signature, "signed_at": self.signed_at}

    def check(self) -> Endorsement:
        """Refuse an endorsement whose signature does not verify with the key it names (a corrupt or forged file)."""
        try:
            key = serialization.load_ssh_public_key(self.public_key.encode())
        except (ValueError, UnsupportedAlgorithm) as err:
            raise DeployError(f"endorsement of {self.owner_id}: public-key is not an OpenSSH key ({err})") from None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise DeployError(f"endorsement of {self.owner_id}: public-key is not ssh-ed25519")
        if credentials.app_key_id(key) != self.key_id:
            raise DeployError(f"endorsement of {self.owner_id}: key-id {self.key_id} is not its public key's id")
        if not _HEX64.fullmatch(self.fab_sha256):
            raise DeployError(f"endorsement of {self.owner_id}: fab-sha256 is not 64 lowercase hex digits")
        try:
            key.verify(_b64decode(self.signature), message_to_sign(self.fab_sha256, self.signed_at))
        except (InvalidSignature, ValueError) as err:
            raise DeployError(f"endorsement of {self.owner_id}: the signature does not verify ({err or 'invalid'})") \
                from None
        return self

    def to_json(self) -> str:
        return json.dumps({key.replace("_", "-"): value for key, value in asdict(self).items()}, indent=2) + "\n"


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def endorse(fab: bytes, key: ed25519.Ed25519PrivateKey, owner_id: str, *, signed_at: int | None = None) -> Endorsement:
    """Sign ``fab`` (built here) in the way Flower's SuperNode verifies."""
    from privfl.deploy.registry import fab_identity

    app_id, version = fab_identity(fab)
    digest = hashlib.sha256(fab).hexdigest()
    signed_at = int(time.time()) if signed_at is None else signed_at
    signature = key.sign(message_to_sign(digest, signed_at))
    return Endorsement(owner_id=owner_id, app=f"{app_id}=={version}", fab_sha256=digest,
                       public_key=credentials.openssh_public_line(key.public_key(), ""),
                       key_id=credentials.app_key_id(key.public_key()), signature=_b64encode(signature),
                       signed_at=signed_at).check()


def load_endorsement(path: str | Path) -> Endorsement:
    """An ``app-endorsement.json``, checked (its signature verifies with the key it names)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no app endorsement at {path}")
    data = path.read_bytes()
    if len(data) > MAX_SIZE:
        raise DeployError(f"{path} is {len(data)} bytes: not an app endorsement (at most {MAX_SIZE})")
    try:
        raw = json.loads(data)
        fields = {key.replace("-", "_"): raw[key.replace("_", "-")] for key in Endorsement.__dataclass_fields__}
        endorsement = Endorsement(**fields)
    except (ValueError, KeyError, TypeError) as err:
        raise DeployError(f"{path} is not an app endorsement (privfl deploy institution writes "
                          f"app-endorsement.json): {err}") from None
    if endorsement.format != FORMAT or not isinstance(endorsement.signed_at, int):
        raise DeployError(f"{path}: unknown endorsement format {endorsement.format!r} (expected {FORMAT})")
    return endorsement.check()


def institution_app_trust(private_path: Path, public_path: Path, trusted_entities: Path, endorsement: Path,
                          owner_id: str) -> Endorsement:
    """An institution's own app-trust key, a trusted-entities file naming only it, and its endorsement of its build."""
    from privfl.app_bundle import build_fab

    key_id = credentials.app_signing_key_pair(private_path, public_path, f"privfl-app-trust-{owner_id}")
    public = credentials.load_app_public_key(public_path)
    credentials.write_public(trusted_entities, credentials.trusted_entities_yaml({key_id: public}).encode())
    return write_endorsement(build_fab(), private_path, endorsement, owner_id)


def write_endorsement(fab: bytes, private_path: Path, endorsement: Path, owner_id: str, *,
                      overwrite: bool = False) -> Endorsement:
    made = endorse(fab, credentials.load_app_signing_key(private_path), owner_id)
    credentials.write_public(endorsement, made.to_json().encode(), overwrite=overwrite)
    return made
