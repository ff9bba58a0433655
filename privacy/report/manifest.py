"""A signed manifest of every report file written: HTML, PDF and CSV are as checkable as the JSON.

Why: only the JSON carries its own content hash and signature; an HTML or PDF a
data-protection officer forwards could be edited with nothing to show it.  Beside the
files of one report, ``<stem>.manifest.json`` lists each file's sha256 and size and the
JSON report's content hash, and is signed (Ed25519, context ``MANIFEST_CONTEXT``, over
sha256 of its canonical form, as :mod:`.signing` does for the report) by the same key
that signed the report.  :func:`verify_report_file` checks any one of the files
against it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from privfl.privacy.keys import fingerprint, public_key_bytes, public_key_from_bytes
from privfl.privacy.report.signing import canonical_bytes, verify_report_json

MANIFEST_TYPE = "privfl-report-manifest"
MANIFEST_CONTEXT = b"privfl.report.v1.manifest\x00"
SUFFIX = ".manifest.json"


def manifest_path(report_file: str | Path) -> Path:
    """``report.html`` -> ``report.manifest.json`` (one manifest for every format of one report)."""
    report_file = Path(report_file)
    return report_file.with_name(report_file.stem + SUFFIX)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(files: Iterable[str | Path], content_hash: str, private_key: Ed25519PrivateKey | None) -> Path:
    """Write the manifest beside ``files`` (signed unless ``private_key`` is None); returns its path."""
    files = [Path(f) for f in files]
    body: dict[str, Any] = {
        "type": MANIFEST_TYPE, "version": 1, "report_content_hash": content_hash,
        "files": {f.name: {"sha256": _digest(f), "bytes": f.stat().st_size} for f in files},
    }
    body["signature"] = None if private_key is None else _sign(body, private_key)
    path = manifest_path(files[0])
    path.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def _sign(body: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, str]:
    digest = hashlib.sha256(canonical_bytes(body)).digest()
    return {"algorithm": "ed25519", "key_fingerprint": fingerprint(key),
            "public_key": base64.b64encode(public_key_bytes(key)).decode("ascii"),
            "value": base64.b64encode(key.sign(MANIFEST_CONTEXT + digest)).decode("ascii")}


def verify_report_file(path: str | Path, public_key: Ed25519PublicKey | None = None, *,
                       accept_unsigned: bool = False) -> tuple[bool, str]:
    """Check one report file (any format): the JSON's own hash and signature, and the signed manifest beside it.

    Unsigned (no signature, or no manifest for a format that has no hash of its own) is
    refused unless ``accept_unsigned``; with ``public_key`` the signer must be that key.
    """
    path = Path(path)
    manifest_file = manifest_path(path)
    reasons = []
    if path.suffix == ".json" and not path.name.endswith(SUFFIX):
        ok, reason = verify_report_json(path, public_key, accept_unsigned=accept_unsigned)
        if not ok:
            return ok, reason
        reasons.append(reason)
        if not manifest_file.is_file():
            return True, reason
    if not manifest_file.is_file():
        return (accept_unsigned, f"no manifest {manifest_file.name} beside it: the file carries no hash or signature"
                + (" (accepted: --accept-unsigned)" if accept_unsigned else ""))
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        listed = manifest["files"][path.name]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return False, f"the manifest {manifest_file.name} does not list {path.name} or cannot be read ({err})"
    if manifest.get("type") != MANIFEST_TYPE:
        return False, f"{manifest_file.name} is not a privfl report manifest"
    if _digest(path) != listed.get("sha256"):
        return False, f"{path.name} does not match the sha256 its manifest lists: the file was altered"
    signature = manifest.get("signature")
    if not signature:
        return (accept_unsigned, "the manifest matches but is not signed"
                + (" (accepted: --accept-unsigned)" if accept_unsigned else "; give --accept-unsigned to accept it"))
    try:
        carried = public_key_from_bytes(base64.b64decode(signature["public_key"], validate=True))
        value = base64.b64decode(signature["value"], validate=True)
    except (KeyError, TypeError, ValueError) as err:
        return False, f"the manifest's signature block is malformed: {err}"
    if public_key is not None and fingerprint(public_key) != fingerprint(carried):
        return False, f"the manifest is signed by key {fingerprint(carried)[:16]}..., not by the given key"
    try:
        carried.verify(value, MANIFEST_CONTEXT + hashlib.sha256(canonical_bytes(manifest)).digest())
    except InvalidSignature:
        return False, "the manifest's signature does not verify: the manifest was altered"
    reasons.append(f"{path.name} matches its signed manifest ({fingerprint(carried)[:16]}...)")
    return True, "; ".join(reasons)


__all__ = ["manifest_path", "verify_report_file", "write_manifest"]
