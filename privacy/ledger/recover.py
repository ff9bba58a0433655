"""Rebuilding a lost owner ledger from the copies of its signed entries that others hold.

An institution whose disk died still has its entries elsewhere: every receipt it sent
(with its bridge) is kept verbatim, signed by the owner, in the coordinators'
federation ledgers, and each coordinator's registry anchors the last head it accepted.
:func:`recover_owner_ledger` gathers the owner's entries from those files (and from
any older copy of the owner's own ledger), and writes a new ledger only if

- every entry is signed by the owner's own key (given by the owner, not read from a
  file), and two copies of one entry are the same bytes;
- the entries run from 1 without a gap, each linking to the one before;
- every registry given is signed by its coordinator's key (given) and its anchored
  head for the owner is in the rebuilt chain, byte for byte (so nothing the
  coordinator accepted is missing, and no older history is passed off);
- the result verifies as a whole (signatures, links, every stated epsilon).

Otherwise it refuses, saying what is missing: an owner that took part in several
federations needs each federation's copies, since a coordinator holds only hashes of
the entries it was not concerned with (:mod:`privfl.privacy.ledger.bridge`).  It never
overwrites a file.  Entries no coordinator ever received (a charge whose reply was
lost at the very end) cannot be rebuilt; the node's head record, if it survived,
says so before the node trains again (:mod:`privfl.privacy.ledger.node_head`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from privfl.privacy.keys import check_owner_id, fingerprint, public_key_bytes
from privfl.privacy.ledger.chain import GENESIS_HASH
from privfl.privacy.ledger.entry import KIND_TO_PROTO, Entry, decode_entry
from privfl.privacy.ledger.errors import LedgerError
from privfl.privacy.ledger.registry import CoordinatorRegistry
from privfl.privacy.ledger.signing import signature_problem
from privfl.privacy.ledger.store import FEDERATION_LEDGER, OWNER_LEDGER, LedgerStore, checkpoint
from privfl.privacy.ledger.verify import verify


class RecoveryRefused(LedgerError):
    """The copies do not rebuild a whole, verified ledger; nothing was written."""


@dataclass
class Recovered:
    path: Path
    owner_id: str
    head: tuple[int, bytes]
    sources: dict[str, int] = field(default_factory=dict)  # file -> entries of the owner it held
    anchored: list[tuple[str, int]] = field(default_factory=list)  # registry -> anchored sequence it confirmed


def recover_owner_ledger(out: str | Path, owner_id: str, public_key: Ed25519PublicKey,
                         copies: Sequence[str | Path], registries: Sequence[tuple[str | Path, Ed25519PublicKey]]
                         ) -> Recovered:
    """Write the owner's ledger at ``out`` from ``copies`` (federation ledgers or older owner-ledger copies),
    checked against ``registries`` (path, coordinator key); raises RecoveryRefused saying why."""
    check_owner_id(owner_id)
    out = Path(out)
    if out.exists():
        raise RecoveryRefused(f"{out} exists: recovery never overwrites a ledger (move it aside first)")
    if not registries:
        raise RecoveryRefused("name at least one coordinator registry (with its coordinator's key): without an "
                              "anchored head, an older history could be passed off as the whole ledger")
    if not copies:
        raise RecoveryRefused("name the federation ledgers that hold the owner's entries")
    result = Recovered(out, owner_id, (0, GENESIS_HASH))
    entries = _gather(owner_id, public_key, copies, result)
    heads = _anchored_heads(owner_id, public_key, registries, result)
    chain = _whole_chain(owner_id, entries, heads)
    for source, (sequence, head_hash) in heads:
        if chain[sequence - 1].hash != head_hash:
            raise RecoveryRefused(f"the coordinator's registry {source} anchored a different entry {sequence} "
                                  f"({head_hash.hex()[:16]}...) than these copies hold: they are an older or "
                                  "rewritten history")
    _write(out, owner_id, public_key, chain, [(owner_id, s, h) for _, (s, h) in heads])
    result.head = (chain[-1].sequence, chain[-1].hash) if chain else result.head
    return result


def _gather(owner_id: str, key: Ed25519PublicKey, copies: Sequence[str | Path], result: Recovered
            ) -> dict[int, Entry]:
    entries: dict[int, Entry] = {}
    for path in copies:
        try:
            store = LedgerStore.open_readonly(path)
        except (LedgerError, FileNotFoundError) as err:
            raise RecoveryRefused(f"{path}: {err}") from None
        try:
            kind = store.meta().get("ledger_kind")
            if kind not in (FEDERATION_LEDGER, OWNER_LEDGER):
                raise RecoveryRefused(f"{path} is a {kind}, not a federation ledger or an owner's ledger")
            rows = list(store.rows(owner_id))
        finally:
            store.close()
        result.sources[str(path)] = len(rows)
        for row in rows:
            entry = decode_entry(row.entry, row.signature, row.key_fingerprint)
            problem = signature_problem(entry.signed_entry(), key)
            if problem or entry.owner_id != owner_id or entry.sequence != row.sequence:
                raise RecoveryRefused(f"{path}: entry {row.sequence} of {owner_id} is not the owner's "
                                      f"({problem or 'its columns disagree with its signed bytes'})")
            known = entries.setdefault(entry.sequence, entry)
            if known.entry_bytes != entry.entry_bytes:
                raise RecoveryRefused(f"{path}: entry {entry.sequence} differs from another copy of it, both signed "
                                      "by the owner: its chain forked; recovery cannot choose")
    return entries


def _anchored_heads(owner_id: str, key: Ed25519PublicKey, registries, result: Recovered
                    ) -> list[tuple[str, tuple[int, bytes]]]:
    heads = []
    for path, coordinator_key in registries:
        report = verify(path, coordinator_key=coordinator_key)
        if not report.ok:
            raise RecoveryRefused(f"the registry {path} is not intact: {report.problem}")
        with CoordinatorRegistry.open_readonly(path) as registry:
            registered = registry.owner_key(owner_id)
            head = registry.head(owner_id)
        if registered is not None and fingerprint(registered) != fingerprint(key):
            raise RecoveryRefused(f"the registry {path} holds key {fingerprint(registered)[:16]}... for {owner_id}, "
                                  f"not the key given ({fingerprint(key)[:16]}...)")
        if head is not None:
            heads.append((str(path), head))
            result.anchored.append((str(path), head[0]))
    return heads


def _whole_chain(owner_id: str, entries: dict[int, Entry], heads) -> list[Entry]:
    last = max([*entries, *(sequence for _, (sequence, _) in heads)], default=0)
    if last == 0:
        raise RecoveryRefused(f"neither the copies nor the registries hold any entry of {owner_id}")
    missing = [s for s in range(1, last + 1) if s not in entries]
    if missing:
        raise RecoveryRefused(
            f"entries {_ranges(missing)} of {owner_id} are in none of these copies (a coordinator keeps only the "
            "hashes of entries of other federations' experiments): add the federation ledgers of every federation "
            "the owner took part in, or an older copy of the owner's ledger")
    chain = [entries[s] for s in range(1, last + 1)]
    previous = GENESIS_HASH
    for entry in chain:
        if entry.previous_hash != previous:
            raise RecoveryRefused(f"entry {entry.sequence} of {owner_id} does not link to entry {entry.sequence - 1}")
        previous = entry.hash
    return chain


def _write(out: Path, owner_id: str, key: Ed25519PublicKey, chain: list[Entry], anchored: list) -> None:
    """Build the file beside ``out``, verify it, then link it into place (never replacing a file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    building = out.with_name(f".{out.name}.recovering-{os.getpid()}")
    for leftover in (building, Path(f"{building}-wal"), Path(f"{building}-shm")):
        leftover.unlink(missing_ok=True)
    try:
        store = LedgerStore.open_for_writing(building, OWNER_LEDGER, {"owner_id": owner_id})
        try:
            with store.write():
                store.add_key(owner_id, fingerprint(key), public_key_bytes(key))
                for entry in chain:
                    store.insert(owner_id=owner_id, sequence=entry.sequence, run_id=entry.run_id, round=entry.round,
                                 kind=KIND_TO_PROTO[entry.kind], entry=entry.entry_bytes, signature=entry.signature,
                                 key_fingerprint=entry.key_fingerprint)
        finally:
            store.close()
        checkpoint(building)
        report = verify(building, key, anchored=anchored)
        if not report.ok:
            raise RecoveryRefused(f"the rebuilt ledger does not verify: {report.problem}")
        try:
            os.link(building, out)  # fails if ``out`` appeared meanwhile: never overwritten
        except FileExistsError:
            raise RecoveryRefused(f"{out} exists: recovery never overwrites a ledger") from None
    finally:
        for leftover in (building, Path(f"{building}-wal"), Path(f"{building}-shm")):
            leftover.unlink(missing_ok=True)


def _ranges(numbers: list[int]) -> str:
    """[3, 4, 5, 9] -> '3..5, 9'."""
    spans, start, previous = [], numbers[0], numbers[0]
    for number in [*numbers[1:], None]:
        if number is not None and number == previous + 1:
            previous = number
            continue
        spans.append(str(start) if start == previous else f"{start}..{previous}")
        if number is not None:
            start = previous = number
    return ", ".join(spans)
