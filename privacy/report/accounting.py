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

Cost: cumulative epsilons use the accountants' incremental compositions
(:class:`~privfl.privacy.ledger.epsilon.PrefixEpsilons`), so n entries cost n cheap
steps; a release's own epsilon and the rounds-left search are cached per
(accountant, events, delta, budget), so owners with the same settings share them.
Nothing here touches the ledger files or verification, so owners can be accounted
in helper processes.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from privfl.privacy.accountants import get_accountant
from privfl.privacy.budget import PrivacyBudget, decide_next_release
from privfl.privacy.events import DpEvent, Gaussian, PoissonSubsampledGaussian, merge_repeats
from privfl.privacy.ledger import Entry
from privfl.privacy.ledger.epsilon import EPSILON_ABS_TOL, EPSILON_REL_TOL, PrefixEpsilons, epsilon_matches
from privfl.privacy.ledger.errors import UnsupportedEvent
from privfl.privacy.report import evidence as ev
from privfl.privacy.report.model import (
    NEAR_BUDGET_FRACTION,
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
)
from privfl.privacy.report.words import odds_bound, strength_tier

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
    """Figures that depend only on (accountant, events, delta[, budget]): computed once per report."""

    def __init__(self) -> None:
        self._release: dict[tuple, float | None] = {}
        self._composed: dict[tuple, float | None] = {}
        self._rounds: dict[tuple, Outlook] = {}

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


def _epsilon(accountant: str, events: Sequence[DpEvent], delta: float) -> float | None:
    try:
        return get_accountant(accountant).epsilon(list(events), delta)
    except (TypeError, ValueError, UnsupportedEvent):
        return None


def event_params(event: DpEvent | None, mechanism: str) -> EventParams:
    if isinstance(event, PoissonSubsampledGaussian):
        return EventParams("poisson_subsampled_gaussian", event.noise_multiplier, event.sample_rate, event.steps)
    if isinstance(event, Gaussian):
        return EventParams("gaussian", event.noise_multiplier)
    return EventParams(mechanism or "none")


def iso_time(nanos: int) -> str:
    return datetime.fromtimestamp(nanos / 1e9, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def normalise_purpose(purpose: str) -> str:
    """Purposes are compared case-insensitively, with runs of whitespace as one space."""
    return " ".join(purpose.split()).casefold()


# --------------------------------------------------------------------------- one owner


def account_owner(given: OwnerInput, cache: EpsilonCache) -> OwnerAccounting:
    """The owner's statement from its entries (in sequence order); integrity is settled by the caller."""
    owner_id, entries = given.owner_id, list(given.entries)
    sequences = [e.sequence for e in entries]
    complete = sequences == list(range(1, len(entries) + 1))
    declared = None if given.declared_purposes is None else {normalise_purpose(p) for p in given.declared_purposes}
    result = OwnerAccounting(statement=None)  # type: ignore[arg-type]
    held_from_one = True  # the entries so far are the owner's chain from entry 1, without a gap
    prefix = PrefixEpsilons()
    charges = 0
    charge_events: list[DpEvent] = []
    unsupported = ""
    last: dict[tuple[str, float], tuple[int, float | None]] = {}
    rows: list[Release] = []
    purpose_ok: dict[str, bool] = {}
    for index, entry in enumerate(entries):
        held_from_one = held_from_one and entry.sequence == index + 1
        before = _prefix_epsilon(prefix, last, charges, entry, unsupported)
        if entry.is_charge:
            charges += 1
            if entry.event is not None:
                charge_events.append(entry.event)
            if not unsupported:
                try:
                    prefix.add_charge(entry.event)
                except UnsupportedEvent as err:
                    unsupported = f"entry {entry.sequence}: {err}"
        cumulative = _prefix_epsilon(prefix, last, charges, entry, unsupported) if not unsupported else None
        alone = cache.release(entry.accountant, entry.event, entry.delta) if entry.is_charge else None
        increment = cumulative - before if (entry.is_charge and cumulative is not None and before is not None) \
            else None
        stated = entry.cumulative_epsilon
        matches = None if cumulative is None else (
            epsilon_matches(stated, cumulative) if held_from_one else stated >= cumulative * (1 - EPSILON_REL_TOL))
        if matches is not None:
            result.epsilons_checked += 1
        if matches is False:
            result.epsilon_problems.append(
                f"owner {owner_id}, entry {entry.sequence}: states cumulative epsilon {stated!r}, but its charges "
                f"compose to {cumulative!r} ({entry.accountant}, delta={entry.delta:g})" if held_from_one else
                f"owner {owner_id}, entry {entry.sequence}: states cumulative epsilon {stated!r}, below the "
                f"{cumulative!r} that the charges held here alone compose to ({entry.accountant})")
        if declared is None:
            declared_here = None
        else:
            declared_here = purpose_ok.get(entry.purpose)
            if declared_here is None:
                declared_here = purpose_ok[entry.purpose] = normalise_purpose(entry.purpose) in declared
        rows.append(Release(
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
        ))

    charge_rows = [r for r in rows if r.kind == "charge"]
    refusal_rows = [r for r in rows if r.kind == "refusal"]
    latest = rows[-1] if rows else None
    budget = latest.epsilon_budget if latest else None
    delta = latest.delta if latest else None
    accountant = latest.accountant if latest else ""
    recomputed = latest.epsilon_cumulative if latest else 0.0
    if latest is None:
        spent, basis = 0.0, "no entries"
    elif unsupported:
        spent, basis = None, f"cannot be computed: {unsupported}"
    elif complete:
        spent, basis = recomputed, ev.RECOMPUTED
    else:
        spent = max(latest.epsilon_cumulative_stated, recomputed or 0.0)
        basis = ev.OWNER_SIGNED_PARTIAL
    remaining = None if spent is None or budget is None else budget - spent
    used = (spent / budget) if spent is not None and budget else None
    over = bool(remaining is not None and remaining < -EPSILON_ABS_TOL)
    units = sorted({r.privacy_unit for r in rows})
    latest_charge = next((e for e in reversed(entries) if e.is_charge), None)
    statement = OwnerStatement(
        owner_id=owner_id,
        source=Source(given.ledger, given.ledger_kind, complete, sequences[0] if sequences else None,
                      sequences[-1] if sequences else None),
        integrity=None,
        privacy_unit=units[0] if len(units) == 1 else ("mixed" if units else "unspecified"),
        privacy_units=units,
        mechanisms=sorted({r.mechanism for r in charge_rows}),
        mechanism_settings=_settings(charge_rows),
        accountant=accountant,
        accountants=sorted({r.accountant for r in rows}),
        delta=delta,
        epsilon_spent=spent,
        epsilon_spent_basis=basis,
        epsilon_spent_stated=latest.epsilon_cumulative_stated if latest else None,
        epsilon_spent_recomputed_lower_bound=None if complete else recomputed,
        epsilon_budget=budget,
        epsilon_budgets_stated=sorted({r.epsilon_budget for r in rows}),
        epsilon_remaining=remaining,
        budget_used_fraction=used,
        over_budget=over,
        budget_status=budget_status(used, over),
        odds_bound=odds_bound(spent),
        strength=strength_tier(spent),
        charges=len(charge_rows),
        refusals=len(refusal_rows),
        refused_releases=[Refusal(r.run_id, r.round, r.timestamp, r.refusal_reason, r.epsilon_cumulative, r.event)
                          for r in refusal_rows],
        purposes=sorted({r.purpose for r in rows if r.purpose}),
        first_entry=rows[0].timestamp if rows else None,
        last_entry=rows[-1].timestamp if rows else None,
        runs=_runs(rows),
        stated_epsilons_matching=sum(1 for r in rows if r.epsilon_stated_matches),
        stated_epsilons_not_matching=[r.sequence for r in rows if r.epsilon_stated_matches is False],
        unsupported_event=unsupported or None,
        outlook=_outlook(charge_events, latest_charge, latest, complete, unsupported, cache),
        experiment=_experiment(given.experiment_id, entries, charge_events, spent, latest, cache),
        purpose_check=_purpose_check(given, rows),
        federated_evaluation=None,
        entries=rows,
    )
    result.statement = statement
    return result


def budget_status(used: float | None, over: bool) -> str:
    if over:
        return "over"
    if used is None:
        return "unknown"
    return "near" if used >= NEAR_BUDGET_FRACTION else "within"


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


def _runs(rows: list[Release]) -> list[RunSpend]:
    runs: dict[str, RunSpend] = {}
    before: float | None = 0.0
    for row in rows:
        run = runs.get(row.run_id)
        if run is None:
            run = runs[row.run_id] = RunSpend(row.run_id, 0, 0, row.round, row.round, row.timestamp, row.timestamp,
                                              before, before, [])
        if row.kind == "charge":
            run.charges += 1
        else:
            run.refusals += 1
        run.first_round = min(run.first_round, row.round)
        run.last_round = max(run.last_round, row.round)
        run.last_entry = row.timestamp
        if row.epsilon_cumulative is not None:
            run.epsilon_after = before = row.epsilon_cumulative
        if row.purpose and row.purpose not in run.purposes:
            run.purposes.append(row.purpose)
    return list(runs.values())


def _settings(charge_rows: list[Release]) -> list[MechanismSetting]:
    """Distinct mechanism settings of an owner's charges, with how often each was used."""
    settings: dict[tuple, MechanismSetting] = {}
    for row in charge_rows:
        e = row.event
        key = (e.type, e.noise_multiplier, e.sample_rate, row.clipping_norm, row.privacy_unit)
        s = settings.get(key)
        if s is None:
            s = settings[key] = MechanismSetting(e.type, e.noise_multiplier, e.sample_rate, row.clipping_norm,
                                                 row.privacy_unit, 0, [], 0)
        s.releases += 1
        steps = e.steps or 0
        s.steps_total += steps
        if steps not in s.steps_per_release:
            s.steps_per_release.append(steps)
    return list(settings.values())


# --------------------------------------------------------------------------- what is next


def _repeat(event: PoissonSubsampledGaussian, times: int) -> list[DpEvent]:
    """``times`` releases of ``event``: one event of ``times`` x its steps (exactly how accountants merge them)."""
    return [] if times <= 0 else [PoissonSubsampledGaussian(event.noise_multiplier, event.sample_rate,
                                                            event.steps * times)]


def rounds_left(spent: Sequence[DpEvent], next_event: DpEvent, accountant: str, delta: float, budget: float,
                cap: int = MAX_ROUNDS_LEFT) -> tuple[int, bool]:
    """How many more releases of ``next_event`` fit the budget after ``spent``; ``(k, at_least)``.

    The k-th further release is allowed when :func:`~privfl.privacy.budget.decide_next_release`
    (what the owner's client asks before each round) allows it given ``spent`` and the
    k - 1 before it; epsilon never falls as releases are added, so the answer is the
    largest k whose k-th release is allowed (galloping, then bisection: about 2 log2 k
    compositions).  ``at_least``: every release up to ``cap`` fits.
    """
    if not isinstance(next_event, PoissonSubsampledGaussian):
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


def _outlook(charge_events: list[DpEvent], latest_charge: Entry | None, latest: Release | None, complete: bool,
             unsupported: str, cache: EpsilonCache) -> Outlook | None:
    if latest is None:
        return None
    acct, delta, budget = latest.accountant, latest.delta, latest.epsilon_budget

    def outlook(note: str, **values) -> Outlook:
        base = dict(rounds_left=None, at_least=False, next_release=None, accountant=acct, delta=delta,
                    epsilon_budget=budget, epsilon_per_release=None, epsilon_after=None, epsilon_after_one_more=None,
                    evidence=ev.RECOMPUTED, note=note)
        base.update(values)
        return Outlook(**base)

    if latest_charge is None:
        return outlook("no release yet: there is no latest charge to extrapolate from")
    params = event_params(latest_charge.event, latest_charge.mechanism)
    if unsupported or not isinstance(latest_charge.event, PoissonSubsampledGaussian):
        return outlook(f"cannot be computed: {unsupported or 'the latest charge has no composable DP event'}",
                       next_release=params)
    if not complete:
        return outlook("not computed: only part of the owner's chain is held here (its other charges are in the "
                       "owner's own ledger); ask for a report on the owner's ledger", next_release=params,
                       evidence=ev.OWNER_SIGNED_PARTIAL)
    key = (acct, delta, budget, tuple(merge_repeats(charge_events)), latest_charge.event)
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
    note = (f"{'at least ' if at_least else ''}{k} more release(s) like the latest one "
            f"(noise multiplier {event.noise_multiplier:g}, sample rate {event.sample_rate:.4g}, {event.steps} steps) "
            f"fit the budget of {budget:g}" + ("" if at_least or one_more is None else
                                                f"; one more would take epsilon to {one_more:.4g}"))
    result = outlook(note, rounds_left=k, at_least=at_least, next_release=params,
                     epsilon_per_release=cache.release(acct, event, delta), epsilon_after=after,
                     epsilon_after_one_more=one_more)
    cache._rounds[key] = result
    return result


def _experiment(experiment_id: str | None, entries: list[Entry], charge_events: list[DpEvent],
                lifetime: float | None, latest: Release | None, cache: EpsilonCache) -> ExperimentShare | None:
    if not experiment_id:
        return None
    acct = latest.accountant if latest else ""
    delta = latest.delta if latest else None
    mine = [e for e in entries if e.run_id == experiment_id]
    charges = [e.event for e in mine if e.is_charge]
    refusals = sum(1 for e in mine if not e.is_charge)
    if not charges:
        epsilon: float | None = 0.0
    elif len(charges) == len(charge_events) and lifetime is not None:
        epsilon = lifetime  # every charge is this experiment's: its share is the lifetime figure
    elif delta is None or any(c is None for c in charges):
        epsilon = None
    else:
        epsilon = cache.composed(acct, charges, delta)
    others = len(charge_events) - len(charges)
    note = (f"{len(charges)} charge(s) of experiment {experiment_id} composed alone ({acct}, delta {delta:g})"
            if delta is not None else f"no entries for experiment {experiment_id}")
    if others:
        note += f"; the lifetime figure also composes {others} charge(s) of other runs"
    return ExperimentShare(experiment_id, len(charges), refusals, epsilon, acct, delta, note)


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
    cache = cache or EpsilonCache()
    return [account_owner(given, cache) for given in inputs]


def settings_key(given: OwnerInput) -> tuple:
    """The distinct (accountant, noise, rate) an owner's charges need: owners sharing one share the work."""
    return tuple(sorted({(e.accountant, e.event.noise_multiplier, e.event.sample_rate) for e in given.entries
                         if e.is_charge and isinstance(e.event, PoissonSubsampledGaussian)}))


__all__ = ["MAX_ROUNDS_LEFT", "EpsilonCache", "OwnerAccounting", "OwnerInput", "account_owner", "account_owners",
           "budget_status", "event_params", "iso_time", "normalise_purpose", "rounds_left", "settings_key"]
