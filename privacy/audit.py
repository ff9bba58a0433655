"""Audit a run: its ledgers and its history, each verified and checked against the others.

One file can prove that nothing *inside* it was altered.  What an attacker or an
accident does *around* the files needs the other records: the owners' ledgers, the
experiment's federation ledger (the receipts the coordinator accepted, anchored in its
own signed chain), the coordinator's registry (every head it accepted, across
experiments) and the run history (what the server saw, round by round).  So an audit:

1. verifies every file on its own, against keys from outside it (the owners'
   registered public keys, the coordinator's public key);
2. checks each owner ledger against the heads the registry anchored for it (catches
   truncation, an older copy, a lost or damaged ``-wal``, a re-signed history);
3. checks the federation ledger's anchors against the registry, both ways (catches a
   pruned registry or federation ledger);
4. checks the history against the ledgers: every receipt the server recorded is in
   the federation ledger and in the owner's ledger;
5. lists the charges an owner made for this experiment that the coordinator never
   anchored: released but never aggregated (a crash, a lost reply).  They are not an
   integrity failure, but they count in the owner's epsilon and the report says so.

``privfl ledger verify RUN_DIR``, ``privfl report RUN_DIR`` and ``privfl simulate`` all
run this audit; a problem makes each exit non-zero.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from privfl.privacy.keys import load_public_key
from privfl.privacy.ledger import Entry, VerificationReport, verify
from privfl.privacy.ledger.anchor import Anchor
from privfl.privacy.ledger.export import read_ledger
from privfl.privacy.ledger.registry import decode_stored
from privfl.privacy.ledger.store import LedgerStore
from privfl.privacy.policy import LEDGER_FILE
from privfl.server.history import load_history

HISTORY, CONFIG, FEDERATION = "history.json", "config.json", "ledgers/federation.db"


@dataclass
class RunAudit:
    run_dir: Path
    experiment_id: str = ""
    reports: list[VerificationReport] = field(default_factory=list)  # every file, verified on its own
    problems: list[str] = field(default_factory=list)  # integrity failures across files
    unaggregated: list[str] = field(default_factory=list)  # charged and released, never anchored
    owner_ledgers: dict[str, Path] = field(default_factory=dict)
    # owner -> {"lifetime": epsilon of all its record-level charges, "experiment": of this experiment's alone,
    #           "accountant", "delta", "budget"}: a restarted or repeated experiment composes the earlier spend
    epsilon: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems and all(r.ok for r in self.reports)

    def all_problems(self) -> list[str]:
        return [f"{r.path}: {r.problem}" for r in self.reports if not r.ok] + self.problems

    def summary(self) -> str:
        owners = len(self.owner_ledgers)
        lines = [f"{self.run_dir}: {'INTACT' if self.ok else 'NOT INTACT'} (experiment {self.experiment_id}; "
                 f"{len(self.reports)} ledger files, {owners} owner ledgers, cross-checked with the history)"]
        lines += [f"problem: {p}" for p in self.all_problems()]
        lines += [f"note: {n}" for n in self.unaggregated]
        return "\n".join(lines)


@dataclass(frozen=True)
class RunFiles:
    run_dir: Path
    history: dict[str, Any]
    config: dict[str, Any]
    federation_ledger: Path
    registry: Path | None
    owner_keys_dir: Path | None
    coordinator_public_key: Path | None
    owners_dir: Path | None  # simulations: the owners' own ledgers; None in a deployment


def run_files(run_dir: str | Path) -> RunFiles:
    """What a run folder and its config point at (raises FileNotFoundError naming what is missing)."""
    run_dir = Path(run_dir)
    history_file, config_file = run_dir / HISTORY, run_dir / CONFIG
    for required in (history_file, config_file):
        if not required.is_file():
            raise FileNotFoundError(f"{required} is missing: is {run_dir} a privfl run folder?")
    history = load_history(history_file)
    config = json.loads(config_file.read_text(encoding="utf-8"))
    coordinator = Path(config["coordinator-dir"]) if config.get("coordinator-dir") else None
    federation = Path(config["federation-dir"]) if config.get("federation-dir") else None

    def existing(path: Path | None) -> Path | None:
        return path if path is not None and path.exists() else None

    return RunFiles(
        run_dir=run_dir, history=history, config=config, federation_ledger=run_dir / FEDERATION,
        registry=existing(coordinator / "registry.db" if coordinator else None),
        owner_keys_dir=existing(coordinator / "owner-keys" if coordinator else None),
        coordinator_public_key=existing(coordinator / "coordinator.pub" if coordinator else None),
        owners_dir=existing(federation / "owners" if federation and not config.get("deployment") else None),
    )


def audit_run(run_dir: str | Path, *, owner_ledgers: dict[str, Path] | None = None) -> RunAudit:
    """Verify and cross-check a run's ledgers and history (see the module docstring)."""
    files = run_files(run_dir)
    audit = RunAudit(run_dir=files.run_dir, experiment_id=str(files.history.get("experiment_id", "")))
    keys = _owner_keys(files.owner_keys_dir)
    coordinator = load_public_key(files.coordinator_public_key) if files.coordinator_public_key else None
    if coordinator is None:
        audit.problems.append("the coordinator's public key (coordinator.pub) is missing: its anchors cannot be "
                              "checked against a key from outside the files")
    registry_anchors: list[Anchor] = []
    if files.registry is not None:
        report = verify(files.registry, keys, coordinator_key=coordinator)
        audit.reports.append(report)
        if report.ok:
            registry_anchors = _anchors(files.registry)
    else:
        audit.problems.append("the coordinator's registry is missing: owner heads cannot be checked")
    if files.federation_ledger.exists():
        audit.reports.append(verify(files.federation_ledger, keys, coordinator_key=coordinator))
    elif files.config.get("dp", True) or files.config.get("owner-dp", False):
        audit.problems.append(f"{files.federation_ledger} is missing")

    federation_anchors = _anchors(files.federation_ledger) if files.federation_ledger.exists() else []
    federation_entries = _entries(files.federation_ledger) if files.federation_ledger.exists() else {}
    _cross_check_anchors(audit, federation_anchors, registry_anchors)

    ledgers = dict(owner_ledgers or {})
    if files.owners_dir is not None:
        for owner_id in _owners_of(files):
            path = files.owners_dir / owner_id / LEDGER_FILE
            if path.exists():
                ledgers.setdefault(owner_id, path)
    audit.owner_ledgers = ledgers
    owner_entries: dict[str, dict[int, Entry]] = {}
    for owner_id, path in sorted(ledgers.items()):
        anchored = [a for a in registry_anchors if a.owner_id == owner_id]
        report = verify(path, keys.get(owner_id), anchored=anchored)
        audit.reports.append(report)
        if report.ok:
            owner_entries[owner_id] = {e.sequence: e for e in read_ledger(path)[1]}
    if files.config.get("dp", True) or files.config.get("owner-dp", False):
        _cross_check_history(audit, files.history, federation_entries, owner_entries)
    _find_unaggregated(audit, owner_entries, federation_anchors)
    audit.epsilon = {owner: _spend(entries.values(), audit.experiment_id) for owner, entries in owner_entries.items()}
    return audit


def _spend(entries, experiment_id: str) -> dict[str, Any]:
    """Lifetime and this experiment's epsilon per privacy unit, with the accountant and delta the owner enforces.

    Keys ``lifetime``/``experiment``/``budget`` are the record level (DP-SGD); ``owner_lifetime``,
    ``owner_experiment`` and ``owner_budget`` the owner level, present when the owner has such charges.
    """
    from privfl.privacy.ledger import compute_epsilon
    from privfl.privacy.ledger.entry import OWNER, RECORD, unit_of
    from privfl.protocol import OwnerRound

    entries = list(entries)
    spend: dict[str, Any] = {"accountant": "", "delta": 0.0}
    for unit, prefix, key in ((RECORD, "", experiment_id), (OWNER, "owner_", OwnerRound.charge_key(experiment_id))):
        charges = [e for e in entries if e.is_charge and unit_of(e) == unit]
        if not charges:
            continue
        last = charges[-1]
        mine = [e.event for e in charges if e.run_id == key]
        spend[f"{prefix}lifetime"] = compute_epsilon(last.accountant, [e.event for e in charges], last.delta)
        spend[f"{prefix}experiment"] = compute_epsilon(last.accountant, mine, last.delta)
        spend[f"{prefix}budget"] = last.epsilon_budget
        if not spend["accountant"]:
            spend.update(accountant=last.accountant, delta=last.delta)
    return spend


def _owners_of(files: RunFiles) -> list[str]:
    """The run's owners: as the history knows them (its summary, or the receipts of the rounds it logged),
    else every owner of the simulation's owners folder (a run that crashed before its first round)."""
    owners = set(files.history.get("owners", {}))
    owners |= {r["owner_id"] for rnd in files.history.get("rounds", []) for r in rnd.get("receipts", [])}
    if not owners and files.owners_dir is not None:
        owners = {p.name for p in files.owners_dir.iterdir() if p.is_dir()}
    return sorted(owners)


def _owner_keys(folder: Path | None) -> dict[str, Ed25519PublicKey]:
    if folder is None:
        return {}
    return {p.name.removesuffix(".pub"): load_public_key(p) for p in sorted(folder.glob("*.pub"))}


def _anchors(path: Path) -> list[Anchor]:
    store = LedgerStore.open_readonly(path)
    try:
        return [decode_stored(row) for row in store.anchors()]
    finally:
        store.close()


def _entries(path: Path) -> dict[tuple[str, int], Entry]:
    return {(e.owner_id, e.sequence): e for e in read_ledger(path)[1]}


def _cross_check_anchors(audit: RunAudit, federation: list[Anchor], registry: list[Anchor]) -> None:
    if not registry and not federation:
        return
    in_registry = {(a.owner_id, a.owner_sequence): a for a in registry}
    for anchor in federation:
        twin = in_registry.get((anchor.owner_id, anchor.owner_sequence))
        if twin is None or not twin.same_release(anchor):
            audit.problems.append(f"the federation ledger anchors {anchor.describe()}, which the registry "
                                  f"{'lacks' if twin is None else 'records differently'} (the registry was pruned "
                                  "or rolled back)")
            return
    in_federation = {(a.owner_id, a.owner_sequence) for a in federation}
    for anchor in registry:
        if anchor.experiment_id == audit.experiment_id and (anchor.owner_id, anchor.owner_sequence) not in in_federation:
            audit.problems.append(f"the registry anchors {anchor.describe()}, which this experiment's federation "
                                  "ledger lacks (receipts were removed from it)")
            return


def _cross_check_history(audit: RunAudit, history: dict[str, Any], federation: dict[tuple[str, int], Entry],
                         owners: dict[str, dict[int, Entry]]) -> None:
    """Every signed receipt the server recorded is in the federation ledger and in the owner's ledger."""
    for record in history.get("rounds", []):
        for receipt in record.get("receipts", []):
            if not receipt.get("signed", True) or not receipt.get("sequence"):
                continue
            owner, sequence = receipt["owner_id"], receipt["sequence"]
            where = f"round {record['round']}: owner {owner}'s entry {sequence} ({receipt['status']})"
            if (owner, sequence) not in federation:
                audit.problems.append(f"{where} is in the run history but not in the federation ledger (a receipt "
                                      "was deleted from it)")
                return
            held = owners.get(owner)
            if held is not None and sequence not in held:
                audit.problems.append(f"{where} is in the run history but not in the owner's ledger (entries were "
                                      "deleted from it)")
                return


def _find_unaggregated(audit: RunAudit, owners: dict[str, dict[int, Entry]], federation: list[Anchor]) -> None:
    anchored = {(a.owner_id, a.owner_sequence) for a in federation}
    for owner_id, entries in sorted(owners.items()):
        for entry in entries.values():
            if entry.is_charge and entry.run_id == audit.experiment_id and (owner_id, entry.sequence) not in anchored:
                audit.unaggregated.append(
                    f"owner {owner_id} charged round {entry.round} (entry {entry.sequence}) and released its update, "
                    "but the coordinator never anchored it (a crash or a lost reply): never aggregated, it still "
                    "counts in the owner's epsilon")
