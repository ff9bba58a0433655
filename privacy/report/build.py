"""Build a privacy budget report from ledgers: every figure derived from the ledger's DP events.

``build_report`` reads owner ledgers and/or federation ledgers, verifies each with
:func:`privfl.privacy.ledger.verify` (against independently supplied public keys when
given), and recomputes, from the stored DP events and with the accountant each entry
names, every epsilon the report shows: each release alone, the cumulative (lifetime)
epsilon after every entry, what is spent and what is left of the budget.  Nothing is
taken from a separate copy of the figures: the epsilons entries *state* are shown only
beside their recomputation, as a check.

Cost: cumulative epsilons use the accountants' incremental compositions
(:class:`~privfl.privacy.ledger.epsilon.PrefixEpsilons`), so an owner's n entries cost
n cheap steps, not n recompositions; a release's own epsilon is cached per
(accountant, event, delta), so owners with the same settings share one computation.

The result is a :class:`Report` whose ``document`` is the JSON document described in
``docs/report-schema.md`` (``schema_version`` :data:`SCHEMA_VERSION`); the HTML, PDF
and CSV writers render that same document, so all formats show the same numbers.
"""

from __future__ import annotations

import base64
import math
import platform
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from privfl.privacy.accountants import get_accountant
from privfl.privacy.events import DpEvent, Gaussian, PoissonSubsampledGaussian
from privfl.privacy.keys import KeyFileError, load_public_key
from privfl.privacy.ledger import Entry, LedgerError, VerificationReport, decode_entry, verify
from privfl.privacy.ledger.epsilon import EPSILON_ABS_TOL, EPSILON_REL_TOL, PrefixEpsilons, epsilon_matches
from privfl.privacy.ledger.errors import NotALedgerError, UnsupportedEvent
from privfl.privacy.ledger.store import FEDERATION_LEDGER, OWNER_LEDGER, LedgerStore
from privfl.privacy.report import evidence as ev
from privfl.privacy.report.gdpr import article_25, article_30, article_32, limitations
from privfl.privacy.report.processing_record import ProcessingRecord, load_processing_record, records_for
from privfl.privacy.report.registry import epsilon_registry

SCHEMA_VERSION = "1.0"
REPORT_TYPE = "privfl.privacy-budget-report"


# --------------------------------------------------------------------------- the result


@dataclass
class Report:
    """A built report: ``document`` is the JSON document every format renders."""

    document: dict[str, Any]

    @property
    def intact(self) -> bool:
        """Every ledger verified (signatures, hash chain, stated epsilons)."""
        return bool(self.document["status"]["intact"])

    @property
    def ok(self) -> bool:
        """Intact, and every figure could be derived (what ``--strict`` requires)."""
        return bool(self.document["status"]["ok"])

    @property
    def problems(self) -> list[str]:
        return list(self.document["status"]["problems"])

    @property
    def warnings(self) -> list[str]:
        return list(self.document["status"]["warnings"])

    @property
    def owners(self) -> list[dict[str, Any]]:
        return self.document["owners"]

    def owner(self, owner_id: str) -> dict[str, Any]:
        for owner in self.owners:
            if owner["owner_id"] == owner_id:
                return owner
        raise KeyError(owner_id)


# --------------------------------------------------------------------------- inputs


@dataclass
class _LedgerFile:
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


KeysArg = Ed25519PublicKey | Mapping[str, Any] | str | Path | Sequence[str | Path] | None


def resolve_ledger_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Ledger files from files and folders (a folder: its ``*.db``; a run folder: its ``ledgers/*.db``)."""
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            folder = path / "ledgers" if (path / "ledgers").is_dir() else path
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
    result: dict[str, Ed25519PublicKey] = {}
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(path.glob("*.pub")))
        else:
            files.append(path)
    if len(files) == 1 and len(owner_ledgers) == 1 and not Path(items[0]).is_dir():
        return {owner_ledgers[0]: _load_key(files[0])}
    for path in files:
        result[path.name.removesuffix(".pub")] = _load_key(path)
    return result


def _load_key(path: str | Path) -> Ed25519PublicKey:
    try:
        return load_public_key(path)
    except KeyFileError as err:
        raise ValueError(str(err)) from None


def _read_ledger(path: Path) -> _LedgerFile:
    ledger = _LedgerFile(path=path)
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


def _load_history(history: str | Path | Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, str]:
    if history is None:
        return None, ""
    if isinstance(history, Mapping):
        return dict(history), "history (given as data)"
    import json

    path = Path(history)
    if not path.is_file():
        raise FileNotFoundError(f"no run history at {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not a run history (invalid JSON: {err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("rounds"), list):
        raise ValueError(f"{path} is not a privfl run history (no 'rounds' list)")
    return data, str(path)


# --------------------------------------------------------------------------- epsilons


class _ReleaseEpsilons:
    """Epsilon of one release alone, per (accountant, event, delta), computed once."""

    def __init__(self) -> None:
        self._cache: dict[tuple, float | None] = {}

    def __call__(self, accountant: str, event: DpEvent | None, delta: float) -> float | None:
        key = (accountant, event, delta)
        if key not in self._cache:
            try:
                self._cache[key] = None if event is None else get_accountant(accountant).epsilon([event], delta)
            except (TypeError, ValueError, UnsupportedEvent):
                self._cache[key] = None
        return self._cache[key]


def event_fields(event: DpEvent | None, mechanism: str) -> dict[str, Any]:
    if isinstance(event, PoissonSubsampledGaussian):
        return {"type": "poisson_subsampled_gaussian", "noise_multiplier": event.noise_multiplier,
                "sample_rate": event.sample_rate, "steps": event.steps}
    if isinstance(event, Gaussian):
        return {"type": "gaussian", "noise_multiplier": event.noise_multiplier, "sample_rate": None, "steps": None}
    return {"type": mechanism or "none", "noise_multiplier": None, "sample_rate": None, "steps": None}


def _iso(nanos: int) -> str:
    return datetime.fromtimestamp(nanos / 1e9, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- one owner


def _owner_section(owner_id: str, entries: list[Entry], source: _LedgerFile, supplied: bool,
                   release_epsilon: _ReleaseEpsilons, checked_against: list[str]) -> dict[str, Any]:
    verification = source.verification
    sequences = [e.sequence for e in entries]
    complete = sequences == list(range(1, len(entries) + 1))
    own_problems: list[str] = []
    held_from_one = True  # the entries so far are the owner's chain from entry 1, without a gap

    prefix = PrefixEpsilons()
    charges = 0
    unsupported = ""
    last: dict[tuple[str, float], tuple[int, float | None]] = {}  # (acct, delta) -> (charges, epsilon)
    rows: list[dict[str, Any]] = []
    for index, entry in enumerate(entries):
        held_from_one = held_from_one and entry.sequence == index + 1
        cumulative_before = _prefix_epsilon(prefix, last, charges, entry, unsupported)
        if entry.is_charge and not unsupported:
            try:
                prefix.add_charge(entry.event)
                charges += 1
            except UnsupportedEvent as err:
                unsupported = f"entry {entry.sequence}: {err}"
        elif entry.is_charge:
            charges += 1
        cumulative = _prefix_epsilon(prefix, last, charges, entry, unsupported) if not unsupported else None
        alone = release_epsilon(entry.accountant, entry.event, entry.delta) if entry.is_charge else None
        increment = None
        if entry.is_charge and cumulative is not None and cumulative_before is not None:
            increment = cumulative - cumulative_before
        stated = entry.cumulative_epsilon
        # The check privfl.privacy.ledger.verify makes, made here once with the figures the report shows:
        # exact while the chain is held from entry 1, else the stated epsilon may not be below what is held.
        matches = None if cumulative is None else (
            epsilon_matches(stated, cumulative) if held_from_one else stated >= cumulative * (1 - EPSILON_REL_TOL))
        if matches is not None:
            source.epsilons_checked += 1
        if matches is False:
            own_problems.append(
                f"owner {owner_id}, entry {entry.sequence}: states cumulative epsilon {stated!r}, but its charges "
                f"compose to {cumulative!r} ({entry.accountant}, delta={entry.delta:g})" if held_from_one else
                f"owner {owner_id}, entry {entry.sequence}: states cumulative epsilon {stated!r}, below the "
                f"{cumulative!r} that the charges held here alone compose to ({entry.accountant})")
        remaining = None if cumulative is None else entry.epsilon_budget - cumulative
        rows.append({
            "sequence": entry.sequence,
            "kind": entry.kind,
            "run_id": entry.run_id,
            "round": entry.round,
            "timestamp": _iso(entry.timestamp_unix_nanos),
            "timestamp_unix_nanos": entry.timestamp_unix_nanos,
            "mechanism": entry.mechanism or "none",
            "event": event_fields(entry.event, entry.mechanism),
            "clipping_norm": entry.clipping_norm,
            "privacy_unit": entry.privacy_unit,
            "delta": entry.delta,
            "accountant": entry.accountant,
            "epsilon_budget": entry.epsilon_budget,
            "purpose": entry.purpose,
            "refusal_reason": entry.refusal_reason,
            "epsilon_release": alone,
            "epsilon_increment": increment,
            "epsilon_cumulative": cumulative,
            "epsilon_cumulative_stated": stated,
            "epsilon_stated_matches": matches,
            "epsilon_remaining": remaining,
            "update_hash": entry.update_hash.hex(),
            "entry_hash": entry.hash.hex(),
            "previous_hash": entry.previous_hash.hex(),
            "key_fingerprint": entry.key_fingerprint,
            "signature": entry.signature.hex(),
            "entry_base64": base64.b64encode(entry.entry_bytes).decode("ascii"),
        })

    charge_rows = [r for r in rows if r["kind"] == "charge"]
    refusal_rows = [r for r in rows if r["kind"] == "refusal"]
    latest = rows[-1] if rows else None
    accountant = latest["accountant"] if latest else ""
    delta = latest["delta"] if latest else None
    budget = latest["epsilon_budget"] if latest else None
    recomputed = latest["epsilon_cumulative"] if latest else 0.0
    if latest is None:
        spent, basis = 0.0, "no entries"
    elif unsupported:
        spent, basis = None, f"cannot be computed: {unsupported}"
    elif complete:
        spent, basis = recomputed, ev.RECOMPUTED
    else:
        spent = max(latest["epsilon_cumulative_stated"], recomputed or 0.0)
        basis = ev.OWNER_SIGNED_PARTIAL
    remaining = None if spent is None or budget is None else budget - spent
    runs = _runs(rows)
    settings = _settings(charge_rows)
    units = sorted({r["privacy_unit"] for r in rows})
    head = verification.heads.get(owner_id) if verification else None
    if head is None and entries:
        head = (entries[-1].sequence, entries[-1].hash.hex())
    source.epsilon_problems.extend(own_problems)
    problem = verification.problem if verification else None
    problem_here = own_problems[0] if own_problems else None
    if problem is not None and (problem.owner_id in ("", owner_id)):
        problem_here = str(problem)
    key_fp = (verification.key_fingerprints.get(owner_id) if verification else None) or \
        (entries[-1].key_fingerprint if entries else "")
    return {
        "owner_id": owner_id,
        "source": {"ledger": str(source.path), "ledger_kind": source.kind,
                   "chain_complete": complete,
                   "first_sequence": sequences[0] if sequences else None,
                   "last_sequence": sequences[-1] if sequences else None},
        "integrity": {  # intact, verdict, problem, evidence: settled once every owner is read (_settle_integrity)
            "intact": None,
            "verdict": None,
            "problem": problem_here,
            "key_fingerprint": key_fp,
            "key_independently_supplied": supplied,
            "head": {"sequence": head[0], "hash": head[1]} if head else None,
            "checked_against": checked_against,
            "evidence": None,
        },
        "privacy_unit": units[0] if len(units) == 1 else ("mixed" if units else "unspecified"),
        "privacy_units": units,
        "mechanisms": sorted({r["mechanism"] for r in charge_rows}),
        "mechanism_settings": settings,
        "accountant": accountant,
        "accountants": sorted({r["accountant"] for r in rows}),
        "delta": delta,
        "epsilon_spent": spent,
        "epsilon_spent_basis": basis,
        "epsilon_spent_stated": latest["epsilon_cumulative_stated"] if latest else None,
        "epsilon_spent_recomputed_lower_bound": None if complete else recomputed,
        "epsilon_budget": budget,
        "epsilon_budgets_stated": sorted({r["epsilon_budget"] for r in rows}),
        "epsilon_remaining": remaining,
        "budget_used_fraction": (spent / budget) if spent is not None and budget else None,
        "over_budget": bool(remaining is not None and remaining < -EPSILON_ABS_TOL),
        "charges": len(charge_rows),
        "refusals": len(refusal_rows),
        "refused_releases": [
            {"run_id": r["run_id"], "round": r["round"], "timestamp": r["timestamp"], "reason": r["refusal_reason"],
             "epsilon_spent_before": r["epsilon_cumulative"], "requested_event": r["event"]}
            for r in refusal_rows],
        "purposes": sorted({r["purpose"] for r in rows if r["purpose"]}),
        "first_entry": rows[0]["timestamp"] if rows else None,
        "last_entry": rows[-1]["timestamp"] if rows else None,
        "runs": runs,
        "stated_epsilons_matching": sum(1 for r in rows if r["epsilon_stated_matches"]),
        "stated_epsilons_not_matching": [r["sequence"] for r in rows if r["epsilon_stated_matches"] is False],
        "unsupported_event": unsupported or None,
        "entries": rows,
    }


def _settle_integrity(owner: dict[str, Any], source: _LedgerFile) -> None:
    """An owner's integrity is its ledger file's: any bad entry in the file makes every owner in it suspect."""
    integrity = owner["integrity"]
    integrity["intact"] = intact = source.intact
    integrity["verdict"] = "INTACT" if intact else "NOT INTACT"
    integrity["problem"] = integrity["problem"] or (None if intact else source.problem)
    integrity["evidence"] = ev.LEDGER_VERIFIED if intact else ev.LEDGER_UNVERIFIED


def _prefix_epsilon(prefix: PrefixEpsilons, last: dict, charges: int, entry: Entry, unsupported: str) -> float | None:
    if unsupported:
        return None
    key = (entry.accountant, entry.delta)
    cached = last.get(key)
    if cached is not None and cached[0] == charges:
        return cached[1]
    if charges == 0:
        value: float | None = 0.0
    else:
        try:
            value = prefix.epsilon(entry.accountant, entry.delta)
        except UnsupportedEvent:
            value = None
    last[key] = (charges, value)
    return value


def _runs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    runs: dict[str, dict[str, Any]] = {}
    before = 0.0
    for row in rows:
        run = runs.get(row["run_id"])
        if run is None:
            run = runs[row["run_id"]] = {
                "run_id": row["run_id"], "charges": 0, "refusals": 0, "first_round": row["round"],
                "last_round": row["round"], "first_entry": row["timestamp"], "last_entry": row["timestamp"],
                "epsilon_before": before, "epsilon_after": before, "purposes": []}
        run["charges" if row["kind"] == "charge" else "refusals"] += 1
        run["first_round"] = min(run["first_round"], row["round"])
        run["last_round"] = max(run["last_round"], row["round"])
        run["last_entry"] = row["timestamp"]
        if row["epsilon_cumulative"] is not None:
            run["epsilon_after"] = before = row["epsilon_cumulative"]
        if row["purpose"] and row["purpose"] not in run["purposes"]:
            run["purposes"].append(row["purpose"])
    return list(runs.values())


def _settings(charge_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Distinct mechanism settings of an owner's charges, with how often each was used."""
    settings: dict[tuple, dict[str, Any]] = {}
    for row in charge_rows:
        e = row["event"]
        key = (e["type"], e["noise_multiplier"], e["sample_rate"], row["clipping_norm"], row["privacy_unit"])
        s = settings.get(key)
        if s is None:
            s = settings[key] = {"mechanism": e["type"], "noise_multiplier": e["noise_multiplier"],
                                 "sample_rate": e["sample_rate"], "clipping_norm": row["clipping_norm"],
                                 "privacy_unit": row["privacy_unit"], "releases": 0, "steps_per_release": [],
                                 "steps_total": 0}
        s["releases"] += 1
        steps = e["steps"] or 0
        s["steps_total"] += steps
        if steps not in s["steps_per_release"]:
            s["steps_per_release"].append(steps)
    return list(settings.values())


# --------------------------------------------------------------------------- history


def _match_history(history: dict[str, Any], owners: list[dict[str, Any]]) -> tuple[str | None, str]:
    """The ledger run whose charges best match the history's participants per round."""
    wanted = {(p, r["round"]) for r in history.get("rounds", []) for p in r.get("participants", [])}
    refused = {(p, r["round"]) for r in history.get("rounds", []) for p in (r.get("refused") or {})}
    scores: dict[str, int] = {}
    for owner in owners:
        for row in owner["entries"]:
            key = (owner["owner_id"], row["round"])
            if (row["kind"] == "charge" and key in wanted) or (row["kind"] == "refusal" and key in refused):
                scores[row["run_id"]] = scores.get(row["run_id"], 0) + 1
    if not scores:
        return None, "no ledger run matches the history's participants; epsilon is not shown beside accuracy"
    best = max(scores, key=lambda run: (scores[run], run))
    total = len(wanted) + len(refused)
    note = f"history matched to ledger run {best}: {scores[best]} of its {total} releases and refusals found"
    return best, note


def _history_section(history: dict[str, Any], source: str, owners: list[dict[str, Any]]) -> dict[str, Any]:
    run_id, note = _match_history(history, owners)
    # Per owner: lifetime epsilon after each round of the matched run (carried forward).
    tracks: list[tuple[float | None, dict[int, float | None]]] = []
    for owner in owners:
        start, by_round = None, {}
        for run in owner["runs"]:
            if run["run_id"] == run_id:
                start = run["epsilon_before"]
        if start is None:
            continue
        for row in owner["entries"]:
            if row["run_id"] == run_id and row["kind"] == "charge":
                by_round[row["round"]] = row["epsilon_cumulative"]
        tracks.append((start, by_round))
    rounds = []
    current = [start for start, _ in tracks]
    for record in sorted(history.get("rounds", []), key=lambda r: r.get("round", 0)):
        number = record.get("round", 0)
        for i, (_, by_round) in enumerate(tracks):
            if number in by_round:
                current[i] = by_round[number]
        known = [c for c in current if c is not None]
        rounds.append({
            "round": number,
            "test_accuracy": _number(record.get("test_accuracy")),
            "test_loss": _number(record.get("test_loss")),
            "participants": len(record.get("participants") or []),
            "refused": len(record.get("refused") or {}),
            "epsilon_max": max(known) if known and run_id else None,
            "epsilon_median": statistics.median(known) if known and run_id else None,
            "epsilon_min": min(known) if known and run_id else None,
        })
    config = history.get("config") or {}
    return {
        "source": source,
        "evidence": ev.RUN_HISTORY,
        "experiment": history.get("experiment"),
        "status": history.get("status"),
        "matched_run_id": run_id,
        "note": note,
        "final_test_accuracy": _number(history.get("final_test_accuracy")),
        "config": {k: config.get(k) for k in ("dataset", "model", "num-owners", "num-rounds", "dp",
                                              "noise-multiplier", "max-grad-norm", "batch-size", "local-epochs",
                                              "delta", "epsilon-budget", "accountant", "purpose") if k in config},
        "rounds": rounds,
    }


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# --------------------------------------------------------------------------- the report


def build_report(
    ledger_paths: str | Path | Iterable[str | Path],
    history: str | Path | Mapping[str, Any] | None = None,
    processing_record: str | Path | ProcessingRecord | Iterable[str | Path | ProcessingRecord] | None = None,
    keys: KeysArg = None,
    *,
    title: str | None = None,
    key_files_dir: str | Path | None = None,
) -> Report:
    """Build the report for one or more ledger files (owner and/or federation ledgers).

    ``history``: a run's ``history.json`` (path or parsed) for accuracy per round.
    ``processing_record``: TOML file(s) the owner fills in (see ``docs/report-schema.md``).
    ``keys``: public keys supplied independently of the ledgers (see :func:`load_keys`);
    without them each ledger is verified against the key it records, which the report flags.
    ``key_files_dir``: a folder holding owners' private ``<owner>.key`` files whose file
    modes the report checks (Art. 32); nothing is read from them.
    """
    if isinstance(ledger_paths, (str, Path)):
        ledger_paths = [ledger_paths]
    paths = resolve_ledger_paths(ledger_paths)
    if not paths:
        raise ValueError("no ledger given")
    history_data, history_source = _load_history(history)
    records = _load_records(processing_record)

    files = [_read_ledger(p) for p in paths]
    owner_files = [f for f in files if f.kind == OWNER_LEDGER]
    federation_files = [f for f in files if f.kind == FEDERATION_LEDGER]
    supplied = load_keys(keys, [f.owner_id for f in owner_files])

    held: dict[Path, dict[str, list[Entry]]] = {}  # federation ledger -> owner -> its entries there
    for federation in federation_files:
        by_owner = held[federation.path] = {}
        for entry in federation.entries:
            by_owner.setdefault(entry.owner_id, []).append(entry)
        federation.verification = verify(federation.path, {o: k for o, k in supplied.items() if o in by_owner},
                                         epsilon_check="none")
    for ledger in owner_files:
        anchors, sources = [], []
        for federation in federation_files:
            copies = held[federation.path].get(ledger.owner_id)
            if copies and federation.verification and federation.verification.ok:
                anchors.extend(copies)
                sources.append(str(federation.path))
        ledger.verification = verify(ledger.path, supplied.get(ledger.owner_id), anchors=anchors,
                                     anchors_source=" and ".join(f"the federation ledger {s}" for s in sources)
                                     or "the anchors", epsilon_check="none")
        ledger.anchored_by = sources
    for broken in (f for f in files if f.kind not in (OWNER_LEDGER, FEDERATION_LEDGER)):
        broken.verification = verify(broken.path, None, epsilon_check="none")

    release_epsilon = _ReleaseEpsilons()
    owners: list[dict[str, Any]] = []
    sourced: set[str] = set()
    for ledger in sorted(owner_files, key=lambda f: f.owner_id):
        if ledger.owner_id in sourced:
            continue  # the same owner's ledger given twice (e.g. a copy): the first one counts
        sourced.add(ledger.owner_id)
        entries = [e for e in ledger.entries if e.owner_id == ledger.owner_id]
        owners.append(_owner_section(ledger.owner_id, entries, ledger, ledger.owner_id in supplied,
                                     release_epsilon, ledger.anchored_by))
    federation_only: list[str] = []
    for owner_id in sorted({o for by_owner in held.values() for o in by_owner} - sourced):
        # No owner ledger given: the federation ledger holding most of the owner's chain stands in for it.
        federation = max(federation_files, key=lambda f: len(held[f.path].get(owner_id, ())))
        federation_only.append(owner_id)
        owners.append(_owner_section(owner_id, held[federation.path][owner_id], federation, owner_id in supplied,
                                     release_epsilon, []))
    owners.sort(key=lambda o: o["owner_id"])
    by_path = {str(f.path): f for f in files}
    for owner in owners:
        _settle_integrity(owner, by_path[owner["source"]["ledger"]])

    history_section = _history_section(history_data, history_source, owners) if history_data else None
    ledgers = [_ledger_section(f, supplied) for f in files]
    status = _status(files, owners, supplied, federation_only, history_section, records)
    for owner in owners:
        record = records_for(records, owner["owner_id"])
        owner["processing_record"] = record.source if record else None
        owner["epsilon_registry"] = epsilon_registry(owner, record, history_section)
    key_modes = _key_file_modes(key_files_dir) if key_files_dir else None
    document: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "report_type": REPORT_TYPE,
        "title": title or _default_title(owners, files, history_section),
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "generator": _generator(),
        "status": status,
        "summary": _summary(owners, files, history_section, status),
        "ledgers": ledgers,
        "owners": owners,
        "history": history_section,
        "processing_records": [r.to_dict() for r in records],
        "gdpr": {
            "article_30": article_30(records, owners),
            "article_25": article_25(owners, history_section),
            "article_32": article_32(owners, ledgers, key_modes),
        },
        "limitations": limitations(owners, supplied, history_section),
        "evidence_levels": ev.DESCRIPTIONS,
        "recompute": _recompute_note(),
    }
    return Report(_finite(document))


def _load_records(processing_record) -> list[ProcessingRecord]:
    if processing_record is None:
        return []
    if isinstance(processing_record, (str, Path, ProcessingRecord, dict)):
        processing_record = [processing_record]
    records = [load_processing_record(r) for r in processing_record]
    owners_named = [o for r in records for o in r.owner_ids]
    dupes = sorted({o for o in owners_named if owners_named.count(o) > 1})
    if dupes:
        from privfl.privacy.report.processing_record import ProcessingRecordError

        raise ProcessingRecordError(f"owner(s) {', '.join(dupes)} named by several processing records; keep one")
    if sum(1 for r in records if not r.owner_ids) > 1:
        from privfl.privacy.report.processing_record import ProcessingRecordError

        raise ProcessingRecordError("several processing records cover every owner; give each an owner_ids list")
    return records


def _ledger_section(ledger: _LedgerFile, supplied: Mapping[str, Ed25519PublicKey]) -> dict[str, Any]:
    v = ledger.verification
    owners = sorted({e.owner_id for e in ledger.entries} | ({ledger.owner_id} if ledger.owner_id else set()))
    notes = list(v.notes) if v else []
    if ledger.kind == FEDERATION_LEDGER and ledger.epsilons_checked < len(ledger.entries) and ledger.intact:
        notes.append("stated epsilons of owners whose own ledger was given were checked there (the copies here "
                     "were compared with it byte for byte)")
    return {
        "path": str(ledger.path),
        "ledger_kind": ledger.kind or "unreadable",
        "owner_id": ledger.owner_id or None,
        "owners": owners,
        "entries": len(ledger.entries),
        "intact": ledger.intact,
        "verdict": "INTACT" if ledger.intact else "NOT INTACT",
        "problem": ledger.problem,
        "unreadable_entries": ledger.unreadable,
        "entries_checked": v.entries_checked if v else 0,
        "epsilons_checked": ledger.epsilons_checked,
        "epsilon_problems": ledger.epsilon_problems,
        "keys_independently_supplied": bool(v and v.keys_independently_supplied),
        "owners_with_supplied_keys": sorted(o for o in owners if o in supplied),
        "key_fingerprints": dict(sorted(v.key_fingerprints.items())) if v else {},
        "heads": {o: {"sequence": s, "hash": h} for o, (s, h) in sorted(v.heads.items())} if v else {},
        "notes": notes,
    }


def _status(files: list[_LedgerFile], owners: list[dict[str, Any]], supplied: Mapping[str, Any],
            federation_only: list[str], history: dict[str, Any] | None,
            records: list[ProcessingRecord]) -> dict[str, Any]:
    problems: list[str] = []
    warnings: list[str] = []
    for ledger in files:
        if not ledger.intact:
            problems.append(f"{ledger.path}: NOT INTACT: {ledger.problem or 'not verified'}")
        for extra in ledger.epsilon_problems[1:]:
            problems.append(f"{ledger.path}: {extra}")
    for owner in owners:
        if owner["unsupported_event"]:
            problems.append(f"owner {owner['owner_id']}: epsilon cannot be computed ({owner['unsupported_event']})")
        if owner["over_budget"]:
            problems.append(f"owner {owner['owner_id']}: epsilon {owner['epsilon_spent']:.4g} exceeds the budget "
                            f"{owner['epsilon_budget']:g}")
    unpinned = [o["owner_id"] for o in owners if not o["integrity"]["key_independently_supplied"]]
    if unpinned:
        shown = ", ".join(unpinned[:8]) + (f" and {len(unpinned) - 8} more" if len(unpinned) > 8 else "")
        warnings.append(
            f"public keys were read from the ledger files themselves for {len(unpinned)} of {len(owners)} owners "
            f"({shown}): a ledger rewritten wholesale under another key would also verify; supply the owners' "
            "keys (--public-key or --keys-dir) to rule that out")
    for owner_id in federation_only:
        owner = next(o for o in owners if o["owner_id"] == owner_id)
        if not owner["source"]["chain_complete"]:
            warnings.append(f"owner {owner_id}: only the federation ledger's partial copy of its chain was given "
                            "(entries from other federations are missing); its epsilon is the owner's signed "
                            "statement, checked against a lower bound")
    if federation_only and not any(f.kind == OWNER_LEDGER for f in files):
        warnings.append("this report reads the federation ledger (the server's copy of the owners' receipts); "
                        "each owner's own ledger is the record that counts and may hold more (other runs, later "
                        "entries)")
    for owner in owners:
        declared = records_for(records, owner["owner_id"])
        if declared is None:
            continue
        budget = declared.get("privacy_budget", "epsilon")
        if budget is not None and owner["epsilon_budget"] is not None and not math.isclose(
                budget, owner["epsilon_budget"], rel_tol=1e-9):
            warnings.append(f"owner {owner['owner_id']}: the processing record declares an epsilon budget of "
                            f"{budget:g}, but the ledger's entries state {owner['epsilon_budget']:g}")
        delta = declared.get("privacy_budget", "delta")
        if delta is not None and owner["delta"] is not None and not math.isclose(delta, owner["delta"], rel_tol=1e-9):
            warnings.append(f"owner {owner['owner_id']}: the processing record declares delta {delta:g}, "
                            f"but the ledger's entries state {owner['delta']:g}")
    if history is not None and history["matched_run_id"] is None:
        warnings.append(f"run history {history['source']}: {history['note']}")
    intact = all(f.intact for f in files)
    ok = not problems
    return {
        "intact": intact,
        "ok": ok,
        "verdict": "INTACT" if intact else "NOT INTACT",
        "headline": _headline(intact, ok, files, problems, warnings),
        "problems": problems,
        "warnings": warnings,
    }


def _headline(intact: bool, ok: bool, files: list[_LedgerFile], problems: list[str], warnings: list[str]) -> str:
    n = len(files)
    files_text = "the ledger file" if n == 1 else f"all {n} ledger files"
    if not intact:
        bad = sum(1 for f in files if not f.intact)
        return (f"NOT INTACT: {bad} of {n} ledger file(s) failed verification. The figures below are computed "
                "from entries that cannot be relied on.")
    if not ok:
        return f"Ledgers intact, but {len(problems)} problem(s) found: see below."
    if warnings:
        return f"INTACT: {files_text} verified (signatures, hash chain, every stated epsilon); see the notes."
    return (f"INTACT: {files_text} verified (signatures, hash chain, every stated epsilon) "
            "against independently supplied keys.")


def _summary(owners: list[dict[str, Any]], files: list[_LedgerFile], history: dict[str, Any] | None,
             status: dict[str, Any]) -> dict[str, Any]:
    spent = [(o["epsilon_spent"], o["owner_id"]) for o in owners if o["epsilon_spent"] is not None]
    times = [t for o in owners for t in (o["first_entry"], o["last_entry"]) if t]
    runs = sorted({r["run_id"] for o in owners for r in o["runs"]})
    units = sorted({u for o in owners for u in o["privacy_units"]})
    summary = {
        "owners": len(owners),
        "ledger_files": len(files),
        "entries": sum(len(o["entries"]) for o in owners),
        "charges": sum(o["charges"] for o in owners),
        "refusals": sum(o["refusals"] for o in owners),
        "runs": runs,
        "privacy_units": units,
        "mechanisms": sorted({m for o in owners for m in o["mechanisms"]}),
        "accountants": sorted({a for o in owners for a in o["accountants"]}),
        "deltas": sorted({o["delta"] for o in owners if o["delta"] is not None}),
        "epsilon_spent_max": max(spent)[0] if spent else None,
        "epsilon_spent_max_owner": max(spent)[1] if spent else None,
        "epsilon_spent_min": min(spent)[0] if spent else None,
        "epsilon_spent_min_owner": min(spent)[1] if spent else None,
        "owners_with_refusals": [o["owner_id"] for o in owners if o["refusals"]],
        "owners_over_budget": [o["owner_id"] for o in owners if o["over_budget"]],
        "first_entry": min(times) if times else None,
        "last_entry": max(times) if times else None,
        "final_test_accuracy": history["final_test_accuracy"] if history else None,
    }
    summary["in_words"] = _in_words(summary, owners, status)
    return summary


UNIT_WORDS = {"record": "record-level: it protects each single record (e.g. one patient) of an owner's data",
              "owner": "owner-level: it protects each owner's whole contribution"}


def _in_words(s: dict[str, Any], owners: list[dict[str, Any]], status: dict[str, Any]) -> str:
    """The summary as a few plain sentences, for a reader who is not a DP specialist."""
    if not owners:
        return "The ledgers hold no entries."
    first, last = (s["first_entry"] or "")[:10], (s["last_entry"] or "")[:10]
    when = "" if not first else (f" on {first}" if first == last else f" between {first} and {last}")
    who = "1 data owner" if len(owners) == 1 else f"{len(owners)} data owners"
    text = [f"{who.capitalize()} released {s['charges']} model update(s){when}, each charged to the owner's privacy "
            "ledger with the DP mechanism that produced it."]
    units = [UNIT_WORDS.get(u, u) for u in s["privacy_units"]]
    if units:
        text.append("The guarantee is " + "; ".join(units) + ".")
    budgets = sorted({o["epsilon_budget"] for o in owners if o["epsilon_budget"] is not None})
    deltas = ", ".join(f"{d:g}" for d in s["deltas"])
    accountants = ", ".join(s["accountants"])
    if s["epsilon_spent_max"] is not None:
        if len(owners) == 1:
            spread = f"is {_g(s['epsilon_spent_max'])}"
        elif _g(s["epsilon_spent_min"]) == _g(s["epsilon_spent_max"]):
            spread = f"is {_g(s['epsilon_spent_max'])} for every owner"
        else:
            spread = (f"ranges from {_g(s['epsilon_spent_min'])} ({s['epsilon_spent_min_owner']}) to "
                      f"{_g(s['epsilon_spent_max'])} ({s['epsilon_spent_max_owner']})")
        text.append(f"The privacy spent over each owner's lifetime (epsilon at delta {deltas}, {accountants} "
                    f"accountant) {spread}, against budget(s) of {', '.join(_g(b) for b in budgets)}; "
                    "smaller is more private.")
    if s["refusals"]:
        text.append(f"{s['refusals']} release(s) were refused by their owner ({_names(s['owners_with_refusals'])}), "
                    "each recorded with its reason (normally: it would have crossed the budget); a refused release "
                    "costs no privacy.")
    if s["owners_over_budget"]:
        text.append(f"Owner(s) over budget: {_names(s['owners_over_budget'])}.")
    if not status["intact"]:
        text.append("WARNING: at least one ledger failed verification; the figures above cannot be relied on.")
    elif status["warnings"]:
        text.append("All ledgers verified intact (see the notes on what that covers).")
    else:
        text.append("All ledgers verified intact against the owners' independently supplied keys.")
    return " ".join(text)


def _names(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _g(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) else str(value)


def _default_title(owners: list[dict[str, Any]], files: list[_LedgerFile], history: dict[str, Any] | None) -> str:
    if history and history.get("experiment"):
        return f"Privacy budget report: {history['experiment']} ({len(owners)} data owners)"
    if len(owners) == 1:
        return f"Privacy budget report: data owner {owners[0]['owner_id']}"
    return f"Privacy budget report: {len(owners)} data owners"


def _generator() -> dict[str, Any]:
    versions = {}
    for package in ("privfl", "opacus", "dp-accounting", "cryptography"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"name": "privfl report", "versions": versions, "python": platform.python_version()}


def _recompute_note() -> dict[str, Any]:
    return {
        "how": "For each owner, take the entries in sequence order. A charge's DP event (owners[].entries[].event) "
               "is composed with every earlier charge by the accountant the entry names, at the entry's delta; "
               "that is epsilon_cumulative. epsilon_release is the event alone under the same accountant and delta; "
               "epsilon_increment is the change in epsilon_cumulative. Refusals never count. epsilon_remaining = "
               "epsilon_budget - epsilon_cumulative. The signed entry bytes (entry_base64, signature) let anyone "
               "re-verify: `privfl ledger verify LEDGER --public-key OWNER.pub`.",
        "python": "from privfl.privacy.accountants import get_accountant\n"
                  "from privfl.privacy.events import PoissonSubsampledGaussian as E\n"
                  "events = [E(e['noise_multiplier'], e['sample_rate'], e['steps']) for e in charges_so_far]\n"
                  "epsilon = get_accountant(accountant).epsilon(events, delta)",
        "epsilon_rel_tol": EPSILON_REL_TOL,
        "epsilon_abs_tol": EPSILON_ABS_TOL,
        "accountants": {
            "rdp": "Renyi DP (Mironov 2017) as implemented by Opacus; an upper bound",
            "prv": "privacy random variables (Gopi et al. 2021) as implemented by Opacus",
            "pld": "privacy loss distributions (dp-accounting, pessimistic discretisation); the tightest",
        },
        "neighbouring_relation": "add or remove one record (one privacy unit)",
    }


def _key_file_modes(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    files = sorted(folder.glob("*.key")) if folder.is_dir() else []
    modes = {p.name.removesuffix(".key"): oct(p.stat().st_mode & 0o777) for p in files}
    loose = sorted(o for o, m in modes.items() if int(m, 8) & 0o077)
    return {"folder": str(folder), "modes": modes, "loose": loose, "checked": bool(files)}


def _finite(value: Any) -> Any:
    """JSON has no infinity: a non-private epsilon is written as the string "inf"."""
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if math.isnan(value):
            return None
        return value
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


__all__ = ["Report", "SCHEMA_VERSION", "build_report", "event_fields", "load_keys", "resolve_ledger_paths"]
