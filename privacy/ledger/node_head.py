"""The node's own record of its owner's ledger head, kept apart from the ledger.

A ledger cannot see its own missing tail, and a missing ledger cannot say it is
missing: before this record, an owner whose ledger path changed (a typo, a moved
folder, a lost disk) got a new, empty ledger and a fresh lifetime budget, and a
coordinator that sent anchor sequence 0 let a truncated ledger pass.  So the node
keeps the last head it wrote (sequence and sha256 of that entry) in a small file
beside the owner's signing key (``<key>.ledger-head``, not beside the ledger, so a
wrong or moved ledger path leaves it where it was), signed with the owner's key under
its own signing context.  The rules (:func:`head_problem`):

- the ledger must hold the recorded entry, byte for byte (it may have gone on since);
- no ledger while a record exists: refuse (recover it: ``privfl ledger recover``);
- a ledger and no record (a ledger older than this record): record its head.

Only enrolment (:func:`enrol_owner_ledger`: ``privfl deploy``, a simulation's owner
setup) creates an owner's ledger, with a record at sequence 0.  The record is written
after the ledger commits, so a crash leaves it behind the ledger (allowed), never
ahead of it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from privfl.privacy.files import sync_each_write
from privfl.privacy.keys import fingerprint
from privfl.privacy.ledger.chain import HASH_SIZE
from privfl.privacy.ledger.errors import LedgerError, MissingLedger
from privfl.privacy.ledger.owner import OwnerLedger

NODE_HEAD_SIGNING_CONTEXT = b"privfl.ledger.v1.NodeHead\x00"
NODE_HEAD_SUFFIX = ".ledger-head"
FORMAT = "privfl.node-head.v1"


class NodeHeadError(LedgerError):
    """The owner's ledger does not match the head its node last recorded: the node refuses."""


@dataclass(frozen=True)
class NodeHead:
    owner_id: str
    key_fingerprint: str
    sequence: int
    hash: bytes
    ledger: str  # where the ledger was when this head was written (for the error message only)

    def _signed_part(self) -> bytes:
        return json.dumps({"format": FORMAT, "owner_id": self.owner_id, "key_fingerprint": self.key_fingerprint,
                           "sequence": self.sequence, "hash": self.hash.hex(), "ledger": self.ledger},
                          sort_keys=True, separators=(",", ":")).encode()


def node_head_path(signing_key: str | Path) -> Path:
    """Where the node keeps the head of the ledger this key signs: beside the key."""
    key = Path(signing_key)
    return key.with_name(key.name + NODE_HEAD_SUFFIX)


def read_node_head(path: Path, public_key: Ed25519PublicKey) -> NodeHead | None:
    """The record at ``path`` (None if there is none); raises NodeHeadError if it is not the owner's."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        head = NodeHead(str(data["owner_id"]), str(data["key_fingerprint"]), int(data["sequence"]),
                        bytes.fromhex(data["hash"]), str(data["ledger"]))
        signature = bytes.fromhex(data["signature"])
        if data.get("format") != FORMAT or len(head.hash) != HASH_SIZE or head.sequence < 0:
            raise ValueError("not a node head record")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise NodeHeadError(f"the node's ledger head record {path} cannot be read ({err}); the node cannot tell "
                            "whether its ledger is whole") from None
    try:
        public_key.verify(signature, NODE_HEAD_SIGNING_CONTEXT + head._signed_part())
    except InvalidSignature:
        raise NodeHeadError(f"the node's ledger head record {path} is not signed by this owner's key "
                            f"({fingerprint(public_key)[:16]}...): it was altered or belongs to another key") from None
    return head


def write_node_head(path: Path, key: Ed25519PrivateKey, owner_id: str, sequence: int, head_hash: bytes,
                    ledger: str | Path, *, durable: bool = True) -> NodeHead:
    """Replace the record atomically (temporary file, rename); ``durable``: with fsyncs of the file and folder.

    The first record (enrolment, or a ledger older than records) is written durably: it
    is what makes a missing ledger refuse.  A record that moves on after a charge need
    not be (``durable=False``, two fsyncs saved per owner-round): it is written only
    after the ledger's fsynced commit, so whatever version a crash leaves describes an
    entry the ledger durably holds -- behind the ledger (allowed), never ahead.  A
    killed process leaves the old or the new record whole (the rename is atomic; the
    page cache survives the process).  Only a power loss can set it back, to an earlier
    entry of the same ledger.
    """
    durable = durable and sync_each_write()
    head = NodeHead(owner_id, fingerprint(key), sequence, head_hash, str(ledger))
    body = json.loads(head._signed_part())
    body["signature"] = key.sign(NODE_HEAD_SIGNING_CONTEXT + head._signed_part()).hex()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(body, indent=1) + "\n")
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if not durable:
        return head
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return head


def head_problem(ledger: OwnerLedger, head: NodeHead | None) -> str | None:
    """Why ``ledger`` is not the ledger the node last wrote (None: it holds the recorded head)."""
    if head is None:
        return None
    if head.owner_id != ledger.owner_id or head.key_fingerprint != ledger.key_fingerprint:
        return (f"the node's head record is for owner {head.owner_id} (key {head.key_fingerprint[:16]}...), "
                f"not for the ledger {ledger.path} of {ledger.owner_id}")
    if head.sequence == 0:
        return None
    held = ledger.entry(head.sequence)
    if held is not None and held.hash == head.hash:
        return None
    ends = ledger.head()[0]
    found = f"ends at entry {ends}" if held is None else f"holds a different entry {head.sequence}"
    return (f"the ledger at {ledger.path} {found}, but this node last wrote entry {head.sequence} "
            f"({head.hash.hex()[:16]}...) to {head.ledger}: it is an older copy, a truncated or rewritten ledger, "
            "or the wrong file; point the policy's ledger at the node's real ledger, or rebuild it with "
            "`privfl ledger recover` (docs/ledger.md)")


def missing_ledger_problem(path: str | Path, head: NodeHead | None) -> str:
    """What a node says when its policy names a ledger that is not there."""
    if head is not None:
        return (f"no ledger at {path}, but this node's record says its ledger held {head.sequence} entries "
                f"(last at {head.ledger}): a moved or lost ledger is never replaced by a fresh one (that would "
                "be a fresh lifetime budget); point the policy's ledger at it, or rebuild it from the coordinators' "
                "copies with `privfl ledger recover` (docs/ledger.md)")
    return (f"no ledger at {path}: an owner's node never creates its ledger (a wrong path would start a fresh "
            "lifetime budget); it is created once at enrolment (`privfl deploy institution`, or "
            "`privfl ledger recover` for a lost one): check the policy's ledger path")


def enrol_owner_ledger(path: str | Path, owner_id: str, key: Ed25519PrivateKey, signing_key_path: str | Path) -> None:
    """Create an owner's ledger at enrolment, with its node head record; idempotent for an enrolled owner.

    An existing ledger is kept (and its head recorded if there is no record).  A record
    without a ledger means the owner had one: it is never replaced by a fresh one.
    """
    record, path = node_head_path(signing_key_path), Path(path)
    if path.is_file() and record.is_file():
        return  # enrolled before; the node checks the two against each other before every round
    head = read_node_head(record, key.public_key())
    if not path.is_file():
        if head is not None:
            raise MissingLedger(missing_ledger_problem(path, head))
        OwnerLedger.open(path, owner_id, key, create=True).close()
    with OwnerLedger.open(path, owner_id, key, create=False) as ledger:
        problem = head_problem(ledger, head)
        if problem:
            raise NodeHeadError(problem)
        if head is None:
            sequence, head_hash = ledger.head()
            write_node_head(record, key, owner_id, sequence, head_hash, path)


__all__ = ["NodeHead", "NodeHeadError", "enrol_owner_ledger", "head_problem",
           "missing_ledger_problem", "node_head_path", "read_node_head", "write_node_head"]
