"""Per-owner accounting: every epsilon a report shows, recomputed from the ledger's DP events.

Why here and nowhere else: DESIGN principle 3 -- epsilon is derived from events by
the accountant each entry names, never copied.  For one owner this module composes
its charges in sequence order and produces, for every entry, the release's own
epsilon, the cumulative (lifetime) epsilon after it, and whether the epsilon the
signed entry *states* equals that recomputation (the check ``ledger.verify`` makes,
made here once with the very figures the report shows).  From the same events it
derives what is next (:func:`rounds_left`: how many more releases like the latest
one fit the budget, decided by :func:`privfl.privacy.budget.decide_next_release`,
the one home of "fits the budget") and this experiment's share (its charges
composed alone).

Per privacy unit (DESIGN principle 4): an owner's ledger may hold record-level
charges (DP-SGD at the owner) and owner-level charges (DP-FedAvg at the
coordinator, run id ``<experiment>/owner``).  They are different guarantees with
different budgets, so every figure above is derived per unit, from that unit's
charges alone (:class:`~privfl.privacy.report.model.UnitAccount`), and each unit's
spent epsilon is also composed under PLD and RDP side by side
(:func:`compare_accountants`; PLD refuses fixed-size sampling, which shows as n/a).

Cost: cumulative epsilons use the accountants' incremental compositions
(:class:`~privfl.privacy.ledger.epsilon.PrefixEpsilons`), so n entries cost n cheap
steps; a release's own epsilon, the rounds-left search and the PLD/RDP figures are
cached per (accountant, merged events, delta[, budget]), so owners with the same
settings share them.
Nothing here touches the ledger files or verification, so owners can be accounted
in helper processes.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from privfl.privacy.budget import fits_budget, unit_spend
from privfl.privacy.accountants import get_accountant
from privfl.privacy.budget import PrivacyBudget, decide_next_release
from privfl.privacy.events import (
    DpEvent,
    Gaussian,
    PoissonSubsampledGaussian,
    SampledWithoutReplacementGaussian,
    is_event,
    merge_repeats,
)
from privfl.privacy.ledger import Entry
from privfl.privacy.ledger.entry import RECORD, unit_of
from privfl.privacy.ledger.epsilon import PrefixEpsilons, stated_epsilon_holds
from privfl.privacy.ledger.errors import UnsupportedEvent
from privfl.privacy.report import evidence as ev
from privfl.privacy.report.model import (
    COMPARED_ACCOUNTANTS,
    NEAR_BUDGET_FRACTION,
    PRIMARY_UNIT_FIELDS,
    PRIVACY_UNITS,
    AccountantEpsilon,
    EventParams,
    ExperimentShare,
    MechanismSetting,
    Outlook,
    OwnerStatement,
    PurposeCheck,
    PurposeMismatch,
    Refusal,
    Release,
    RunSpend,
    Source,
    UnitAccount,
    unit_label,
)
from privfl.privacy.report.words import UNIT_PROTECTS, odds_bound, strength_tier

MAX_ROUNDS_LEFT = 100_000  # the rounds-left search stops here ("at least")


@dataclass
class OwnerAccounting:
    """An owner's statement, and what its recomputation found about the stated epsilons."""

    statement: OwnerStatement
    epsilon_problems: list[str] = field(default_factory=list)
    epsilons_checked: int = 0


@dataclass(frozen=True)
class OwnerInput:
    """What accounting one owner needs (plain, picklable data)."""

    owner_id: str
    entries: tuple[Entry, ...]
    ledger: str
    ledger_kind: str
    experiment_id: str | None = None
    declared_purposes: tuple[str, ...] | None = None
    record: str | None = None


class EpsilonCache:
    """Figures that depend only on (accountant, events, delta[, budget]): computed once per report.

    ``deferred``: accountants whose side-by-side figures (:func:`compare_accountants`) are
    left for the caller to compose (:func:`compose_deferred`, :func:`settle_deferred`): the
    report's main process composes the PLD figures while helper processes account.
    """

    def __init__(self, deferred: Sequence[str] = ()) -> None:
        self._release: dict[tuple, float | None] = {}
        self._composed: dict[tuple, float | None] = {}
        self._rounds: dict[tuple, Outlook] = {}
        self._refusals: dict[tuple, str | None] = {}
        self.deferred = frozenset(deferred)

    def release(self, accountant: str, event: DpEvent | None, delta: float) -> float | None:
        key = (accountant, event, delta)
        if key not in self._release:
            self._release[key] = None if event is None else _epsilon(accountant, [event], delta)
        return self._release[key]

    def composed(self, accountant: str, events: Sequence[DpEvent], delta: float) -> float | None:
        try:
            merged = tuple(merge_repeats(events))
        except TypeError:
            return None
        key = (accountant, merged, delta)
        if key not in self._composed:
            self._composed[key] = _epsilon(accountant, merged, delta)
        return self._composed[key]

    def refusal(self, accountant: str, events: Sequence[DpEvent]) -> str | None:
        """Why ``accountant`` does not compose ``events``, in the report's words (None: it does)."""
        try:
            merged = tuple(merge_repeats(events))
        except TypeError as err:
            return f"n/a ({err})"
        key = (accountant, tuple(type(e) for e in merged))
        if key not in self._refusals:
            self._refusals[key] = _refusal(accountant, merged)
        return self._refusals[key]


PLD_NO_FIXED_SIZE = "n/a (PLD does not support fixed-size sampling)"


def _refusal(accountant: str, events: Sequence[DpEvent]) -> str | None:
    try:
        reason = get_accountant(accountant).refusal(events)
    except ValueError as err:  # an accountant name this privfl does not know
        return f"n/a ({err})"
    if reason is None:
        return None
    if accountant == "pld" and any(isinstance(e, SampledWithoutReplacementGaussian) for e in events):
        return PLD_NO_FIXED_SIZE
    return f"n/a ({reason})"


def _epsilon(accountant: str, events: Sequence[DpEvent], delta: float) -> float | None:
    try:
        return get_accountant(accountant).epsilon(list(events), delta)
    except (TypeError, ValueError, UnsupportedEvent):
        return None


def event_params(event: DpEvent | None, mechanism: str) -> EventParams:
    if isinstance(event, PoissonSubsampledGaussian):
        return EventParams("poisson_subsampled_gaussian", event.noise_multiplier, event.sample_rate, event.steps)
    if isinstance(event, SampledWithoutReplacementGaussian):
        return EventParams("sampled_without_replacement_gaussian", event.noise_multiplier, event.sample_rate,
                           event.steps, event.sample_size, event.population_size)
    if isinstance(event, Gaussian):
        return EventParams("gaussian", event.noise_multiplier)
    return EventParams(mechanism or "none")


def iso_time(nanos: int) -> str:
    return datetime.fromtimestamp(nanos / 1e9, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def normalise_purpose(purpose: str) -> str:
    """Purposes are compared case-insensitively, with runs of whitespace as one space."""
    return " ".join(purpose.split()).casefold()


# --------------------------------------------------------------------------- one owner


@dataclass
class _UnitState:
    """One privacy unit's running composition while an owner's entries are read in order."""

    unit: str
    prefix: PrefixEpsilons = field(default_factory=PrefixEpsilons)
    last: dict = field(default_factory=dict)  # (accountant, delta) -> (charges, epsilon): the latest prefix figure
    charges: int = 0
    charge_events: list = field(default_factory=list)
    unsupported: str = ""
    entries: list = field(default_factory=list)
    rows: list = field(default_factory=list)


def account_owner(given: OwnerInput, cache: EpsilonCache) -> OwnerAccounting:
    """The owner's statement from its entries (in sequence order); integrity is settled by the caller.

    Each privacy unit is composed on its own (DESIGN principle 4, as ``ledger.owner`` states
    each entry's cumulative epsilon over its own unit's charges): an entry's cumulative
    epsilon, the check of what it states, and every figure of the unit's block come from
    that unit's charges alone.
    """
    owner_id, entries = given.owner_id, list(given.entries)
    sequences = [e.sequence for e in entries]
    complete = sequences == list(range(1, len(entries) + 1))
    declared = None if given.declared_purposes is None else {normalise_purpose(p) for p in given.declared_purposes}
    result = OwnerAccounting(statement=None)  # type: ignore[arg-type]
    held_from_one = True  # the entries so far are the owner's chain from entry 1, without a gap
    states: dict[str, _UnitState] = {}
    rows: list[Release] = []
    purpose_ok: dict[str, bool] = {}
    for index, entry in enumerate(entries):
        held_from_one = held_from_one and entry.sequence == index + 1
        unit = unit_of(entry)
        st = states.get(unit)
        if st is None:
            st = states[unit] = _UnitState(unit)
        before = _prefix_epsilon(st, entry)
        if entry.is_charge:
            st.charges += 1
            if entry.event is not None:
                st.charge_events.append(entry.event)
            if not st.unsupported:
                try:
                    st.prefix.add_charge(entry.event)
                except UnsupportedEvent as err:
                    st.unsupported = f"entry {entry.sequence}: {err}"
        cumulative = _prefix_epsilon(st, entry)
        alone = cache.release(entry.accountant, entry.event, entry.delta) if entry.is_charge else None
        increment = cumulative - before if (entry.is_charge and cumulative is not None and before is not None) \
            else None
        stated = entry.cumulative_epsilon
        matches = None if cumulative is None else (
            stated_epsilon_holds(stated, cumulative, complete=held_from_one))
        if matches is not None:
            result.epsilons_checked += 1
        if matches is False:
            label = unit_label(unit)
            result.epsilon_problems.append(
                f"owner {owner_id}, entry {entry.sequence}: states cumulative epsilon {stated!r}, but its {label} "
                f"charges compose to {cumulative!r} ({entry.accountant}, delta={entry.delta:g})" if held_from_one else
                f"owner {owner_id}, entry {entry.sequence}: states cumulative epsilon {stated!r}, below the "
                f"{cumulative!r} that the {label} charges held here alone compose to ({entry.accountant})")
        if declared is None:
            declared_here = None
        else:
            declared_here = purpose_ok.get(entry.purpose)
            if declared_here is None:
                declared_here = purpose_ok[entry.purpose] = normalise_purpose(entry.purpose) in declared
        row = Release(
            sequence=entry.sequence, kind=entry.kind, run_id=entry.run_id, round=entry.round,
            timestamp=iso_time(entry.timestamp_unix_nanos), timestamp_unix_nanos=entry.timestamp_unix_nanos,
            mechanism=entry.mechanism or "none", event=event_params(entry.event, entry.mechanism),
            clipping_norm=entry.clipping_norm, privacy_unit=entry.privacy_unit, delta=entry.delta,
            accountant=entry.accountant, epsilon_budget=entry.epsilon_budget, purpose=entry.purpose,
            refusal_reason=entry.refusal_reason, epsilon_release=alone, epsilon_increment=increment,
            epsilon_cumulative=cumulative, epsilon_cumulative_stated=stated, epsilon_stated_matches=matches,
            epsilon_remaining=None if cumulative is None else entry.epsilon_budget - cumulative,
            purpose_declared=declared_here, update_hash=entry.update_hash.hex(), entry_hash=entry.hash.hex(),
            previous_hash=entry.previous_hash.hex(), key_fingerprint=entry.key_fingerprint,
            signature=entry.signature.hex(), entry_base64=base64.b64encode(entry.entry_bytes).decode("ascii"),
        )
        rows.append(row)
        st.rows.append(row)
        st.entries.append(entry)

    units = [_unit_account(states[u], given.experiment_id, complete, cache) for u in PRIVACY_UNITS if u in states]
    primary = units[0] if units else None
    charge_rows = [r for r in rows if r.kind == "charge"]
    refusal_rows = [r for r in rows if r.kind == "refusal"]
    if primary is not None:
        figures = {name: getattr(primary, name) for name in PRIMARY_UNIT_FIELDS}
    else:  # no entries: nothing spent, nothing known
        figures = dict(accountant="", delta=None, epsilon_spent=0.0, epsilon_spent_basis="no entries",
                       epsilon_spent_stated=None, epsilon_spent_recomputed_lower_bound=None, epsilon_budget=None,
                       epsilon_budgets_stated=[], epsilon_remaining=None, budget_used_fraction=None,
                       over_budget=False, budget_status=budget_status(None, False), odds_bound=odds_bound(0.0),
                       strength=strength_tier(0.0), unsupported_event=None, outlook=None,
                       experiment=_experiment(given.experiment_id, RECORD, [], [], 0.0, None, cache))
    statement = OwnerStatement(
        owner_id=owner_id,
        source=Source(given.ledger, given.ledger_kind, complete, sequences[0] if sequences else None,
                      sequences[-1] if sequences else None),
        integrity=None,
        privacy_unit=primary.privacy_unit if primary else "unspecified",
        privacy_units=[u.privacy_unit for u in units],
        mechanisms=sorted({r.mechanism for r in charge_rows}),
        mechanism_settings=_settings(charge_rows),
        accountants=sorted({r.accountant for r in rows}),
        charges=len(charge_rows),
        refusals=len(refusal_rows),
        refused_releases=[Refusal(r.run_id, r.round, r.timestamp, r.refusal_reason, r.epsilon_cumulative, r.event,
                                  row_unit(r)) for r in refusal_rows],
        purposes=sorted({r.purpose for r in rows if r.purpose}),
        first_entry=rows[0].timestamp if rows else None,
        last_entry=rows[-1].timestamp if rows else None,
        runs=_runs(rows),
        stated_epsilons_matching=sum(1 for r in rows if r.epsilon_stated_matches),
        stated_epsilons_not_matching=[r.sequence for r in rows if r.epsilon_stated_matches is False],
        purpose_check=_purpose_check(given, rows),
        federated_evaluation=None,
        entries=rows,
        units=units,
        **figures,
    )
    result.statement = statement
    return result


def _unit_account(st: _UnitState, experiment_id: str | None, complete: bool, cache: EpsilonCache) -> UnitAccount:
    """One unit's block: its charges composed alone, against the budget its own entries state."""
    rows: list[Release] = st.rows
    charge_rows = [r for r in rows if r.kind == "charge"]
    latest = rows[-1]
    budget, delta, accountant = latest.epsilon_budget, latest.delta, latest.accountant
    # Spent per unit, the one definition (privacy.budget.unit_spend), composed through this report's cache.
    recomputed = None if st.unsupported else unit_spend(st.entries, st.unit, compose=cache.composed).epsilon
    if st.unsupported:
        spent, basis = None, f"cannot be computed: {st.unsupported}"
    elif complete:
        spent, basis = recomputed, ev.RECOMPUTED
    else:
        spent = max(latest.epsilon_cumulative_stated, recomputed or 0.0)
        basis = ev.OWNER_SIGNED_PARTIAL
    remaining = None if spent is None or budget is None else budget - spent
    used = (spent / budget) if spent is not None and budget else None
    # The one budget rule (privacy.budget.fits_budget), on the figure the owner enforced: its stated epsilon where the
    # recomputation confirms it (they differ by rounding only), else the larger figure.
    judged = latest.epsilon_cumulative_stated if complete and latest.epsilon_stated_matches else spent
    over = bool(spent is not None and budget is not None and not fits_budget(judged, budget))
    latest_charge = next((e for e in reversed(st.entries) if e.is_charge), None)
    return UnitAccount(
        privacy_unit=st.unit,
        label=unit_label(st.unit),
        protects=UNIT_PROTECTS.get(st.unit, st.unit),
        mechanisms=sorted({r.mechanism for r in charge_rows}),
        mechanism_settings=_settings(charge_rows),
        accountant=accountant,
        accountants=sorted({r.accountant for r in rows}),
        delta=delta,
        epsilon_spent=spent,
        epsilon_spent_basis=basis,
        epsilon_spent_stated=latest.epsilon_cumulative_stated,
        epsilon_spent_recomputed_lower_bound=None if complete else recomputed,
        epsilon_by_accountant=compare_accountants(st.charge_events, delta, accountant, complete, st.unsupported,
                                                  cache),
        epsilon_budget=budget,
        epsilon_budgets_stated=sorted({r.epsilon_budget for r in rows}),
        epsilon_remaining=remaining,
        budget_used_fraction=used,
        over_budget=over,
        budget_status=budget_status(used, over),
        odds_bound=odds_bound(spent),
        strength=strength_tier(spent),
        charges=len(charge_rows),
        refusals=len(rows) - len(charge_rows),
        first_entry=rows[0].timestamp,
        last_entry=latest.timestamp,
        stated_epsilons_matching=sum(1 for r in rows if r.epsilon_stated_matches),
        stated_epsilons_not_matching=[r.sequence for r in rows if r.epsilon_stated_matches is False],
        unsupported_event=st.unsupported or None,
        outlook=_outlook(st.charge_events, latest_charge, latest, complete, st.unsupported, cache, st.unit),
        experiment=_experiment(experiment_id, st.unit, st.entries, st.charge_events, spent, latest, cache),
    )


# --------------------------------------------------------------------------- PLD and RDP side by side


def _role(accountant: str) -> str:
    return {"pld": "the tightest figure (privacy loss distributions)",
            "rdp": "an upper bound (Renyi DP)",
            "prv": "privacy random variables (Opacus)"}.get(accountant, f"accountant {accountant}")


def compare_accountants(events: Sequence[DpEvent], delta: float | None, enforced: str, complete: bool,
                        unsupported: str, cache: EpsilonCache) -> list[AccountantEpsilon]:
    """A unit's spent epsilon under PLD and RDP (and the owner's own accountant, if another): one each.

    Each figure is ``get_accountant(name).epsilon(events, delta)`` over every charge of the
    unit, cached by the merged events (owners with the same charges share it).  An
    accountant that does not compose the events answers n/a with its reason (PLD has no
    analysis of fixed-size sampling), never an error.
    """
    names = list(COMPARED_ACCOUNTANTS) + ([enforced] if enforced and enforced not in COMPARED_ACCOUNTANTS else [])
    figures = []
    for name in names:
        is_enforced = name == enforced
        if unsupported:
            figures.append(AccountantEpsilon(name, None, is_enforced, False,
                                             f"n/a (cannot be computed: {unsupported})"))
            continue
        if delta is None:
            figures.append(AccountantEpsilon(name, None, is_enforced, False, "n/a (no delta)"))
            continue
        refusal = cache.refusal(name, events)
        if refusal is not None:
            figures.append(AccountantEpsilon(name, None, is_enforced, False, refusal))
            continue
        note = _role(name) + ("; the owner enforces its budget with this accountant" if is_enforced else "")
        if not complete:
            note += "; a lower bound: only part of the owner's chain is held here"
        if name in cache.deferred and not is_enforced:  # (the enforced accountant's own curves are at hand here)
            figures.append(AccountantEpsilon(name, None, is_enforced, True, note,
                                             _key=(name, tuple(merge_repeats(events)), delta)))
        else:
            figures.append(AccountantEpsilon(name, cache.composed(name, events, delta), is_enforced, True, note))
    return figures


def deferred_jobs(inputs: Sequence[OwnerInput], accountant: str) -> list[tuple]:
    """The distinct (accountant, merged events, delta) :func:`compare_accountants` asks of ``accountant``.

    One per owner and privacy unit whose charges the accountant composes and that does not
    enforce its budget with it (that figure is composed with the rest of the unit's
    accounting, whose caches it shares); the events are merged, so owners with the same
    charges share one.  Known from the entries alone, so they can be composed apart.
    """
    cache = EpsilonCache()
    jobs: dict[tuple, None] = {}
    for given in inputs:
        units: dict[str, list[Entry]] = {}
        for entry in given.entries:
            units.setdefault(unit_of(entry), []).append(entry)
        for entries in units.values():
            events = [e.event for e in entries if e.is_charge]
            if entries[-1].accountant == accountant or any(event is None for event in events) \
                    or cache.refusal(accountant, events) is not None:
                continue
            try:
                merged = tuple(merge_repeats(events))
            except TypeError:
                continue
            jobs.setdefault((accountant, merged, entries[-1].delta))
    return list(jobs)


def compose_deferred(jobs: Sequence[tuple]) -> dict[tuple, float | None]:
    """Each job's epsilon: ``get_accountant(name).epsilon(merged events, delta)``."""
    return {job: _epsilon(job[0], job[1], job[2]) for job in jobs}


def settle_deferred(accounts: Sequence[OwnerAccounting], figures: dict[tuple, float | None]) -> None:
    """Fill in the deferred side-by-side figures (composing any ``figures`` lacks)."""
    for account in accounts:
        for unit in account.statement.units if account.statement else ():
            for figure in unit.epsilon_by_accountant:
                key = figure._key
                if key is None:
                    continue
                if key not in figures:
                    figures[key] = _epsilon(key[0], key[1], key[2])
                figure.epsilon = figures[key]
                if figure.epsilon is None:
                    figure.supported = False
                    figure.note = f"n/a (accountant '{key[0]}' could not compose the unit's events)"
                figure._key = None


def budget_status(used: float | None, over: bool) -> str:
    if over:
        return "over"
    if used is None:
        return "unknown"
    return "near" if used >= NEAR_BUDGET_FRACTION else "within"


def _prefix_epsilon(st: _UnitState, entry: Entry) -> float | None:
    """The unit's charges so far composed with the entry's accountant at its delta (cached while unchanged)."""
    if st.unsupported:
        return None
    key = (entry.accountant, entry.delta)
    cached = st.last.get(key)
    if cached is not None and cached[0] == st.charges:
        return cached[1]
    if st.charges == 0:
        value: float | None = 0.0
    else:
        try:
            value = st.prefix.epsilon(entry.accountant, entry.delta)
        except UnsupportedEvent:
            value = None
    st.last[key] = (st.charges, value)
    return value


def _runs(rows: list[Release]) -> list[RunSpend]:
    """Per run id; before/after are the lifetime epsilon of the run's privacy unit (each unit its own curve)."""
    runs: dict[str, RunSpend] = {}
    before: dict[str, float | None] = {}
    for row in rows:
        unit = row_unit(row)
        run = runs.get(row.run_id)
        if run is None:
            start = before.get(unit, 0.0)
            run = runs[row.run_id] = RunSpend(row.run_id, 0, 0, row.round, row.round, row.timestamp, row.timestamp,
                                              start, start, [])
        if unit not in run.privacy_units:
            run.privacy_units.append(unit)
        if row.kind == "charge":
            run.charges += 1
        else:
            run.refusals += 1
        run.first_round = min(run.first_round, row.round)
        run.last_round = max(run.last_round, row.round)
        run.last_entry = row.timestamp
        if row.epsilon_cumulative is not None:
            run.epsilon_after = before[unit] = row.epsilon_cumulative
        if row.purpose and row.purpose not in run.purposes:
            run.purposes.append(row.purpose)
    return list(runs.values())


def row_unit(row: Release) -> str:
    """A listed entry's privacy unit; one that names none (written before units existed) is record-level."""
    return row.privacy_unit if row.privacy_unit in PRIVACY_UNITS else RECORD


def _settings(charge_rows: list[Release]) -> list[MechanismSetting]:
    """Distinct mechanism settings of an owner's charges, with how often each was used."""
    settings: dict[tuple, MechanismSetting] = {}
    for row in charge_rows:
        e = row.event
        key = (e.type, e.noise_multiplier, e.sample_rate, e.sample_size, e.population_size, row.clipping_norm,
               row.privacy_unit)
        s = settings.get(key)
        if s is None:
            s = settings[key] = MechanismSetting(e.type, e.noise_multiplier, e.sample_rate, row.clipping_norm,
                                                 row.privacy_unit, 0, [], 0, e.sample_size, e.population_size)
        s.releases += 1
        steps = e.steps or 0
        s.steps_total += steps
        if steps not in s.steps_per_release:
            s.steps_per_release.append(steps)
    return list(settings.values())


# --------------------------------------------------------------------------- what is next


def _repeat(event: DpEvent, times: int) -> list[DpEvent]:
    """``times`` releases of ``event``: one event of ``times`` x its steps (exactly how accountants merge them)."""
    if times <= 0:
        return []
    if isinstance(event, Gaussian):  # Poisson sampling at rate 1, as merge_repeats folds it
        return [PoissonSubsampledGaussian(event.noise_multiplier, 1.0, times)]
    return [dataclasses.replace(event, steps=event.steps * times)]


def rounds_left(spent: Sequence[DpEvent], next_event: DpEvent, accountant: str, delta: float, budget: float,
                cap: int = MAX_ROUNDS_LEFT) -> tuple[int, bool]:
    """How many more releases of ``next_event`` fit the budget after ``spent``; ``(k, at_least)``.

    The k-th further release is allowed when :func:`~privfl.privacy.budget.decide_next_release`
    (what the owner's client asks before each round) allows it given ``spent`` and the
    k - 1 before it; epsilon never falls as releases are added, so the answer is the
    largest k whose k-th release is allowed (galloping, then bisection: about 2 log2 k
    compositions).  ``at_least``: every release up to ``cap`` fits.  ``spent`` and
    ``next_event`` are one privacy unit's (record-level or owner-level, each against its
    own budget); any event the accountant composes (Poisson, fixed-size sampling, Gaussian).
    """
    if not is_event(next_event):
        raise UnsupportedEvent(f"no accountant here composes {type(next_event).__name__} events")
    plan = PrivacyBudget(budget, delta)
    acct = get_accountant(accountant)
    spent = list(spent)

    def fits(k: int) -> bool:
        return decide_next_release([*spent, *_repeat(next_event, k - 1)], next_event, plan, acct).allowed

    if not fits(1):
        return 0, False
    good, bad = 1, 2
    while fits(bad):
        good = bad
        if bad >= cap:
            return cap, True
        bad = min(bad * 2, cap)
    while bad - good > 1:
        middle = (good + bad) // 2
        if fits(middle):
            good = middle
        else:
            bad = middle
    return good, False


def _event_words(event: DpEvent) -> str:
    if isinstance(event, SampledWithoutReplacementGaussian):
        return (f"noise multiplier {event.noise_multiplier:g}, {event.sample_size} of {event.population_size} "
                f"sampled, {event.steps} steps")
    if isinstance(event, Gaussian):
        return f"noise multiplier {event.noise_multiplier:g}, no sampling"
    return f"noise multiplier {event.noise_multiplier:g}, sample rate {event.sample_rate:.4g}, {event.steps} steps"


def _outlook(charge_events: list[DpEvent], latest_charge: Entry | None, latest: Release | None, complete: bool,
             unsupported: str, cache: EpsilonCache, unit: str = RECORD) -> Outlook | None:
    if latest is None:
        return None
    acct, delta, budget = latest.accountant, latest.delta, latest.epsilon_budget
    label = unit_label(unit)

    def outlook(note: str, **values) -> Outlook:
        base = dict(rounds_left=None, at_least=False, next_release=None, accountant=acct, delta=delta,
                    epsilon_budget=budget, epsilon_per_release=None, epsilon_after=None, epsilon_after_one_more=None,
                    evidence=ev.RECOMPUTED, note=note, privacy_unit=unit)
        base.update(values)
        return Outlook(**base)

    if latest_charge is None:
        return outlook("no release yet: there is no latest charge to extrapolate from")
    params = event_params(latest_charge.event, latest_charge.mechanism)
    if unsupported or latest_charge.event is None:
        return outlook(f"cannot be computed: {unsupported or 'the latest charge has no composable DP event'}",
                       next_release=params)
    if not complete:
        return outlook("not computed: only part of the owner's chain is held here (its other charges are in the "
                       "owner's own ledger); ask for a report on the owner's ledger", next_release=params,
                       evidence=ev.OWNER_SIGNED_PARTIAL)
    try:
        merged = tuple(merge_repeats(charge_events))
    except TypeError as err:
        return outlook(f"cannot be computed: {err}", next_release=params)
    key = (acct, delta, budget, merged, latest_charge.event, unit)
    cached = cache._rounds.get(key)
    if cached is not None:
        return cached
    event = latest_charge.event
    try:
        k, at_least = rounds_left(charge_events, event, acct, delta, budget)
    except (TypeError, ValueError, UnsupportedEvent) as err:
        return outlook(f"cannot be computed: {err}", next_release=params)
    after = cache.composed(acct, [*charge_events, *_repeat(event, k)], delta)
    one_more = None if at_least else cache.composed(acct, [*charge_events, *_repeat(event, k + 1)], delta)
    note = (f"{'at least ' if at_least else ''}{k} more release(s) like the latest one ({_event_words(event)}) "
            f"fit the {label} budget of {budget:g}" + ("" if at_least or one_more is None else
                                                     f"; one more would take epsilon to {one_more:.4g}"))
    result = outlook(note, rounds_left=k, at_least=at_least, next_release=params,
                     epsilon_per_release=cache.release(acct, event, delta), epsilon_after=after,
                     epsilon_after_one_more=one_more)
    cache._rounds[key] = result
    return result


def _experiment(experiment_id: str | None, unit: str, entries: list[Entry], charge_events: list[DpEvent],
                lifetime: float | None, latest: Release | None, cache: EpsilonCache) -> ExperimentShare | None:
    """This experiment's charges of one unit, composed alone: run id ``<id>`` (record) or ``<id>/owner`` (owner)."""
    if not experiment_id:
        return None
    run_id = experiment_run_id(experiment_id, unit)
    acct = latest.accountant if latest else ""
    delta = latest.delta if latest else None
    mine = [e for e in entries if e.run_id == run_id]
    charges = [e.event for e in mine if e.is_charge]
    refusals = sum(1 for e in mine if not e.is_charge)
    if not charges:
        epsilon: float | None = 0.0
    elif len(charges) == len(charge_events) and lifetime is not None:
        epsilon = lifetime  # every charge is this experiment's: its share is the lifetime figure
    elif delta is None or any(c is None for c in charges):
        epsilon = None
    else:
        epsilon = unit_spend(entries, unit, run_id=run_id, compose=cache.composed).epsilon
    others = len(charge_events) - len(charges)
    what = "charge(s)" if unit == RECORD else f"{unit_label(unit)} charge(s)"
    run = "" if run_id == experiment_id else f" (run {run_id})"
    note = (f"{len(charges)} {what} of experiment {experiment_id}{run} composed alone ({acct}, delta {delta:g})"
            if delta is not None else f"no entries for experiment {experiment_id}")
    if others:
        note += f"; the lifetime figure also composes {others} charge(s) of other runs"
    return ExperimentShare(experiment_id, len(charges), refusals, epsilon, acct, delta, note, run_id, unit)


def experiment_run_id(experiment_id: str, unit: str) -> str:
    """The run id a unit's charges of an experiment carry: the id (record-level), ``<id>/owner`` (owner-level)."""
    from privfl.protocol import OwnerRound  # the one home of the owner-level run id

    return experiment_id if unit == RECORD else OwnerRound.charge_key(experiment_id)


def _purpose_check(given: OwnerInput, rows: list[Release]) -> PurposeCheck:
    if given.declared_purposes is None:
        return PurposeCheck("not-checked", None, given.record, [], [])
    undeclared = [PurposeMismatch(r.sequence, r.kind, r.run_id, r.round, r.purpose)
                  for r in rows if r.purpose_declared is False]
    purposes = sorted({m.purpose for m in undeclared})
    return PurposeCheck("mismatch" if undeclared else "declared", list(given.declared_purposes), given.record,
                        undeclared, purposes)


def account_owners(inputs: Sequence[OwnerInput], cache: EpsilonCache | None = None) -> list[OwnerAccounting]:
    """Account several owners with one cache (what a helper process runs)."""
    cache = cache if cache is not None else EpsilonCache()
    return [account_owner(given, cache) for given in inputs]


def settings_key(given: OwnerInput) -> tuple:
    """The distinct (accountant, unit, mechanism settings) an owner's charges need: owners sharing one share the work."""
    return tuple(sorted({(e.accountant, unit_of(e), type(e.event).__name__, e.event.noise_multiplier,
                          getattr(e.event, "sample_rate", 1.0)) for e in given.entries
                         if e.is_charge and is_event(e.event)}))


__all__ = ["MAX_ROUNDS_LEFT", "PLD_NO_FIXED_SIZE", "EpsilonCache", "OwnerAccounting", "OwnerInput", "account_owner",
           "account_owners", "budget_status", "compare_accountants", "compose_deferred", "deferred_jobs",
           "event_params", "experiment_run_id", "iso_time", "normalise_purpose", "rounds_left", "row_unit",
           "settings_key", "settle_deferred"]
