"""The report as one typed model: every format (JSON, HTML, PDF, CSV) renders this.

Why a model and not a dict: the HTML, PDF and CSV writers, the plots and the tests
all read the same facts, and a typo in a dict key fails silently (a blank cell)
where an attribute fails loudly.  The JSON document is *derived* from the model
(:meth:`Report.document`), field names unchanged, so ``docs/report-schema.md`` and
``report-schema.json`` describe both.

Layout (one class per idea):

- :class:`Report` -- the whole report: :class:`Status` (verdict, headline, problems),
  :class:`Summary`, :class:`LedgerIntegrity` per file, :class:`OwnerStatement` per
  data owner, :class:`HistorySection`, the GDPR sections, :class:`PlainWords`;
- :class:`OwnerStatement` -- one owner: what it spent (lifetime and this
  experiment), what is left, what is next (:class:`Outlook`), whether its purposes
  were declared (:class:`PurposeCheck`), its federated evaluation, and every entry
  (:class:`Release`) with the numbers each figure is computed from;
- :class:`UnitAccount` -- one privacy unit of one owner (DESIGN principle 4): an
  owner's ledger may hold record-level charges (DP-SGD at the owner) and owner-level
  charges (DP-FedAvg at the coordinator); each unit is a different guarantee with its
  own budget, so each is composed, budgeted and judged on its own, and its spent
  epsilon is shown under PLD and RDP side by side (:class:`AccountantEpsilon`).
  ``OwnerStatement.units`` holds one block per unit present; the statement's own
  budget fields describe its *primary* unit (record-level when present, else
  owner-level), as they did before owners could hold two units.

Epsilons are floats here (``math.inf`` for a release without noise); the document
writes an infinite epsilon as the string ``"inf"`` because JSON has no infinity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

SCHEMA_VERSION = "1.2"
REPORT_TYPE = "privfl.privacy-budget-report"
NEAR_BUDGET_FRACTION = 0.8  # an owner that has used this share of its budget or more is flagged
RECORD_UNIT = "record"
OWNER_UNIT = "owner"
PRIVACY_UNITS = (RECORD_UNIT, OWNER_UNIT)  # the order units are shown in; the first present is the primary one
UNIT_LABELS = {RECORD_UNIT: "record-level", OWNER_UNIT: "owner-level"}
COMPARED_ACCOUNTANTS = ("pld", "rdp")  # every unit's spent epsilon is shown under both, side by side


def unit_label(unit: str) -> str:
    return UNIT_LABELS.get(unit, unit)


# --------------------------------------------------------------------------- entries


@dataclass
class EventParams:
    """A DP event as stored: the mechanism and its parameters (never an epsilon).

    Fixed-size sampling (``sampled_without_replacement_gaussian``) also has
    ``sample_size`` (m) and ``population_size`` (N), and ``sample_rate`` = m / N; the
    document writes those two fields only for that mechanism (the other mechanisms
    have no such parameter).
    """

    type: str
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    steps: int | None = None
    sample_size: int | None = None
    population_size: int | None = None


@dataclass
class Release:
    """One ledger entry (a charge, or a refusal) with the epsilons recomputed from it."""

    sequence: int
    kind: str  # "charge" | "refusal"
    run_id: str
    round: int
    timestamp: str
    timestamp_unix_nanos: int
    mechanism: str
    event: EventParams
    clipping_norm: float
    privacy_unit: str
    delta: float
    accountant: str
    epsilon_budget: float
    purpose: str
    refusal_reason: str
    epsilon_release: float | None  # this release alone; None for refusals
    epsilon_increment: float | None  # change of the cumulative epsilon by this charge
    epsilon_cumulative: float | None  # every charge so far, composed (recomputed)
    epsilon_cumulative_stated: float  # what the signed entry says
    epsilon_stated_matches: bool | None
    epsilon_remaining: float | None
    purpose_declared: bool | None  # None: no declared purposes to compare with
    update_hash: str
    entry_hash: str
    previous_hash: str
    key_fingerprint: str
    signature: str
    entry_base64: str

    @property
    def is_charge(self) -> bool:
        return self.kind == "charge"


# --------------------------------------------------------------------------- one owner


@dataclass
class Refusal:
    run_id: str
    round: int
    timestamp: str
    reason: str
    epsilon_spent_before: float | None  # of the refusal's privacy unit
    requested_event: EventParams
    privacy_unit: str = RECORD_UNIT


@dataclass
class RunSpend:
    """What one run (one run id in the ledger) cost the owner, on the lifetime curve."""

    run_id: str
    charges: int
    refusals: int
    first_round: int
    last_round: int
    first_entry: str
    last_entry: str
    epsilon_before: float | None  # the lifetime epsilon of the run's privacy unit before the run
    epsilon_after: float | None
    purposes: list[str]
    privacy_units: list[str] = field(default_factory=list)


@dataclass
class MechanismSetting:
    mechanism: str
    noise_multiplier: float | None
    sample_rate: float | None
    clipping_norm: float
    privacy_unit: str
    releases: int
    steps_per_release: list[int]
    steps_total: int
    sample_size: int | None = None  # fixed-size sampling: m of N
    population_size: int | None = None


@dataclass
class Source:
    ledger: str
    ledger_kind: str
    chain_complete: bool
    first_sequence: int | None
    last_sequence: int | None


@dataclass
class OwnerIntegrity:
    intact: bool
    verdict: str
    problem: str | None
    key_fingerprint: str
    key_independently_supplied: bool
    head: dict[str, Any] | None  # {"sequence", "hash"}
    checked_against: list[str]
    evidence: str


@dataclass
class Outlook:
    """What is next: further releases identical to the latest charge that still fit the budget.

    ``rounds_left`` releases of ``next_release`` fit (``epsilon_after`` is the owner's
    lifetime epsilon after them) and one more would not (``epsilon_after_one_more``
    exceeds the budget), each figure composed by the owner's accountant with every
    charge so far.  ``at_least``: the search stopped at its cap.
    """

    rounds_left: int | None
    at_least: bool
    next_release: EventParams | None
    accountant: str
    delta: float | None
    epsilon_budget: float | None
    epsilon_per_release: float | None  # the next release alone
    epsilon_after: float | None
    epsilon_after_one_more: float | None
    evidence: str
    note: str
    privacy_unit: str = RECORD_UNIT


@dataclass
class ExperimentShare:
    """The charges of this experiment of one privacy unit, composed alone.

    Record-level: the entries whose run_id is the experiment id; owner-level: those whose
    run_id is the experiment id + ``/owner`` (the coordinator's DP-FedAvg charges).
    """

    experiment_id: str
    charges: int
    refusals: int
    epsilon: float | None
    accountant: str
    delta: float | None
    note: str
    run_id: str = ""
    privacy_unit: str = RECORD_UNIT


@dataclass
class PurposeMismatch:
    sequence: int
    kind: str
    run_id: str
    round: int
    purpose: str


@dataclass
class PurposeCheck:
    """Purposes signed in the ledger against those the owner's processing record declares."""

    status: str  # "declared" (every entry's purpose declared) | "mismatch" | "not-checked"
    declared: list[str] | None
    record: str | None
    undeclared: list[PurposeMismatch]
    undeclared_purposes: list[str]


@dataclass
class EvaluationPoint:
    round: int
    loss: float | None
    accuracy: float | None
    num_examples: int | None


@dataclass
class OwnerEvaluation:
    """The owner's federated evaluation (from the run history): latest round and every round."""

    latest: EvaluationPoint | None
    rounds: list[EvaluationPoint]


@dataclass
class AccountantEpsilon:
    """A unit's spent epsilon under one accountant (PLD, RDP, ...): every charge of the unit composed."""

    accountant: str
    epsilon: float | None  # None: this accountant does not compose these events (see note)
    enforced: bool  # the accountant the owner's entries name: the one its budget is enforced with
    supported: bool
    note: str
    # (accountant, merged events, delta) while the figure is composed elsewhere (see accounting.settle_deferred)
    _key: tuple | None = field(default=None, repr=False, compare=False)


@dataclass
class UnitAccount:
    """One privacy unit of one owner: its charges composed alone, against that unit's own budget.

    ``privacy_unit`` is ``record`` (DP-SGD at the owner: one record of its data) or
    ``owner`` (DP-FedAvg at the coordinator: whether the owner took part at all and
    everything it contributed).  The budget is the one the unit's entries state; the
    epsilons are recomputed from the unit's DP events alone (``ledger.owner`` states
    each entry's cumulative epsilon over its own unit's charges the same way).
    """

    privacy_unit: str
    label: str = ""
    protects: str = ""
    mechanisms: list[str] = field(default_factory=list)
    mechanism_settings: list[MechanismSetting] = field(default_factory=list)
    accountant: str = ""
    accountants: list[str] = field(default_factory=list)
    delta: float | None = None
    epsilon_spent: float | None = None
    epsilon_spent_basis: str = ""
    epsilon_spent_stated: float | None = None
    epsilon_spent_recomputed_lower_bound: float | None = None
    epsilon_by_accountant: list[AccountantEpsilon] = field(default_factory=list)
    epsilon_budget: float | None = None
    epsilon_budgets_stated: list[float] = field(default_factory=list)
    epsilon_remaining: float | None = None
    budget_used_fraction: float | None = None
    over_budget: bool = False
    budget_status: str = "unknown"
    odds_bound: float | None = None
    strength: str | None = None
    charges: int = 0
    refusals: int = 0
    first_entry: str | None = None
    last_entry: str | None = None
    stated_epsilons_matching: int = 0
    stated_epsilons_not_matching: list[int] = field(default_factory=list)
    unsupported_event: str | None = None
    outlook: Outlook | None = None
    experiment: ExperimentShare | None = None

    @property
    def rounds_left(self) -> int | None:
        return self.outlook.rounds_left if self.outlook else None

    def epsilon_under(self, accountant: str) -> AccountantEpsilon | None:
        return next((a for a in self.epsilon_by_accountant if a.accountant == accountant), None)


# The statement's own fields that describe its primary unit (the rest of its fields are about all its entries).
PRIMARY_UNIT_FIELDS = (
    "accountant", "delta", "epsilon_spent", "epsilon_spent_basis", "epsilon_spent_stated",
    "epsilon_spent_recomputed_lower_bound", "epsilon_budget", "epsilon_budgets_stated", "epsilon_remaining",
    "budget_used_fraction", "over_budget", "budget_status", "odds_bound", "strength", "unsupported_event", "outlook",
    "experiment",
)


@dataclass
class OwnerStatement:
    """One data owner: spent, left, what is next, integrity, and every entry."""

    owner_id: str
    source: Source
    integrity: OwnerIntegrity | None
    privacy_unit: str
    privacy_units: list[str]
    mechanisms: list[str]
    mechanism_settings: list[MechanismSetting]
    accountant: str
    accountants: list[str]
    delta: float | None
    epsilon_spent: float | None  # lifetime: every charge of every run
    epsilon_spent_basis: str
    epsilon_spent_stated: float | None
    epsilon_spent_recomputed_lower_bound: float | None
    epsilon_budget: float | None
    epsilon_budgets_stated: list[float]
    epsilon_remaining: float | None
    budget_used_fraction: float | None
    over_budget: bool
    budget_status: str  # "over" | "near" | "within" | "unknown"
    odds_bound: float | None  # e^epsilon_spent
    strength: str | None  # tier of epsilon_spent: "strong" | "reasonable" | "weak"
    charges: int
    refusals: int
    refused_releases: list[Refusal]
    purposes: list[str]
    first_entry: str | None
    last_entry: str | None
    runs: list[RunSpend]
    stated_epsilons_matching: int
    stated_epsilons_not_matching: list[int]
    unsupported_event: str | None
    outlook: Outlook | None
    experiment: ExperimentShare | None
    purpose_check: PurposeCheck
    federated_evaluation: OwnerEvaluation | None
    entries: list[Release]
    processing_record: str | None = None
    epsilon_registry: list[dict[str, Any]] = field(default_factory=list)
    units: list[UnitAccount] = field(default_factory=list)  # one per privacy unit present, record-level first
    budget_used_fraction_max: float | None = None  # the highest share of a budget used, over every unit
    budget_used_fraction_max_unit: str | None = None  # ... and its unit
    budget_status_all_units: str = "unknown"  # the worst budget status over every unit

    @property
    def intact(self) -> bool:
        return bool(self.integrity and self.integrity.intact)

    @property
    def charge_entries(self) -> list[Release]:
        return [r for r in self.entries if r.kind == "charge"]

    def unit(self, privacy_unit: str) -> UnitAccount:
        for block in self.units:
            if block.privacy_unit == privacy_unit:
                return block
        raise KeyError(privacy_unit)

    def unit_views(self) -> list[UnitAccount]:
        """Every unit's block; the primary unit's budget figures as the statement itself states them."""
        return unit_views(self)


_STATUS_RANK = {"over": 0, "near": 1, "within": 2, "unknown": 3}


def unit_views(owner: Any) -> list[UnitAccount]:
    """An owner's units as blocks, the primary one (``owner.privacy_unit``) read from the statement's own fields.

    The statement's budget fields are the primary unit's home in the model (what 1.1 readers
    read); reading them here means a statement edited as a whole (``dataclasses.replace``)
    is judged by what it says.  Also accepts any object with those fields and no ``units``.
    """
    primary = getattr(owner, "privacy_unit", RECORD_UNIT)
    blocks = list(getattr(owner, "units", None) or ())
    shared = {name: getattr(owner, name, None) for name in PRIMARY_UNIT_FIELDS}
    shared["over_budget"] = bool(shared["over_budget"])
    shared["budget_status"] = shared["budget_status"] or "unknown"
    shared["epsilon_budgets_stated"] = shared["epsilon_budgets_stated"] or []
    shared["epsilon_spent_basis"] = shared["epsilon_spent_basis"] or ""
    shared["accountant"] = shared["accountant"] or ""
    if not blocks:
        return [UnitAccount(privacy_unit=primary, label=unit_label(primary), **shared)]
    return [replace(block, **shared) if block.privacy_unit == primary else block for block in blocks]


def most_used(owner: Any) -> UnitAccount | None:
    """The owner's unit with the highest share of its budget used (None when no unit has a figure)."""
    views = [v for v in unit_views(owner) if v.budget_used_fraction is not None]
    return max(views, key=lambda v: v.budget_used_fraction) if views else None


def worst_status(owner: Any) -> str:
    views = unit_views(owner)
    return min((v.budget_status for v in views), key=lambda s: _STATUS_RANK.get(s, 3), default="unknown")


# --------------------------------------------------------------------------- the files


@dataclass
class LedgerIntegrity:
    """One ledger file's verification verdict."""

    path: str
    ledger_kind: str
    owner_id: str | None
    owners: list[str]
    entries: int
    intact: bool
    verdict: str
    problem: str | None
    unreadable_entries: list[str]
    entries_checked: int
    epsilons_checked: int
    epsilon_problems: list[str]
    keys_independently_supplied: bool
    owners_with_supplied_keys: list[str]
    key_fingerprints: dict[str, str]
    heads: dict[str, dict[str, Any]]
    notes: list[str]


# --------------------------------------------------------------------------- status, summary


@dataclass
class BudgetAlert:
    """An owner over one of its budgets or near it (from NEAR_BUDGET_FRACTION of it used), per privacy unit."""

    owner_id: str
    level: str  # "over" | "near"
    budget_used_fraction: float
    epsilon_spent: float | None
    epsilon_budget: float | None
    rounds_left: int | None
    privacy_unit: str = RECORD_UNIT


@dataclass
class Status:
    intact: bool  # every ledger verified
    ok: bool  # intact and no problem (what --strict requires)
    verdict: str  # "INTACT" | "NOT INTACT"
    headline: str
    problems: list[str]
    warnings: list[str]
    budget_alerts: list[BudgetAlert]  # highest share of budget used first
    near_budget_fraction: float
    cross_checks: list[str]  # problems an external cross-check found (also in problems)
    owners_not_intact: list[str]


@dataclass
class Summary:
    owners: int
    ledger_files: int
    entries: int
    charges: int
    refusals: int
    runs: list[str]
    privacy_units: list[str]
    mechanisms: list[str]
    accountants: list[str]
    deltas: list[float]
    epsilon_spent_max: float | None
    epsilon_spent_max_owner: str | None
    epsilon_spent_min: float | None
    epsilon_spent_min_owner: str | None
    owners_with_refusals: list[str]
    owners_over_budget: list[str]
    owners_near_budget: list[str]
    owners_by_budget_used: list[str]  # highest share first; owners without a figure last
    owners_with_undeclared_purposes: list[str]
    experiment_id: str | None
    first_entry: str | None
    last_entry: str | None
    final_test_accuracy: float | None
    in_words: str = ""
    epsilon_spent_unit: str | None = None  # the privacy unit epsilon_spent_max/min describe
    units: list[UnitSummary] = field(default_factory=list)


@dataclass
class UnitSummary:
    """The owners' figures of one privacy unit, across the report."""

    privacy_unit: str
    label: str
    protects: str
    owners: int
    charges: int
    refusals: int
    accountants: list[str]
    deltas: list[float]
    epsilon_budgets: list[float]
    epsilon_spent_max: float | None
    epsilon_spent_max_owner: str | None
    epsilon_spent_min: float | None
    epsilon_spent_min_owner: str | None
    owners_over_budget: list[str]
    owners_near_budget: list[str]


# --------------------------------------------------------------------------- history


@dataclass
class HistoryRound:
    round: int
    test_accuracy: float | None
    test_loss: float | None
    participants: int
    refused: int
    epsilon_max: float | None
    epsilon_median: float | None
    epsilon_min: float | None


@dataclass
class EvaluationRound:
    round: int
    loss: float | None
    accuracy: float | None
    num_examples: int | None
    owners_evaluated: int
    accuracy_min: float | None
    accuracy_max: float | None


@dataclass
class FederatedEvaluation:
    """Evaluation on the owners' own data, per round: a release the DP-SGD epsilon does not cover."""

    evidence: str
    note: str
    latest_round: int | None
    rounds: list[EvaluationRound]


@dataclass
class HistorySection:
    source: str
    evidence: str
    experiment: str | None
    experiment_id: str | None
    status: str | None
    matched_run_id: str | None
    note: str
    final_test_accuracy: float | None
    config: dict[str, Any]
    rounds: list[HistoryRound]
    federated_evaluation: FederatedEvaluation | None


# --------------------------------------------------------------------------- words, scope, signature


@dataclass
class StrengthTier:
    name: str
    up_to: float | None  # inclusive upper bound of epsilon; None: no bound
    meaning: str


@dataclass
class PlainWords:
    """What epsilon means, for a reader who is not a DP specialist."""

    epsilon: str
    odds_examples: list[dict[str, Any]]
    tiers: list[StrengthTier]
    tiers_source: str
    privacy_unit: str
    evaluation: str
    privacy_units: list[UnitMeaning] = field(default_factory=list)
    accountants: str = ""


@dataclass
class UnitMeaning:
    privacy_unit: str
    label: str
    protects: str


@dataclass
class Scope:
    """Whose report this is: every owner in the ledgers, or one owner's statement."""

    owner_id: str | None
    owners_in_ledgers: int
    note: str


@dataclass
class ContentHash:
    algorithm: str
    canonicalization: str
    value: str


@dataclass
class ReportSignature:
    algorithm: str
    key_fingerprint: str
    public_key: str  # base64 of the raw 32-byte Ed25519 public key
    signed: str  # what the signature covers
    value: str  # base64 signature


# --------------------------------------------------------------------------- what a DPO decides from


@dataclass
class DecisionRow:
    """One owner and privacy unit in the decision box: the figures a decision needs, and the action they imply.

    ``level``: ``red`` (the owner's ledger is not intact, or missing), ``amber`` (near or over
    the budget, a weak or infinite guarantee, a figure that cannot be computed), ``green``.
    ``attacker_certainty``: e^eps / (1 + e^eps), the most an attacker who was 50/50 about
    one protected unit can become sure (except with probability delta).
    """

    owner_id: str
    privacy_unit: str
    label: str
    level: str
    verdict: str  # short: "stop" | "do not rely" | "approve no more" | "approve" | "check"
    action: str  # the action in plain words
    epsilon_spent: float | None
    epsilon_budget: float | None
    epsilon_remaining: float | None
    rounds_left: int | None
    rounds_left_at_least: bool
    strength: str | None
    purposes: list[str]
    requester: str
    requester_key: str
    delta: float | None
    attacker_certainty: float | None
    records: int | None  # n, as the owner's processing record declares it (None: not declared)
    delta_times_n: float | None
    delta_warning: str | None


@dataclass
class Decision:
    """The decision box at the top of every format: the banner's level and, per owner and unit, the action."""

    level: str  # "red" | "amber" | "green": the worst row, and red for anything not intact
    banner: str  # one line for the banner
    reasons: list[str]  # why the level is what it is (each a sentence)
    rows: list[DecisionRow]
    tier_counts: dict[str, int]  # owner x unit figures per strength tier (record- and owner-level alike)
    attacker: str  # epsilon and delta in an attacker's terms, for the report as a whole
    requester: str
    requester_key: str


@dataclass
class ReleaseChannel:
    """One way information leaves an owner, and how it is covered (DESIGN principle 6)."""

    channel: str
    released: str  # "yes" | "no" | "when asked" | ...
    coverage: str  # "DP, charged" | "post-processing" | "public by policy" | "not released" | "no DP" | "not covered"
    detail: str
    source: str  # where the report read it from: the ledgers, the run config, privfl's design


@dataclass
class EmpiricalAuditUnit:
    privacy_unit: str
    claimed_epsilon: float | None
    lower_bound: float | None
    confidence: float | None
    exceeds_claim: bool
    meaning: str
    estimate: float | None = None  # an empirical estimate (owner-level one-shot fit): not a bound


@dataclass
class EmpiricalAudit:
    """``privfl audit``'s result (``<run-dir>/audit/result.json``) beside the claims: a lower bound, not a guarantee."""

    source: str
    experiment: str | None
    units: list[EmpiricalAuditUnit]
    note: str


# --------------------------------------------------------------------------- the report


@dataclass
class Report:
    """A built report.  ``document`` is its JSON form (``docs/report-schema.md``)."""

    title: str
    generated_at: str
    generator: dict[str, Any]
    scope: Scope
    status: Status
    summary: Summary
    plain_words: PlainWords
    ledgers: list[LedgerIntegrity]
    owners: list[OwnerStatement]
    history: HistorySection | None
    processing_records: list[dict[str, Any]]
    gdpr: dict[str, Any]
    limitations: list[str]
    evidence_levels: dict[str, str]
    recompute: dict[str, Any]
    signature: ReportSignature | None = None
    decision: Decision | None = None
    release_channels: list[ReleaseChannel] = field(default_factory=list)
    dpia: dict[str, Any] = field(default_factory=dict)
    empirical_audit: EmpiricalAudit | None = None
    _document: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    _context: Any = field(default=None, repr=False, compare=False)  # what narrowing to one owner needs

    # -- the verdict, as callers use it
    @property
    def intact(self) -> bool:
        """Every ledger verified (signatures, hash chain, stated epsilons)."""
        return self.status.intact

    @property
    def ok(self) -> bool:
        """Intact, and no problem (over budget, undeclared purpose, cross-check, figure not derivable)."""
        return self.status.ok

    @property
    def problems(self) -> list[str]:
        return list(self.status.problems)

    @property
    def warnings(self) -> list[str]:
        return list(self.status.warnings)

    @property
    def fails_by_default(self) -> bool:
        """What makes ``privfl report`` exit 1 even without --strict: a ledger not intact or a cross-check problem."""
        return not self.status.intact or bool(self.status.cross_checks)

    def owner(self, owner_id: str) -> OwnerStatement:
        for owner in self.owners:
            if owner.owner_id == owner_id:
                return owner
        raise KeyError(owner_id)

    def owners_by_budget_used(self) -> list[OwnerStatement]:
        """Highest share of the budget used first; owners without a figure last."""
        return sorted(self.owners, key=_budget_order)

    # -- the JSON document
    @property
    def document(self) -> dict[str, Any]:
        """The JSON document (plain data), with its content hash and, if signed, its signature."""
        if self._document is None:
            from privfl.privacy.report.signing import content_hash

            body = self.document_body()
            body["content_hash"] = to_plain(content_hash(body))
            body["signature"] = to_plain(self.signature)
            self._document = body
        return self._document

    def document_body(self) -> dict[str, Any]:
        """The document without ``content_hash`` and ``signature`` (what the hash covers)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "report_type": REPORT_TYPE,
            **{f.name: to_plain(getattr(self, f.name)) for f in fields(self)
               if f.name != "signature" and not f.name.startswith("_")},
        }

    @property
    def content_hash(self) -> str:
        return self.document["content_hash"]["value"]

    def changed(self) -> None:
        """Forget the cached document after the model was changed."""
        self._document = None

    def sign(self, private_key) -> ReportSignature:
        """Sign the document's content hash with an Ed25519 private key (``privfl.privacy.keys``)."""
        from privfl.privacy.report.signing import sign_content_hash

        self.signature = sign_content_hash(self.document["content_hash"]["value"], private_key)
        self.changed()
        return self.signature

    def for_owner(self, owner_id: str) -> Report:
        """This report narrowed to one owner's statement (see :func:`privfl.privacy.report.build.owner_statement`)."""
        from privfl.privacy.report.build import narrow_to_owner

        return narrow_to_owner(self, owner_id)

    def copy(self, **changes: Any) -> Report:
        return replace(self, _document=None, **changes)


def _budget_order(owner: OwnerStatement) -> tuple:
    """Highest share of any of the owner's budgets (every privacy unit) first."""
    top = most_used(owner)
    used = top.budget_used_fraction if top else None
    return (used is None, -(used if used is not None else 0.0), owner.owner_id)


# --------------------------------------------------------------------------- to plain data

_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def to_plain(value: Any) -> Any:
    """Dataclasses to dicts (field order kept), non-finite floats to "inf"/"-inf"/None."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        if math.isnan(value):
            return None
        return "inf" if value > 0 else "-inf"
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if type(value) is Release:
        return _plain_release(value)
    if type(value) is EventParams:
        return _plain_event(value)
    if is_dataclass(value):
        names = _FIELD_NAMES.get(type(value))
        if names is None:
            names = _FIELD_NAMES[type(value)] = tuple(f.name for f in fields(value) if not f.name.startswith("_"))
        return {name: to_plain(getattr(value, name)) for name in names}
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


_RELEASE_FIELDS = tuple(f.name for f in fields(Release))


def _plain_release(release: Release) -> dict[str, Any]:
    """The hot path of to_plain (one per ledger entry): only ``event`` is nested."""
    out = {}
    for name in _RELEASE_FIELDS:
        value = getattr(release, name)
        if type(value) is float and not math.isfinite(value):
            value = None if math.isnan(value) else ("inf" if value > 0 else "-inf")
        elif name == "event":
            value = _plain_event(value)
        out[name] = value
    return out


def _plain_event(event: EventParams | None) -> dict[str, Any] | None:
    """An event's parameters; ``sample_size`` and ``population_size`` only for fixed-size sampling."""
    if event is None:
        return None
    out = {"type": event.type, "noise_multiplier": event.noise_multiplier, "sample_rate": event.sample_rate,
           "steps": event.steps}
    if event.sample_size is not None or event.population_size is not None:
        out["sample_size"] = event.sample_size
        out["population_size"] = event.population_size
    return out


__all__ = [
    "COMPARED_ACCOUNTANTS", "NEAR_BUDGET_FRACTION", "OWNER_UNIT", "PRIMARY_UNIT_FIELDS", "PRIVACY_UNITS",
    "RECORD_UNIT", "REPORT_TYPE", "Decision", "DecisionRow", "EmpiricalAudit", "EmpiricalAuditUnit",
    "ReleaseChannel", "SCHEMA_VERSION", "UNIT_LABELS", "AccountantEpsilon", "BudgetAlert", "ContentHash",
    "EvaluationPoint", "UnitAccount", "UnitMeaning", "UnitSummary", "most_used", "unit_label", "unit_views",
    "worst_status",
    "EvaluationRound", "EventParams", "ExperimentShare", "FederatedEvaluation", "HistoryRound", "HistorySection",
    "LedgerIntegrity", "MechanismSetting", "Outlook", "OwnerEvaluation", "OwnerIntegrity", "OwnerStatement",
    "PlainWords", "PurposeCheck", "PurposeMismatch", "Refusal", "Release", "Report", "ReportSignature", "RunSpend",
    "Scope", "Source", "Status", "StrengthTier", "Summary", "to_plain",
]
