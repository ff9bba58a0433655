"""One audit, one verdict: a run's ledgers found from every source, verified and cross-checked.

One file can prove that nothing *inside* it was altered.  What an attacker or an
accident does *around* the files needs the other records: the owners' ledgers, the
experiment's federation ledger (the receipts the coordinator accepted, anchored in its
own signed chain), the coordinator's registry (every head it accepted, across
experiments, and each owner's registered key) and the run history (what the server
saw, round by round).  :func:`audit_run` is the one function that judges a run;
``privfl ledger verify RUN``, ``privfl report RUN``, the end of ``privfl simulate`` and
the report the run writes all call it, print its verdict and exit with
:attr:`RunAudit.exit_code`.  It:

1. finds the folders from what the user named (:func:`privfl.server.run_dir.locate`):
   the trust root (the coordinator's public key, the owners' registered keys, the
   registry) comes from the federation folder beside the run, the deployment's
   coordinator folder that holds the run, or a folder the user names; never from the
   run's config.json, which whoever writes the run folder can edit;
2. collects every owner that should have a ledger from every source that knows it
   (the history's signed receipts, the federation ledger, the registry's anchors and
   registered keys, the coordinator's owner-keys folder); in a simulation each must
   have ``owners/<owner>/ledger.db``, and that file must be that owner's;
3. verifies every file on its own against keys from outside it;
4. checks each owner ledger against the heads the registry anchored for it (catches
   truncation, an older copy, a lost or damaged ``-wal``, a re-signed history);
5. checks the federation ledger's anchors against the registry, both ways, and the
   history against the ledgers (every receipt the server recorded is in the
   federation ledger and in the owner's ledger);
6. lists the charges an owner made for this experiment that the coordinator never
   anchored: released but never aggregated (a crash, a lost reply).  They are not an
   integrity failure, but they count in the owner's epsilon and the report says so.

A ledger that a source knows about and that is missing, replaced, behind its anchor or
truncated makes the verdict NOT INTACT, naming the owner: never a note under INTACT.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from privfl.privacy.keys import KeyFileError, load_public_key
from privfl.privacy.ledger import Entry, VerificationReport, verify
from privfl.privacy.ledger.anchor import COORDINATOR, Anchor
from privfl.privacy.ledger.errors import NotALedgerError
from privfl.privacy.ledger.export import read_ledger
from privfl.privacy.ledger.registry import decode_stored
from privfl.privacy.ledger.store import OWNER_LEDGER, LedgerStore
from privfl.privacy.policy import LEDGER_FILE
from privfl.server.history import load_history
from privfl.server.run_dir import COORDINATOR as COORDINATOR_FOLDER
from privfl.server.run_dir import Layout, is_federation_folder, is_run_folder, locate

INTACT, NOT_INTACT = "INTACT", "NOT INTACT"
REGISTRY_NOT_INTACT = "the coordinator's registry"  # how a ledger's judgement starts when its trust root is bad
EXIT_NOT_INTACT = 1  # what every command that judges a run exits with when the verdict is NOT INTACT


@dataclass
class RunAudit:
    run_dir: Path
    experiment_id: str = ""
    reports: list[VerificationReport] = field(default_factory=list)  # every file, verified on its own
    problems: list[str] = field(default_factory=list)  # integrity failures across files (missing files included)
    unaggregated: list[str] = field(default_factory=list)  # charged and released, never anchored
    owner_ledgers: dict[str, Path] = field(default_factory=dict)  # the owner ledgers found, each the owner's own
    owners_not_intact: dict[str, str] = field(default_factory=dict)  # owner -> the first problem naming it
    trust_root: str = ""  # where the coordinator's key and the registry came from
    subject: str = ""  # what was judged, as the verdict line names it (default: the run and its experiment)
    layout: Layout | None = None
    owner_keys_dir: Path | None = None  # the owners' registered public keys (from the trust root)
    read: list[str] = field(default_factory=list)  # every file read, in order
    checked_against: str = ""  # what the verdict line says the files were checked against (default: registry, history)
    # owner -> {"lifetime": epsilon of all its record-level charges, "experiment": of this experiment's alone,
    #           "accountant", "delta", "budget"}: a restarted or repeated experiment composes the earlier spend
    epsilon: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems and all(r.ok for r in self.reports)

    @property
    def verdict(self) -> str:
        return INTACT if self.ok else NOT_INTACT

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else EXIT_NOT_INTACT

    def all_problems(self) -> list[str]:
        return [f"{r.path}: {r.problem}" for r in self.reports if not r.ok] + self.problems

    def verdict_line(self) -> str:
        """The one line every command prints: the verdict, and the owners it names."""
        subject = self.subject or f"run {self.run_dir} (experiment {self.experiment_id})"
        if self.ok:
            checked = self.checked_against or (
                "cross-checked with the registry" + ("" if self.subject else " and the history"))
            return (f"{INTACT}: {subject}: {len(self.reports)} ledger files, {len(self.owner_ledgers)} owner ledgers, "
                    + checked)
        named = sorted(self.owners_not_intact)
        return (f"{NOT_INTACT}: {subject}: "
                f"{len(self.all_problems())} problem(s)" + (f"; owners not intact: {', '.join(named)}" if named else ""))

    def summary(self) -> str:
        lines = [self.verdict_line(), f"trust root: {self.trust_root}"]
        lines += [f"problem: {p}" for p in self.all_problems()]
        lines += [f"note: {n}" for n in self.unaggregated]
        return "\n".join(lines)

    def fail(self, text: str, owner_id: str = "") -> None:
        self.problems.append(text)
        self.name(owner_id, text)

    def name(self, owner_id: str, text: str) -> None:
        if owner_id and owner_id != COORDINATOR:
            self.owners_not_intact.setdefault(owner_id, text)

    def add_report(self, report: VerificationReport, owner_id: str = "") -> None:
        self.reports.append(report)
        self.read.append(report.path)
        if not report.ok and report.problem is not None:
            self.name(report.problem.owner_id or owner_id, f"{report.path}: {report.problem}")


def audit_run(run_dir: str | Path, *, owner_ledgers: dict[str, Path] | None = None,
              federation_dir: str | Path | None = None, coordinator_dir: str | Path | None = None) -> RunAudit:
    """Judge a run folder: every ledger any source knows about, verified and cross-checked (module docstring).

    ``federation_dir`` / ``coordinator_dir``: the trust root as the user names it (default:
    found beside the run, :func:`~privfl.server.run_dir.locate`).  ``owner_ledgers``: owner
    ledgers held elsewhere (a deployment's institutions).  Raises FileNotFoundError when
    ``run_dir`` is not a run folder (no history.json).
    """
    where = locate(run_dir, federation_dir=federation_dir, coordinator_dir=coordinator_dir)
    if not where.history.is_file():
        raise FileNotFoundError(f"{where.history} is missing: is {where.run_dir} a privfl run folder?")
    history = load_history(where.history)
    audit = RunAudit(run_dir=where.run_dir, experiment_id=str(history.get("experiment_id", "")), layout=where)
    audit.read.append(str(where.history))
    named = "named by the user" if (federation_dir or coordinator_dir) else "found beside the run"
    audit.trust_root = f"{where.coordinator_dir} ({named}; never from the run's config.json)"
    coordinator, keys, registry_anchors, registered = _trust_root(audit, where)
    federation_entries: dict[tuple[str, int], Entry] = {}
    federation_anchors: list[Anchor] = []
    if where.federation_ledger.exists():
        report = verify(where.federation_ledger, keys, coordinator_key=coordinator)
        audit.add_report(report)
        try:  # a damaged file: its verification already says why
            federation_anchors = _anchors(where.federation_ledger)
            federation_entries = _entries(where.federation_ledger)
        except Exception:  # noqa: BLE001
            federation_anchors, federation_entries = [], {}
    elif _expects_federation_ledger(history, registry_anchors, audit.experiment_id):
        audit.fail(f"the federation ledger {where.federation_ledger} is missing")
    _check_experiment_id(audit, federation_anchors)
    _cross_check_anchors(audit, federation_anchors, registry_anchors)

    known = _known_owners(history, federation_entries, registry_anchors, registered | set(keys))
    ledgers = _find_owner_ledgers(audit, where, known, dict(owner_ledgers or {}))
    audit.owner_ledgers = ledgers
    owner_entries: dict[str, dict[int, Entry]] = {}
    for owner_id, path in sorted(ledgers.items()):
        anchored = [a for a in registry_anchors if a.owner_id == owner_id]
        if owner_id not in keys and (anchored or owner_id in registered):
            audit.fail(f"owner {owner_id} is registered with the coordinator but its public key is missing from "
                       f"{audit.owner_keys_dir}", owner_id)
        report = verify(path, keys.get(owner_id), anchored=anchored)
        audit.add_report(report, owner_id)
        if report.ok:
            owner_entries[owner_id] = {e.sequence: e for e in read_ledger(path)[1]}
    _cross_check_history(audit, history, federation_entries, owner_entries)
    _find_unaggregated(audit, owner_entries, federation_anchors)
    audit.epsilon = {owner: _spend(entries.values(), audit.experiment_id) for owner, entries in owner_entries.items()}
    return audit


def audit_federation(federation_dir: str | Path, *, coordinator_dir: str | Path | None = None,
                     verify_ledgers: bool = True) -> RunAudit:
    """Judge a simulation's federation folder (``owners/`` and ``coordinator/``) without a run: every owner ledger
    the registry or the coordinator's keys know about must be there, be the owner's, and hold every head the
    registry anchored for it.  ``verify_ledgers=False``: only the trust root and that each known owner's ledger is
    there and is the owner's (what a simulation checks before it enrols owners; never a verdict to print as
    INTACT)."""
    federation = Path(federation_dir)
    where = Layout(federation, federation, Path(coordinator_dir) if coordinator_dir else federation / COORDINATOR_FOLDER)
    audit = RunAudit(run_dir=federation, layout=where, subject=f"federation folder {federation}",
                     trust_root=f"{where.coordinator_dir} (named by the user)")
    _, keys, anchors, registered = _trust_root(audit, where)
    known = {a.owner_id for a in anchors} | registered | set(keys)
    audit.owner_ledgers = _find_owner_ledgers(audit, where, known, {})
    for owner_id, path in sorted(audit.owner_ledgers.items() if verify_ledgers else ()):
        audit.add_report(verify(path, keys.get(owner_id), anchored=[a for a in anchors if a.owner_id == owner_id]),
                         owner_id)
    return audit


def audit_ledger(path: str | Path, public_key=None, *, registry: str | Path | None = None,
                 coordinator_key: Ed25519PublicKey | None = None, epsilon_check: str = "all",
                 anchors: Sequence[Any] = (), anchors_source: str = "the anchors",
                 expected_heads: Sequence[tuple[str, int, bytes]] = ()) -> VerificationReport:
    """One ledger file judged against the trust root: its own verification, and, given the coordinator's registry
    (itself verified under ``coordinator_key``), every head the registry anchored for the file's owners.

    What the ledger service answers from: a truncated or rolled-back ledger is refused, not served.
    ``anchors``: signed entries (a federation ledger's) the file must hold verbatim; ``expected_heads``:
    (owner, sequence, sha256) heads an auditor noted, which the file must still hold.
    """
    anchored: list[Any] = []
    if registry is not None:
        checked = verify(registry, coordinator_key=coordinator_key)
        if not checked.ok:
            report = VerificationReport(path=str(path), epsilon_check=epsilon_check)
            return report.fail(f"{REGISTRY_NOT_INTACT} {registry} is not intact: {checked.problem}")
        anchored = list(_anchors(Path(registry)))
    anchored += list(expected_heads)
    source = "the coordinator's registry" if registry is not None else "the expected head"
    return verify(path, public_key, epsilon_check=epsilon_check, anchors=anchors, anchors_source=anchors_source,
                  anchored=anchored, anchored_source=source, coordinator_key=coordinator_key)


def audit_file(path: str | Path, public_key=None, *, registry: str | Path | None = None,
               coordinator_key: Ed25519PublicKey | None = None, epsilon_check: str = "all",
               anchors: Sequence[Any] = (), anchors_source: str = "the anchors",
               expected_heads: Sequence[tuple[str, int, bytes]] = ()) -> RunAudit:
    """One ledger file as the one audit judges it (:func:`audit_ledger`), with the verdict line and exit code
    every command prints: what ``privfl ledger verify FILE`` says."""
    path = Path(path)
    report = audit_ledger(path, public_key, registry=registry, coordinator_key=coordinator_key,
                          epsilon_check=epsilon_check, anchors=anchors, anchors_source=anchors_source,
                          expected_heads=expected_heads)
    trusted = [f"the registry {registry}"] if registry is not None else []
    trusted += ["the expected head(s)"] if expected_heads else []
    trusted += [anchors_source] if anchors else []
    audit = RunAudit(run_dir=path, subject=f"ledger {path}",
                     trust_root=", ".join(trusted) if trusted else "none named (the file judged on its own)",
                     checked_against=("checked against " + ", ".join(trusted)) if trusted else
                     "checked on its own (no --registry: a truncated or rolled-back ledger would pass"
                     + ("; no --public-key: a ledger wholly re-signed under another key would pass too)"
                        if public_key is None else ")"))
    owner = _ledger_owner(path) if path.is_file() else ""
    registry_failed = report.problem is not None and report.problem.reason.startswith(REGISTRY_NOT_INTACT)
    audit.add_report(report, "" if registry_failed else owner)  # a bad registry says nothing of the owner's file
    if report.ok and owner:
        audit.owner_ledgers[owner] = path
    return audit


def audit_path(path: str | Path, *, federation_dir: str | Path | None = None,
               coordinator_dir: str | Path | None = None) -> RunAudit:
    """The one audit of whatever folder the user named: a run folder (history.json) or a federation folder."""
    path = Path(path)
    if is_run_folder(path):
        return audit_run(path, federation_dir=federation_dir, coordinator_dir=coordinator_dir)
    if is_federation_folder(path):
        return audit_federation(federation_dir or path, coordinator_dir=coordinator_dir)
    raise FileNotFoundError(f"{path} is neither a privfl run folder (history.json) nor a federation folder "
                            "(coordinator/, owners/)")


def _trust_root(audit: RunAudit, where: Layout) -> tuple[Ed25519PublicKey | None, dict[str, Ed25519PublicKey],
                                                        list[Anchor], set[str]]:
    """The coordinator's key, the owners' registered keys, and the registry's anchors and owners (verified)."""
    coordinator = _coordinator_key(audit, where)
    keys = _owner_keys(audit, where)
    anchors: list[Anchor] = []
    registered: set[str] = set()
    if where.registry.is_file():
        report = verify(where.registry, keys, coordinator_key=coordinator)
        audit.add_report(report)
        if report.ok:
            anchors, registered = _anchors(where.registry), _registered_owners(where.registry)
    else:
        audit.fail(f"the coordinator's registry {where.registry} is missing: owner heads cannot be checked")
    return coordinator, keys, anchors, registered


def _coordinator_key(audit: RunAudit, where: Layout) -> Ed25519PublicKey | None:
    path = where.coordinator_public_key
    try:
        key = load_public_key(path) if path.is_file() else None
    except KeyFileError as err:
        audit.fail(f"the coordinator's public key {path} cannot be read: {err}")
        return None
    if key is None:
        audit.fail(f"the coordinator's public key {path} is missing: its anchors cannot be checked against a key "
                   "from outside the files (name the coordinator's folder, or the federation folder, that holds it)")
    else:
        audit.read.append(str(path))
    return key


def _owner_keys(audit: RunAudit, where: Layout) -> dict[str, Ed25519PublicKey]:
    folder = where.owner_keys_dir
    if not folder.is_dir():
        return {}
    audit.owner_keys_dir = folder
    keys = {}
    for path in sorted(folder.glob("*.pub")):
        try:
            keys[path.name.removesuffix(".pub")] = load_public_key(path)
        except KeyFileError as err:
            audit.fail(f"the registered public key {path} cannot be read: {err}", path.name.removesuffix(".pub"))
    return keys


def _registered_owners(registry: Path) -> set[str]:
    store = LedgerStore.open_readonly(registry)
    try:
        return {owner for _, owner, _ in store.keys() if owner != COORDINATOR}
    finally:
        store.close()


def _expects_federation_ledger(history: dict[str, Any], registry: list[Anchor], experiment_id: str) -> bool:
    """Whether this run must have a federation ledger: it recorded signed receipts, or the registry anchored some,
    or its history says it ran with DP (read from the history, never as a reason to skip a check)."""
    config = history.get("config") or {}
    receipts = any(r.get("signed", True) and r.get("sequence") for rnd in history.get("rounds", [])
                   for r in rnd.get("receipts", []))
    return receipts or any(a.experiment_id == experiment_id for a in registry) or bool(
        config.get("dp", True) or config.get("owner-dp", False))


def _check_experiment_id(audit: RunAudit, federation: list[Anchor]) -> None:
    """The history names the experiment the federation ledger's signed anchors are about (an edited history that
    names another would escape the registry cross-check)."""
    experiments = {a.experiment_id for a in federation}
    if experiments and audit.experiment_id not in experiments:
        audit.fail(f"the history names experiment {audit.experiment_id!r}, but the federation ledger's signed anchors "
                   f"are for {', '.join(sorted(experiments))} (the history was edited or belongs to another run)")


def _known_owners(history: dict[str, Any], federation: dict[tuple[str, int], Entry], registry: list[Anchor],
                  registered: set[str]) -> set[str]:
    """Every owner some source says has a ledger: signed receipts in the history, receipts in the federation
    ledger, heads the registry anchored, keys the coordinator registered (on an owner's first receipt)."""
    owners = {r["owner_id"] for rnd in history.get("rounds", []) for r in rnd.get("receipts", [])
              if r.get("signed", True) and r.get("sequence")}
    owners |= {owner for owner, _ in federation}
    owners |= {a.owner_id for a in registry}
    return owners | registered


def _find_owner_ledgers(audit: RunAudit, where: Layout, known: set[str], given: dict[str, Path]) -> dict[str, Path]:
    """Each owner's own ledger: given, or in a simulation's owners folder, where every known owner must have one."""
    found: dict[str, Path] = {}
    simulated = where.owners_dir.is_dir() or (where.federation_dir / COORDINATOR_FOLDER).resolve() == \
        where.coordinator_dir.resolve()
    owners = set(known) | set(given)
    if simulated and where.owners_dir.is_dir():
        owners |= {p.parent.name for p in where.owners_dir.glob(f"*/{LEDGER_FILE}")}
    for owner_id in sorted(owners):
        path = given.get(owner_id) or (where.owner_dir(owner_id) / LEDGER_FILE if simulated else None)
        if path is None:
            continue  # a deployment: the institution keeps it (pass owner_ledgers to include it)
        if not path.is_file():
            audit.fail(f"owner {owner_id}'s ledger {path} is missing, but "
                       f"{'the run history, the federation ledger or the registry' if owner_id in known else 'it was given'}"
                       " knows the owner (deleted, moved, or never handed over)", owner_id)
            continue
        holder = _ledger_owner(path)
        if holder and holder != owner_id:
            audit.fail(f"{path} should be owner {owner_id}'s ledger, but it is "
                       f"owner {holder!r}'s "
                       "(replaced by another owner's copy, or not a privfl ledger)", owner_id)
            continue
        found[owner_id] = path
    return found



def _ledger_owner(path: Path) -> str:
    try:
        store = LedgerStore.open_readonly(path)
    except NotALedgerError:
        return ""
    try:
        meta = store.meta()
        return meta.get("owner_id", "") if meta.get("ledger_kind") == OWNER_LEDGER else ""
    except Exception:  # noqa: BLE001  a damaged file: the verification says more
        return ""
    finally:
        store.close()


def _spend(entries, experiment_id: str) -> dict[str, Any]:
    """Lifetime and this experiment's epsilon per privacy unit, with the accountant and delta the owner enforces
    (:func:`privfl.privacy.budget.unit_spend`, the one definition of spent).

    Keys ``lifetime``/``experiment``/``budget`` are the record level (DP-SGD); ``owner_lifetime``,
    ``owner_experiment`` and ``owner_budget`` the owner level, present when the owner has such charges.
    """
    from privfl.privacy.budget import unit_spend
    from privfl.privacy.ledger.entry import OWNER, RECORD
    from privfl.protocol import OwnerRound

    entries = list(entries)
    spend: dict[str, Any] = {"accountant": "", "delta": 0.0}
    for unit, prefix, key in ((RECORD, "", experiment_id), (OWNER, "owner_", OwnerRound.charge_key(experiment_id))):
        lifetime = unit_spend(entries, unit)
        if lifetime is None or not lifetime.charges:
            continue
        spend[f"{prefix}lifetime"] = lifetime.epsilon
        spend[f"{prefix}experiment"] = unit_spend(entries, unit, run_id=key).epsilon
        spend[f"{prefix}budget"] = lifetime.budget
        if not spend["accountant"]:
            spend.update(accountant=lifetime.accountant, delta=lifetime.delta)
    return spend


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
            audit.fail(f"the federation ledger anchors {anchor.describe()}, which the registry "
                       f"{'lacks' if twin is None else 'records differently'} (the registry was pruned or rolled back)",
                       anchor.owner_id)
            return
    in_federation = {(a.owner_id, a.owner_sequence) for a in federation}
    for anchor in registry:
        if anchor.experiment_id == audit.experiment_id and (anchor.owner_id, anchor.owner_sequence) not in in_federation:
            audit.fail(f"the registry anchors {anchor.describe()}, which this experiment's federation ledger lacks "
                       "(receipts were removed from it)", anchor.owner_id)
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
                audit.fail(f"{where} is in the run history but not in the federation ledger (a receipt was deleted "
                           "from it)", owner)
                return
            held = owners.get(owner)
            if held is not None and sequence not in held:
                audit.fail(f"{where} is in the run history but not in the owner's ledger (entries were deleted "
                           "from it)", owner)
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
