"""Build a privacy budget report from ledgers: read, verify, account, assemble one typed model.

``build_report`` is the one entry point; the work is split by concern:

- :mod:`.ledgers` reads the files and verifies each (signatures, hash chain, schema,
  against independently supplied keys and the federation's copies);
- :mod:`.accounting` recomputes, per owner, every epsilon from the stored DP events
  with the accountant each entry names, checks every stated epsilon against it, and
  derives what is next (rounds left) and this experiment's share;
- :mod:`.history` adds the run history (accuracy, experiment id, federated evaluation);
- :mod:`.status` decides problems, notes, the headline and the summary in words;
- :mod:`.gdpr`, :mod:`.registry`, :mod:`.words` add the GDPR mapping, the epsilon
  registry and the plain-words explanations.

The result is a :class:`~privfl.privacy.report.model.Report`; every format renders it
(``report.document`` is its JSON form).  ``build_report(..., owner=X)`` (or
``report.for_owner(X)``) narrows it to one owner's statement: that owner's figures,
files and problems only.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from privfl.privacy.ledger import Entry
from privfl.privacy.ledger.epsilon import EPSILON_ABS_TOL, EPSILON_REL_TOL
from privfl.privacy.ledger.store import FEDERATION_LEDGER, OWNER_LEDGER
from privfl.privacy.report import evidence as ev
from privfl.privacy.report.accounting import (
    EpsilonCache,
    OwnerAccounting,
    OwnerInput,
    account_owners,
    compose_deferred,
    deferred_jobs,
    event_params,
    settings_key,
    settle_deferred,
)
from privfl.privacy.report.channels import release_channels
from privfl.privacy.report.decision import decide
from privfl.privacy.report.dpia import dpia_section
from privfl.privacy.report.empirical import read_empirical_audit
from privfl.privacy.report.gdpr import article_25, article_30, article_32, limitations
from privfl.privacy.report.history import experiment_id, history_section, load_history, owner_evaluations
from privfl.privacy.report.ledgers import (
    KeysArg,
    LedgerFile,
    load_keys,
    read_ledger,
    resolve_ledger_paths,
    start_verification,
)
from privfl.privacy.report.model import (
    COMPARED_ACCOUNTANTS,
    REPORT_TYPE,
    EmpiricalAudit,
    SCHEMA_VERSION,
    LedgerIntegrity,
    OwnerIntegrity,
    OwnerStatement,
    Report,
    Scope,
    most_used,
    worst_status,
)
from privfl.privacy.report.parallel import HelperPool, fork_available, run_forked, start_staged
from privfl.privacy.report.processing_record import (
    ProcessingRecord,
    ProcessingRecordError,
    load_processing_record,
    records_for,
)
from privfl.privacy.report.registry import epsilon_registry
from privfl.privacy.report.status import in_words, status, summary
from privfl.privacy.report.words import plain_words

event_fields = event_params  # the name earlier versions exported


@dataclass
class _Context:
    """Everything assembling (and narrowing to one owner) needs besides the owners."""

    files: list[LedgerFile]
    supplied: Mapping[str, Ed25519PublicKey]
    records: list[ProcessingRecord]
    history: dict[str, Any] | None
    history_source: str
    federation_only: list[str]
    cross_checks: list[str]
    cross_check_owners: dict[str, str]
    key_modes: dict[str, Any] | None
    title: str | None
    generated_at: str
    all_owners: list[OwnerStatement] = field(default_factory=list)
    empirical_audit: EmpiricalAudit | None = None


# --------------------------------------------------------------------------- the entry point


def build_report(
    ledger_paths: str | Path | Iterable[str | Path],
    history: str | Path | Mapping[str, Any] | None = None,
    processing_record: str | Path | ProcessingRecord | Iterable[str | Path | ProcessingRecord] | None = None,
    keys: KeysArg = None,
    *,
    title: str | None = None,
    key_files_dir: str | Path | None = None,
    cross_checks: Sequence[str] | None = None,
    cross_check_owners: Mapping[str, str] | None = None,
    owner: str | None = None,
    workers: int = 1,
    warm_up: Callable[[], object] | None = None,
    empirical_audit: str | Path | Mapping[str, Any] | None = None,
) -> Report:
    """Build the report for one or more ledger files (owner and/or federation ledgers).

    ``history``: a run's ``history.json`` (path or parsed) for accuracy per round, the
    experiment id (``config["experiment-id"]``) and federated evaluation.
    ``processing_record``: TOML file(s) the owner fills in (see ``docs/report-schema.md``).
    ``keys``: public keys supplied independently of the ledgers (see :func:`load_keys`);
    without them each ledger is verified against the key it records, which the report flags.
    ``key_files_dir``: a folder holding owners' private ``<owner>.key`` files whose file
    modes the report checks (Art. 32); nothing is read from them.
    ``cross_checks``: problems an external cross-check found (the run's audit: owner
    ledgers against the registry, the federation ledger and the history; a ledger that
    should exist and does not); any makes the report NOT INTACT.
    ``cross_check_owners``: owner -> the first such problem naming it (those owners are
    NOT INTACT whatever their own file says).
    ``owner``: narrow the report to this owner's statement.
    ``workers``: processes to use (1: this one only; more: the accounting in forked
    helpers while this process verifies the files, see :mod:`.parallel`).
    ``warm_up``: called while the helpers account (e.g. to import the renderers).
    ``empirical_audit``: ``privfl audit``'s result (``<run-dir>/audit/result.json``, path or parsed): its
    lower bounds are shown beside the claims, and Art. 32's regular testing rests on it.
    """
    if isinstance(ledger_paths, (str, Path)):
        ledger_paths = [ledger_paths]
    # With helpers, the accounting helper is forked first: its imports (dp-accounting, then Opacus and torch: the
    # longest step of a report) need none of the input, so they overlap reading the ledgers (see .parallel).
    staged = start_staged(_prepare_accounting, _account_in_helpers) if workers > 1 and fork_available() else None
    try:
        paths = resolve_ledger_paths(ledger_paths)
        if not paths:
            raise ValueError("no ledger given")
        history_data, history_source = load_history(history)
        records = _load_records(processing_record)
        files = [read_ledger(p) for p in paths]
        owner_files = [f for f in files if f.kind == OWNER_LEDGER]
        supplied = load_keys(keys, [f.owner_id for f in owner_files])
        exp_id = experiment_id(history_data)

        inputs, sources, federation_only = _owner_inputs(files, records, exp_id)
        if owner is not None and owner not in sources:
            raise ValueError(f"owner {owner!r} is not in the ledgers given (owners: "
                             f"{', '.join(sorted(sources)[:20]) or 'none'})")
        if staged is not None and len(inputs) < 2:
            staged.cancel()
            staged = None
    except BaseException:
        if staged is not None:
            staged.cancel()
        raise
    if staged is not None:
        # The accounting in forked helpers, while this process verifies the files and prepares the renderers.
        accounting = staged.send(inputs, workers, DEFERRED)
        with HelperPool(workers - 2) as verifiers:
            start_verification(files, supplied, verifiers if verifiers.workers else None).finish()
        if warm_up is not None:
            warm_up()
        accounts = accounting.result()
    else:
        pending = start_verification(files, supplied)
        accounts = account_owners(inputs, EpsilonCache())
        pending.finish()

    owners: list[OwnerStatement] = []
    for account in accounts:
        source = sources[account.statement.owner_id]
        source.epsilon_problems.extend(account.epsilon_problems)
        source.epsilons_checked += account.epsilons_checked
    for account in accounts:
        statement = account.statement
        source = sources[statement.owner_id]
        statement.integrity = _integrity(statement, source, supplied, account.epsilon_problems)
        named = (cross_check_owners or {}).get(statement.owner_id)
        if named is not None and statement.integrity.intact:
            statement.integrity = replace(statement.integrity, intact=False, verdict="NOT INTACT", problem=named,
                                          evidence=ev.LEDGER_UNVERIFIED)
        owners.append(statement)
    owners.sort(key=lambda o: o.owner_id)

    context = _Context(
        files=files, supplied=supplied, records=records, history=history_data, history_source=history_source,
        federation_only=federation_only, cross_checks=list(cross_checks or ()),
        cross_check_owners=dict(cross_check_owners or {}),
        key_modes=_key_file_modes(key_files_dir) if key_files_dir else None, title=title,
        generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        all_owners=owners, empirical_audit=read_empirical_audit(empirical_audit))
    report = _assemble(context, owners, files, scope_owner=None)
    return narrow_to_owner(report, owner) if owner is not None else report


def _owner_inputs(files: list[LedgerFile], records: list[ProcessingRecord], exp_id: str | None
                  ) -> tuple[list[OwnerInput], dict[str, LedgerFile], list[str]]:
    """Which file speaks for each owner (its own ledger; else the federation copy holding most of it)."""
    inputs: list[OwnerInput] = []
    sources: dict[str, LedgerFile] = {}

    def add(owner_id: str, entries: list[Entry], source: LedgerFile) -> None:
        record = records_for(records, owner_id)
        sources[owner_id] = source
        inputs.append(OwnerInput(owner_id, tuple(entries), str(source.path), source.kind, exp_id,
                                 record.declared_purposes() if record else None,
                                 record.source if record else None))

    for ledger in sorted((f for f in files if f.kind == OWNER_LEDGER), key=lambda f: f.owner_id):
        if ledger.owner_id in sources:
            continue  # the same owner's ledger given twice (e.g. a copy): the first one counts
        add(ledger.owner_id, [e for e in ledger.entries if e.owner_id == ledger.owner_id], ledger)
    held = {f.path: f.entries_by_owner() for f in files if f.kind == FEDERATION_LEDGER}
    federations = [f for f in files if f.kind == FEDERATION_LEDGER]
    federation_only: list[str] = []
    for owner_id in sorted({o for by_owner in held.values() for o in by_owner} - set(sources)):
        federation = max(federations, key=lambda f: len(held[f.path].get(owner_id, ())))
        federation_only.append(owner_id)
        add(owner_id, held[federation.path][owner_id], federation)
    return inputs, sources, federation_only


# Side-by-side figures composed apart from the owners' accounting: PLD needs dp-accounting but no Opacus, so its
# figures are composed in a helper forked before Opacus (torch) is imported, while the accounting helper imports it.
DEFERRED = ("pld",)


def _account_in_helpers(inputs: list[OwnerInput], parts: int, deferred: tuple[str, ...] = ()
                        ) -> list[OwnerAccounting]:
    """Every owner's accounting, split into ``parts`` processes by DP settings (each curve computed once).

    The side-by-side figures of the ``deferred`` accountants (one per owner and privacy unit,
    :func:`~.accounting.deferred_jobs`) are composed in one more helper, forked once
    dp-accounting is imported and before Opacus is: its work overlaps the import of torch,
    the longest single step of a report, and nothing is imported twice.
    """
    composing = None
    if deferred:
        jobs = [job for name in deferred for job in deferred_jobs(inputs, name)]
        _import_deferred(deferred)
        composing = run_forked(compose_deferred, jobs)
    _import_accountants(inputs)  # before forking: the helpers inherit the imported accountants
    groups: dict[tuple, list[int]] = {}
    for index, given in enumerate(inputs):
        groups.setdefault(settings_key(given), []).append(index)
    bins: list[list[int]] = [[] for _ in range(max(1, parts))]
    loads = [0.0] * len(bins)
    for key in sorted(groups, key=lambda k: -_cost(k, groups[k], inputs)):
        lightest = loads.index(min(loads))
        bins[lightest].extend(groups[key])
        loads[lightest] += _cost(key, groups[key], inputs)
    others = [(part, run_forked(account_owners, [inputs[i] for i in part], EpsilonCache(deferred)))
              for part in bins[1:] if part]
    results: dict[int, OwnerAccounting] = dict(zip(bins[0], account_owners([inputs[i] for i in bins[0]],
                                                                           EpsilonCache(deferred))))
    for part, job in others:
        results.update(zip(part, job.result()))
    accounts = [results[i] for i in range(len(inputs))]
    if composing is not None:
        settle_deferred(accounts, composing.result())
    return accounts


def _cost(key: tuple, members: list[int], inputs: list[OwnerInput]) -> float:
    """Rough cost of accounting a group: a new DP setting costs about as much as 500 entries."""
    return 500.0 * len(key) + sum(len(inputs[i].entries) for i in members)


def _prepare_accounting() -> None:
    """What the accounting helper imports before it has the input: dp-accounting (the deferred PLD figures)."""
    _import_deferred(DEFERRED)


def _import_deferred(names: tuple[str, ...]) -> None:
    """Import what composing the deferred accountants' figures needs (PLD: dp-accounting), before forking."""
    from privfl.privacy.accountants import get_accountant

    for name in names:
        try:
            get_accountant(name)
        except ValueError:
            continue
        if name == "pld":
            try:
                from dp_accounting import privacy_accountant  # noqa: F401
                from dp_accounting.pld import privacy_loss_distribution  # noqa: F401
            except ImportError:
                pass


def _import_accountants(inputs: list[OwnerInput]) -> None:
    from privfl.privacy.accountants import get_accountant

    for name in sorted({e.accountant for given in inputs for e in given.entries}
                       | (set(COMPARED_ACCOUNTANTS) - set(DEFERRED))):
        try:
            get_accountant(name)
        except ValueError:
            pass


def _integrity(owner: OwnerStatement, source: LedgerFile, supplied: Mapping[str, Any],
               own_problems: list[str]) -> OwnerIntegrity:
    """An owner's integrity is its ledger file's: any bad entry in the file makes every owner in it suspect."""
    verification = source.verification
    owner_id = owner.owner_id
    head = verification.heads.get(owner_id) if verification else None
    if head is None and owner.entries:
        head = (owner.entries[-1].sequence, owner.entries[-1].entry_hash)
    problem = own_problems[0] if own_problems else None
    found = verification.problem if verification else None
    if found is not None and found.owner_id in ("", owner_id):
        problem = str(found)
    intact = source.intact
    if problem is None and not intact:
        problem = source.problem
    key = (verification.key_fingerprints.get(owner_id) if verification else None) or \
        (owner.entries[-1].key_fingerprint if owner.entries else "")
    return OwnerIntegrity(
        intact=intact, verdict="INTACT" if intact else "NOT INTACT", problem=problem, key_fingerprint=key,
        key_independently_supplied=owner_id in supplied,
        head={"sequence": head[0], "hash": head[1]} if head else None,
        checked_against=list(source.anchored_by) if source.kind == OWNER_LEDGER else [],
        evidence=ev.LEDGER_VERIFIED if intact else ev.LEDGER_UNVERIFIED)


# --------------------------------------------------------------------------- assembling


def _ledger_integrity(ledger: LedgerFile, supplied: Mapping[str, Any], only: str | None) -> LedgerIntegrity:
    v = ledger.verification
    owners = sorted({e.owner_id for e in ledger.entries} | ({ledger.owner_id} if ledger.owner_id else set()))
    notes = list(v.notes) if v else []
    if ledger.kind == FEDERATION_LEDGER and ledger.epsilons_checked < len(ledger.entries) and ledger.intact:
        notes.append("stated epsilons of owners whose own ledger was given were checked there (the copies here "
                     "were compared with it byte for byte)")
    problem = ledger.problem
    epsilon_problems = list(ledger.epsilon_problems)
    fingerprints = dict(sorted(v.key_fingerprints.items())) if v else {}
    heads = {o: {"sequence": s, "hash": h} for o, (s, h) in sorted(v.heads.items())} if v else {}
    if only is not None:  # one owner's statement: nothing about the other owners in a shared file
        owners = [o for o in owners if o == only]
        fingerprints = {o: f for o, f in fingerprints.items() if o == only}
        heads = {o: h for o, h in heads.items() if o == only}
        notes = [n for n in notes if not n.startswith("owner ") or n.startswith(f"owner {only}")]
        epsilon_problems = [p for p in epsilon_problems if p.startswith(f"owner {only},")]
        found = v.problem if v else None
        if found is not None and found.owner_id not in ("", only):
            problem = "a problem in another owner's entries in this file (withheld from this owner's statement)"
        elif found is None and ledger.epsilon_problems and not epsilon_problems:
            problem = "another owner's entries in this file state epsilons that do not match (withheld)"
    return LedgerIntegrity(
        path=str(ledger.path), ledger_kind=ledger.kind or "unreadable", owner_id=ledger.owner_id or None,
        owners=owners, entries=len(ledger.entries) if only is None else
        sum(1 for e in ledger.entries if e.owner_id == only),
        intact=ledger.intact, verdict="INTACT" if ledger.intact else "NOT INTACT", problem=problem,
        unreadable_entries=list(ledger.unreadable), entries_checked=v.entries_checked if v else 0,
        epsilons_checked=ledger.epsilons_checked, epsilon_problems=epsilon_problems,
        keys_independently_supplied=bool(v and v.keys_independently_supplied),
        owners_with_supplied_keys=sorted(o for o in owners if o in supplied),
        key_fingerprints=fingerprints, heads=heads, notes=notes)


def _assemble(context: _Context, owners: list[OwnerStatement], files: list[LedgerFile],
              scope_owner: str | None) -> Report:
    history = history_section(context.history, context.history_source, owners) if context.history else None
    evaluations = owner_evaluations(context.history) if context.history else {}
    for owner in owners:
        owner.federated_evaluation = evaluations.get(owner.owner_id)
        top = most_used(owner)  # over every privacy unit, from what each statement says
        owner.budget_used_fraction_max = top.budget_used_fraction if top else None
        owner.budget_used_fraction_max_unit = top.privacy_unit if top else None
        owner.budget_status_all_units = worst_status(owner)
    ledgers = [_ledger_integrity(f, context.supplied, scope_owner) for f in files]
    federation_only = [o for o in context.federation_only if any(x.owner_id == o for x in owners)]
    cross_checks = context.cross_checks
    if scope_owner is not None:
        others = {o.owner_id for o in context.all_owners} - {scope_owner}
        cross_checks = [c for c in cross_checks if scope_owner in c or not any(o in c for o in others)]
    named = sorted(o for o in context.cross_check_owners if scope_owner in (None, o))
    st = status(ledgers, owners, federation_only, history, context.records, cross_checks, named)
    records = context.records if scope_owner is None else [
        r for r in context.records if r is records_for(context.records, scope_owner)]
    for owner in owners:
        record = records_for(context.records, owner.owner_id)
        owner.processing_record = record.source if record else None
        owner.epsilon_registry = epsilon_registry(owner, record, history)
    s = summary(owners, files, history, experiment_id(context.history))
    s.in_words = in_words(s, owners, st)
    supplied = context.supplied if scope_owner is None else {
        o: k for o, k in context.supplied.items() if o == scope_owner}
    decision = decide(owners, st, records, ledgers)
    channels = release_channels(owners, history)
    return Report(
        title=(context.title if scope_owner is None else
               f"{context.title}: statement of data owner {scope_owner}" if context.title else None)
        or _default_title(owners, history, scope_owner),
        generated_at=context.generated_at,
        generator=_generator(),
        scope=Scope(scope_owner, len(context.all_owners),
                    "this report covers every data owner in the ledgers given" if scope_owner is None else
                    f"this is the statement of data owner {scope_owner} alone: other owners' figures, entries and "
                    "problems are left out"),
        status=st,
        summary=s,
        plain_words=plain_words(),
        ledgers=ledgers,
        owners=owners,
        history=history,
        processing_records=[r.to_dict() for r in records],
        gdpr={"article_30": article_30(records, owners), "article_25": article_25(owners, history),
              "article_32": article_32(owners, ledgers, context.key_modes, context.empirical_audit)},
        limitations=limitations(owners, supplied, history),
        evidence_levels=dict(ev.DESCRIPTIONS),
        recompute=_recompute_note(),
        decision=decision,
        release_channels=channels,
        dpia=dpia_section(records, owners, decision, channels),
        empirical_audit=context.empirical_audit,
        _context=context,
    )


def narrow_to_owner(report: Report, owner_id: str) -> Report:
    """One owner's statement: its section, the files holding it, the problems about it."""
    context: _Context | None = report._context
    if context is None:
        raise ValueError("this report was not built here (no context): build it with build_report(..., owner=...)")
    owner = next((o for o in context.all_owners if o.owner_id == owner_id), None)
    if owner is None:
        raise KeyError(f"owner {owner_id!r} is not in this report")
    files = [f for f in context.files
             if f.owner_id == owner_id or any(e.owner_id == owner_id for e in f.entries) or not f.kind]
    problem = owner.integrity.problem if owner.integrity else None
    if problem and problem.startswith("owner ") and not problem.startswith(f"owner {owner_id},"):
        owner = replace(owner, integrity=replace(
            owner.integrity, problem="a problem in another owner's entries in the same file (withheld from this "
                                     "owner's statement)"))
    return _assemble(context, [owner], files, scope_owner=owner_id)


def _load_records(processing_record) -> list[ProcessingRecord]:
    if processing_record is None:
        return []
    if isinstance(processing_record, (str, Path, ProcessingRecord, dict)):
        processing_record = [processing_record]
    records = [load_processing_record(r) for r in processing_record]
    owners_named = [o for r in records for o in r.owner_ids]
    dupes = sorted({o for o in owners_named if owners_named.count(o) > 1})
    if dupes:
        raise ProcessingRecordError(f"owner(s) {', '.join(dupes)} named by several processing records; keep one")
    if sum(1 for r in records if not r.owner_ids) > 1:
        raise ProcessingRecordError("several processing records cover every owner; give each an owner_ids list")
    return records


def _default_title(owners: list[OwnerStatement], history, scope_owner: str | None) -> str:
    if scope_owner is not None:
        return f"Privacy budget statement: data owner {scope_owner}"
    if history and history.experiment:
        return f"Privacy budget report: {history.experiment} ({len(owners)} data owners)"
    if len(owners) == 1:
        return f"Privacy budget report: data owner {owners[0].owner_id}"
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
        "how": "For each owner, take the entries in sequence order and group them by privacy unit (record-level: "
               "DP-SGD at the owner; owner-level: DP-FedAvg at the coordinator; an entry naming no unit is "
               "record-level): each unit is a different guarantee with its own budget and is composed alone. A "
               "charge's DP event (owners[].entries[].event) is composed with every earlier charge of the same unit "
               "by the accountant the entry names, at the entry's delta; that is epsilon_cumulative. epsilon_release "
               "is the event alone under the same accountant and delta; epsilon_increment is the change in "
               "epsilon_cumulative. Refusals never count. epsilon_remaining = epsilon_budget - epsilon_cumulative. "
               "owners[].units[]: per unit, epsilon_spent (the unit's charges composed), its budget (from the unit's "
               "entries), epsilon_by_accountant (the same charges under PLD and RDP: n/a where an accountant does "
               "not compose them, e.g. PLD and fixed-size sampling). outlook.rounds_left: the largest k such that "
               "the unit's charges plus k releases of its latest charge's event compose to at most the unit's "
               "budget (one more does not). experiment.epsilon: the unit's charges whose run_id is the experiment "
               "id (record-level) or the experiment id + '/owner' (owner-level), composed alone. The signed entry "
               "bytes (entry_base64, signature) let anyone re-verify: `privfl ledger verify LEDGER --public-key "
               "OWNER.pub`.",
        "python": "from privfl.privacy.accountants import get_accountant\n"
                  "from privfl.privacy.events import PoissonSubsampledGaussian, SampledWithoutReplacementGaussian\n"
                  "def event(e):\n"
                  "    if e['type'] == 'sampled_without_replacement_gaussian':\n"
                  "        return SampledWithoutReplacementGaussian(e['noise_multiplier'], e['sample_size'],\n"
                  "                                                 e['population_size'], e['steps'])\n"
                  "    return PoissonSubsampledGaussian(e['noise_multiplier'], e['sample_rate'], e['steps'])\n"
                  "events = [event(r['event']) for r in charges_so_far_of_this_unit]\n"
                  "epsilon = get_accountant(accountant).epsilon(events, delta)",
        "epsilon_rel_tol": EPSILON_REL_TOL,
        "epsilon_abs_tol": EPSILON_ABS_TOL,
        "accountants": {
            "rdp": "Renyi DP (Mironov 2017) as implemented by Opacus; an upper bound",
            "prv": "privacy random variables (Gopi et al. 2021) as implemented by Opacus",
            "pld": "privacy loss distributions (dp-accounting, pessimistic discretisation); the tightest",
        },
        "neighbouring_relation": "add or remove one privacy unit (Poisson sampling: a record, or an owner); replace "
                                 "one (fixed-size sampling of m of N owners, N public)",
    }


def _key_file_modes(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    files = sorted(folder.glob("*.key")) if folder.is_dir() else []
    nested = not files and folder.is_dir()
    if nested:  # a simulation's owners/<owner>/<key>.key
        files = sorted(folder.glob("*/*.key"))
    modes = {(p.parent.name if nested else p.name.removesuffix(".key")): oct(p.stat().st_mode & 0o777)
             for p in files}
    loose = sorted(o for o, m in modes.items() if int(m, 8) & 0o077)
    return {"folder": str(folder), "modes": modes, "loose": loose, "checked": bool(files)}


__all__ = ["REPORT_TYPE", "Report", "SCHEMA_VERSION", "build_report", "event_fields", "load_keys", "narrow_to_owner",
           "resolve_ledger_paths"]
