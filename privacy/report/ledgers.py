"""Reading and verifying the ledger files a report is built from.

Why a module of its own: what a report may claim depends first on whether each file
is exactly what its owners signed.  This module finds the files, reads their
entries, loads the public keys supplied independently of them, and verifies each
file with :func:`privfl.privacy.ledger.verify` -- federation ledgers first, then
each owner ledger against the copies of its receipts that a *verified* federation
ledger holds (which catches entries removed from the end of an owner's chain).

Verification never needs an accountant (stated epsilons are checked against the
report's own recomputation, in :mod:`.accounting`), so it can run in a helper
process while the main one imports the accountants and composes epsilons
(:func:`start_verification`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from privfl.privacy.keys import KeyFileError, load_public_key, public_key_bytes, public_key_from_bytes
from privfl.privacy.ledger import Entry, LedgerError, VerificationReport, decode_entry, verify
from privfl.privacy.ledger.errors import NotALedgerError
from privfl.privacy.ledger.store import FEDERATION_LEDGER, OWNER_LEDGER, LedgerStore
from privfl.server.run_dir import LEDGERS

KeysArg = Ed25519PublicKey | Mapping[str, Any] | str | Path | Sequence[str | Path] | None


@dataclass
class LedgerFile:
    """One ledger file: its entries as read, and (once verified) its verification report."""

    path: Path
    kind: str = ""  # OWNER_LEDGER, FEDERATION_LEDGER, or "" when unreadable
    owner_id: str = ""  # owner ledgers
    entries: list[Entry] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # rows whose bytes do not decode
    verification: VerificationReport | None = None
    open_error: str = ""
    anchored_by: list[str] = field(default_factory=list)  # federation ledgers this one was checked against
    epsilons_checked: int = 0  # stated epsilons compared with the report's recomputation
    epsilon_problems: list[str] = field(default_factory=list)  # "owner X, entry N: states ..." per mismatch

    @property
    def intact(self) -> bool:
        return bool(self.verification and self.verification.ok) and not self.epsilon_problems and not self.unreadable

    @property
    def problem(self) -> str | None:
        if self.verification and self.verification.problem:
            return str(self.verification.problem)
        if self.epsilon_problems:
            return self.epsilon_problems[0]
        if self.unreadable:
            return f"unreadable entry: {self.unreadable[0]}"
        return self.open_error or None

    def entries_by_owner(self) -> dict[str, list[Entry]]:
        by_owner: dict[str, list[Entry]] = {}
        for entry in self.entries:
            by_owner.setdefault(entry.owner_id, []).append(entry)
        return by_owner


def resolve_ledger_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Ledger files from files and folders (a folder: its ``*.db``; a run folder: its ``ledgers/*.db``)."""
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            folder = path / LEDGERS if (path / LEDGERS).is_dir() else path
            files = sorted(folder.glob("*.db"))
            if not files:
                raise FileNotFoundError(f"no ledger files (*.db) in {folder}")
            found.extend(files)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no ledger at {path}")
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def load_keys(keys: KeysArg, owner_ledgers: Sequence[str] = ()) -> dict[str, Ed25519PublicKey]:
    """Public keys supplied independently of the ledgers, by owner id.

    ``keys`` may be a mapping owner -> key (or -> .pub path), a folder of ``<owner>.pub``
    files, one ``.pub`` file or a list of them (the owner is the file's stem), or one
    key object.  A single key (object or file) given for a report on exactly one owner
    ledger is that owner's key, whatever the file is called.
    """
    if keys is None:
        return {}
    if isinstance(keys, Ed25519PublicKey):
        if len(owner_ledgers) != 1:
            raise ValueError("one public key without an owner id needs exactly one owner ledger; "
                             "pass a mapping owner id -> key")
        return {owner_ledgers[0]: keys}
    if isinstance(keys, Mapping):
        return {owner: key if isinstance(key, Ed25519PublicKey) else _load_key(key) for owner, key in keys.items()}
    items = [keys] if isinstance(keys, (str, Path)) else list(keys)
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(path.glob("*.pub")))
        else:
            files.append(path)
    if len(files) == 1 and len(owner_ledgers) == 1 and not Path(items[0]).is_dir():
        return {owner_ledgers[0]: _load_key(files[0])}
    return {path.name.removesuffix(".pub"): _load_key(path) for path in files}


def _load_key(path: str | Path) -> Ed25519PublicKey:
    try:
        return load_public_key(path)
    except KeyFileError as err:
        raise ValueError(str(err)) from None


def read_ledger(path: Path) -> LedgerFile:
    """Read a ledger file's kind, owner and entries (read-only; verification is separate)."""
    ledger = LedgerFile(path=path)
    try:
        store = LedgerStore.open_readonly(path)
    except NotALedgerError as err:
        ledger.open_error = str(err)
        return ledger
    try:
        meta = store.meta()
        ledger.kind = meta.get("ledger_kind", "")
        ledger.owner_id = meta.get("owner_id", "") if ledger.kind == OWNER_LEDGER else ""
        for row in store.rows():
            try:
                ledger.entries.append(decode_entry(bytes(row.entry), bytes(row.signature), str(row.key_fingerprint)))
            except (LedgerError, TypeError, ValueError) as err:
                ledger.unreadable.append(f"owner {row.owner_id}, entry {row.sequence}: {err}")
    except Exception as err:  # a damaged file: verification says more
        ledger.open_error = f"cannot read {path}: {err}"
    finally:
        store.close()
    if ledger.kind not in (OWNER_LEDGER, FEDERATION_LEDGER) and not ledger.open_error:
        ledger.open_error = f"{path}: unknown ledger kind {ledger.kind!r}"
    return ledger


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class _Job:
    """One file to verify: what verify() needs, as plain picklable data."""

    path: Path
    kind: str
    keys: Any  # raw public key bytes (owner), {owner: bytes} (federation) or None: keys objects do not pickle
    anchors: tuple[Entry, ...] = ()
    anchors_source: str = "the anchors"


def _run_job(job: _Job) -> VerificationReport:
    if isinstance(job.keys, bytes):
        keys: Any = public_key_from_bytes(job.keys)
    elif isinstance(job.keys, dict):
        keys = {owner: public_key_from_bytes(raw) for owner, raw in job.keys.items()}
    else:
        keys = None
    return verify(job.path, keys, anchors=job.anchors, anchors_source=job.anchors_source, epsilon_check="none")


def _run_jobs(jobs: Sequence[_Job]) -> list[VerificationReport]:
    return [_run_job(job) for job in jobs]


def _anchor_text(sources: Sequence[str]) -> str:
    return " and ".join(f"the federation ledger {s}" for s in sources) or "the anchors"


def _owner_job(ledger: LedgerFile, supplied: Mapping[str, Ed25519PublicKey],
               federations: Sequence[tuple[LedgerFile, dict[str, list[Entry]]]]) -> tuple[_Job, list[str]]:
    anchors: list[Entry] = []
    sources: list[str] = []
    for federation, held in federations:
        copies = held.get(ledger.owner_id)
        if copies:
            anchors.extend(copies)
            sources.append(str(federation.path))
    key = supplied.get(ledger.owner_id)
    return _Job(ledger.path, OWNER_LEDGER, public_key_bytes(key) if key is not None else None, tuple(anchors),
                _anchor_text(sources)), sources


def _federation_job(federation: LedgerFile, held: dict[str, list[Entry]],
                    supplied: Mapping[str, Ed25519PublicKey]) -> _Job:
    return _Job(federation.path, FEDERATION_LEDGER, {o: public_key_bytes(k) for o, k in supplied.items() if o in held})


class PendingVerification:
    """Verification under way (in helper processes, or already done in this one); :meth:`finish` settles it."""

    def __init__(self, files: list[LedgerFile], supplied: Mapping[str, Ed25519PublicKey], pool=None) -> None:
        self.files = files
        self.supplied = supplied
        self._held = {f.path: f.entries_by_owner() for f in files if f.kind == FEDERATION_LEDGER}
        federations = [(f, self._held[f.path]) for f in files if f.kind == FEDERATION_LEDGER]
        # Owner ledgers are verified against every federation's copies at once (speculatively: a federation
        # that then fails verification is dropped and its owners verified again without it).
        self._jobs: list[tuple[LedgerFile, _Job, list[str]]] = []
        for ledger in files:
            if ledger.kind == FEDERATION_LEDGER:
                self._jobs.append((ledger, _federation_job(ledger, self._held[ledger.path], supplied), []))
            elif ledger.kind == OWNER_LEDGER:
                job, sources = _owner_job(ledger, supplied, federations)
                self._jobs.append((ledger, job, sources))
            else:
                self._jobs.append((ledger, _Job(ledger.path, ledger.kind, None), []))
        self._futures: list[Future] | None = None
        self._chunks: list[list[int]] = []
        if pool is not None and pool.workers > 0:
            self._chunks = _chunk([len(job.anchors) + _size(ledger) for ledger, job, _ in self._jobs], pool.workers)
            self._futures = [pool.submit(_run_jobs, [self._jobs[i][1] for i in chunk]) for chunk in self._chunks]

    def finish(self) -> list[LedgerFile]:
        results: dict[int, VerificationReport] = {}
        if self._futures is not None:
            for chunk, future in zip(self._chunks, self._futures):
                results.update(zip(chunk, future.result()))
        else:
            for index, (_, job, _) in enumerate(self._jobs):
                results[index] = _run_job(job)
        for index, (ledger, _, sources) in enumerate(self._jobs):
            ledger.verification = results[index]
            ledger.anchored_by = list(sources)
        bad = {str(f.path) for f in self.files if f.kind == FEDERATION_LEDGER and not f.verification.ok}
        if bad:
            ok_federations = [(f, self._held[f.path]) for f in self.files
                              if f.kind == FEDERATION_LEDGER and str(f.path) not in bad]
            for ledger, _, sources in self._jobs:
                if ledger.kind == OWNER_LEDGER and bad & set(sources):
                    job, kept = _owner_job(ledger, self.supplied, ok_federations)
                    ledger.verification = _run_job(job)
                    ledger.anchored_by = kept
        return self.files


def _size(ledger: LedgerFile) -> int:
    return len(ledger.entries) + 1


def _chunk(costs: list[int], parts: int) -> list[list[int]]:
    """Indices split into ``parts`` groups of about equal cost (largest first, into the lightest group)."""
    groups: list[list[int]] = [[] for _ in range(max(1, parts))]
    loads = [0] * len(groups)
    for index in sorted(range(len(costs)), key=lambda i: -costs[i]):
        lightest = loads.index(min(loads))
        groups[lightest].append(index)
        loads[lightest] += costs[index]
    return [sorted(g) for g in groups if g]


def start_verification(files: list[LedgerFile], supplied: Mapping[str, Ed25519PublicKey],
                       pool=None) -> PendingVerification:
    """Verify every file, in ``pool``'s helper processes when given (else when finished)."""
    return PendingVerification(files, supplied, pool)


__all__ = ["KeysArg", "LedgerFile", "PendingVerification", "load_keys", "read_ledger", "resolve_ledger_paths",
           "start_verification"]
