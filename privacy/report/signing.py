"""A report's content hash and Ed25519 signature, and checking a JSON report against them.

Why: a report travels (e-mail, archive, ticket) away from the ledgers it was built
from.  Its content hash lets anyone see that the JSON was not edited since it was
generated; a signature by the generating party's key says who generated it.

- **Canonical form**: ``json.dumps(doc, sort_keys=True, separators=(",", ":"),
  ensure_ascii=False)`` encoded as UTF-8, where ``doc`` is the JSON document without
  its ``content_hash`` and ``signature`` fields.
- **Content hash**: sha256 of the canonical form, hex (``content_hash.value``).
- **Signature**: Ed25519 over ``SIGNING_CONTEXT + bytes.fromhex(content_hash)``
  (the context keeps a report signature from ever being valid as a ledger-entry
  signature made with the same key), base64 in ``signature.value``, with the signer's
  key fingerprint (sha256 of the raw public key, as for ledger keys) and the raw
  public key (base64).

:func:`verify_report_json` re-derives the hash from the document as read, so any
edit of any field (a figure, a verdict, an owner removed) is detected; with the
signer's public key supplied it also says whether that key signed it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from privfl.privacy.keys import KeyFileError, fingerprint, load_public_key, public_key_bytes, public_key_from_bytes
from privfl.privacy.report.model import ContentHash, ReportSignature

HASH_ALGORITHM = "sha256"
CANONICALIZATION = "json.dumps(sort_keys=True, separators=(',', ':'), ensure_ascii=False), UTF-8, " \
                   "without the content_hash and signature fields"
SIGNATURE_ALGORITHM = "ed25519"
SIGNING_CONTEXT = b"privfl.report.v1.content-hash\x00"
UNHASHED_FIELDS = ("content_hash", "signature")


def canonical_bytes(document: dict[str, Any]) -> bytes:
    """The canonical form of a document (its hash and signature fields left out)."""
    body = {k: v for k, v in document.items() if k not in UNHASHED_FIELDS}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def content_hash(document: dict[str, Any]) -> ContentHash:
    return ContentHash(HASH_ALGORITHM, CANONICALIZATION, hashlib.sha256(canonical_bytes(document)).hexdigest())


def sign_content_hash(digest_hex: str, private_key: Ed25519PrivateKey) -> ReportSignature:
    if not isinstance(private_key, Ed25519PrivateKey):
        raise TypeError("a report is signed with an Ed25519 private key (privfl.privacy.keys.load_private_key)")
    signature = private_key.sign(SIGNING_CONTEXT + bytes.fromhex(digest_hex))
    return ReportSignature(
        algorithm=SIGNATURE_ALGORITHM,
        key_fingerprint=fingerprint(private_key),
        public_key=base64.b64encode(public_key_bytes(private_key)).decode("ascii"),
        signed=f"{HASH_ALGORITHM} content hash (SIGNING_CONTEXT {SIGNING_CONTEXT.decode('ascii').rstrip(chr(0))!r})",
        value=base64.b64encode(signature).decode("ascii"),
    )


def verify_report_json(path_or_doc: str | Path | dict[str, Any],
                       public_key: Ed25519PublicKey | str | Path | None = None, *,
                       accept_unsigned: bool = False) -> tuple[bool, str]:
    """Check a JSON report's content hash and signature; ``(ok, reason)``.

    ``path_or_doc``: the report file, or the parsed document.  ``public_key``: the
    signer's public key (object or ``.pub`` file).  Without it a signature is checked
    against the key the report carries, which only shows that the report was not
    altered after signing by whoever holds that key; the reason says so.  With it, a
    report signed by another key is not ok.  An unsigned report is not ok unless
    ``accept_unsigned``: its content hash proves nothing (anyone who edits it can
    recompute the hash).
    """
    try:
        document = _load(path_or_doc)
    except (OSError, ValueError) as err:
        return False, f"cannot read the report: {err}"
    stated = document.get("content_hash")
    if not isinstance(stated, dict) or not isinstance(stated.get("value"), str):
        return False, "the report carries no content hash (not a privfl report of schema 1.1 or later?)"
    if stated.get("algorithm") != HASH_ALGORITHM:
        return False, f"unknown content hash algorithm {stated.get('algorithm')!r}"
    try:
        actual = hashlib.sha256(canonical_bytes(document)).hexdigest()
    except (TypeError, ValueError) as err:
        return False, f"the document cannot be put in canonical form: {err}"
    if actual != stated["value"]:
        return False, (f"content hash mismatch: the report states {stated['value'][:16]}..., its content hashes to "
                       f"{actual[:16]}...: the report was altered after it was generated")
    signature = document.get("signature")
    if not signature:
        if public_key is not None:
            return False, ("content hash matches, but the report is not signed (a signature by the given key was "
                           "expected)")
        if not accept_unsigned:
            return False, ("the report is not signed: its content hash proves nothing (whoever edits it can "
                           "recompute the hash); give --accept-unsigned to accept an unsigned report")
        return True, "content hash matches; the report is not signed"
    try:
        expected = _public_key(public_key) if public_key is not None else None
        carried = public_key_from_bytes(base64.b64decode(signature["public_key"], validate=True))
        value = base64.b64decode(signature["value"], validate=True)
    except (KeyError, TypeError, ValueError, KeyFileError, OSError) as err:
        return False, f"the signature block is malformed: {err}"
    if signature.get("algorithm") != SIGNATURE_ALGORITHM:
        return False, f"unknown signature algorithm {signature.get('algorithm')!r}"
    if fingerprint(carried) != signature.get("key_fingerprint"):
        return False, "the signature's key fingerprint does not match the public key it carries"
    key = expected or carried
    if expected is not None and fingerprint(expected) != fingerprint(carried):
        return False, (f"signed by key {signature['key_fingerprint'][:16]}..., not by the given key "
                       f"{fingerprint(expected)[:16]}...")
    try:
        key.verify(value, SIGNING_CONTEXT + bytes.fromhex(stated["value"]))
    except InvalidSignature:
        return False, "the signature does not verify: the content hash or the signature was altered"
    if expected is None:
        return True, (f"content hash matches and the signature verifies under the key the report carries "
                      f"({signature['key_fingerprint'][:16]}...); supply the signer's public key to check who signed")
    return True, f"content hash matches and the report is signed by the given key ({fingerprint(expected)[:16]}...)"


def _load(path_or_doc: str | Path | dict[str, Any]) -> dict[str, Any]:
    if isinstance(path_or_doc, dict):
        return path_or_doc
    text = Path(path_or_doc).read_text(encoding="utf-8")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON ({err})") from None
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    return document


def _public_key(key: Ed25519PublicKey | str | Path) -> Ed25519PublicKey:
    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, Ed25519PrivateKey):
        return key.public_key()
    return load_public_key(key)


__all__ = ["CANONICALIZATION", "SIGNING_CONTEXT", "canonical_bytes", "content_hash", "sign_content_hash",
           "verify_report_json"]
