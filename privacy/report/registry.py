"""An owner's "epsilon registry" entry, after Dwork, Kohli and Mulligan (2019).

C. Dwork, N. Kohli and D. Mulligan, "Differential Privacy in Practice: Expose Your
Epsilons!", Journal of Privacy and Confidentiality 9(2), 2019, propose that whoever
deploys differential privacy publish, in a registry, what a reader needs to judge the
guarantee: the epsilon (and delta), the privacy unit the guarantee protects, what was
computed and released, the mechanism and its parameters, how the releases compose
(the accountant) and over which period the budget runs, how often it is refreshed,
who set it and why, and what happens when it is spent.

Each item here is ``{"field", "label", "value", "evidence"}``: the ledger supplies
what it can prove, the owner's processing record what only the owner can declare.
"""

from __future__ import annotations

from typing import Any

from privfl.privacy.report import evidence as ev
from privfl.privacy.report.model import HistorySection, OwnerStatement, unit_views
from privfl.privacy.report.processing_record import ProcessingRecord
from privfl.privacy.report.words import epsilon_sentence

PRIVACY_UNITS = {
    "record": "one record of the owner's data set: what the released updates can reveal about whether any "
              "single record was used is bounded by the record-level epsilon and delta (add-or-remove-one "
              "neighbouring data sets)",
    "owner": "the owner as a whole: what the released model can reveal about whether the institution took "
             "part at all, and about anything it contributed, is bounded by the owner-level epsilon and delta (DP-FedAvg at the coordinator, over whole updates)",
    "unspecified": "not stated in the ledger",
}
MECHANISMS = {
    "poisson_subsampled_gaussian": "DP-SGD: each step samples every record with probability q (Poisson sampling), "
                                   "clips each record's gradient to L2 norm C and adds Gaussian noise of standard "
                                   "deviation sigma x C to their sum",
    "gaussian": "Gaussian mechanism over contributions clipped to norm C, noise sigma x C, no subsampling",
    "sampled_without_replacement_gaussian": "DP-FedAvg with fixed-size sampling: each round draws m of the N owners "
                                            "uniformly without replacement, clips each drawn owner's update to L2 "
                                            "norm C and adds Gaussian noise of standard deviation sigma x C to their "
                                            "sum (replace-one neighbouring)",
    "non_private_release": "a release without differential privacy (the owner's policy allowed training without "
                           "DP): no clipping, no noise; epsilon is infinite from then on",
}
ACCOUNTANTS = {
    "rdp": "Renyi differential privacy (Mironov 2017), Opacus's implementation: an upper bound",
    "prv": "privacy random variables (Gopi, Lee and Wutschitz 2021), Opacus's implementation",
    "pld": "privacy loss distributions (Google's dp-accounting): the tightest of the three",
}


def _figure(value: Any) -> str:
    return "n/a" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))


def _item(field: str, label: str, value: Any, evidence: str) -> dict[str, Any]:
    return {"field": field, "label": label, "value": value, "evidence": evidence}


def epsilon_registry(owner: OwnerStatement, record: ProcessingRecord | None,
                     history: HistorySection | None) -> list[dict[str, Any]]:
    ledger = owner.integrity.evidence  # ledger-verified, or ledger-unverified when it failed
    derived = ev.RECOMPUTED if owner.integrity.intact else ev.LEDGER_UNVERIFIED
    spent_evidence = derived if owner.epsilon_spent_basis == ev.RECOMPUTED else (
        ev.OWNER_SIGNED_PARTIAL if owner.epsilon_spent_basis == ev.OWNER_SIGNED_PARTIAL else derived)

    def declared(section: str, key: str) -> tuple[Any, str]:
        value = record.get(section, key) if record else None
        return (value, ev.OWNER_DECLARED) if value not in (None, "", []) else (None, ev.NOT_DECLARED)

    units = owner.privacy_units
    settings = [
        {k: getattr(s, k) for k in ("mechanism", "noise_multiplier", "sample_rate", "clipping_norm", "releases",
                                    "steps_total", "steps_per_release")}
        for s in owner.mechanism_settings]
    released = ("one model update per round in which the owner trained, sent to the federation server "
                "(its sha256 is bound into the charge); the server releases the aggregate of the updates")
    if "owner" in owner.privacy_units:
        released += ("; in owner-level (DP-FedAvg) rounds the coordinator releases the noised sum of the drawn "
                     "owners' clipped updates, and every owner that could have been drawn is charged")
    if history and history.config.get("model"):
        released += f" (model: {history.config['model']}, data set: {history.config.get('dataset', '?')})"
    set_by, set_by_ev = declared("privacy_budget", "set_by")
    rationale, rationale_ev = declared("privacy_budget", "rationale")
    period, period_ev = declared("privacy_budget", "period")
    if period is None:
        period, period_ev = ("lifetime of the owner's data: the ledger composes every charge of every run and "
                             "the budget is never refreshed", ev.PRIVFL_DESIGN)
    exhausted, exhausted_ev = declared("privacy_budget", "when_exhausted")
    if exhausted is None:
        exhausted, exhausted_ev = ("the owner's client refuses any release that would cross the budget and "
                                   "records the refusal", ev.PRIVFL_DESIGN)
    dataset, dataset_ev = declared("dataset", "name")
    records, records_ev = declared("dataset", "records")
    decided, decided_ev = declared("privacy_budget", "decided_on")
    views = unit_views(owner)
    per_unit = [f"{v.label}: epsilon {_figure(v.epsilon_spent)} of a budget of {_figure(v.epsilon_budget)} at delta "
                f"{_figure(v.delta)} ({v.accountant}); "
                + ", ".join(f"{a.accountant.upper()} {_figure(a.epsilon) if a.epsilon is not None else a.note}"
                            + (" (enforced)" if a.enforced else "") for a in v.epsilon_by_accountant)
                for v in views]
    composed = ("every charge of one privacy unit in the owner's ledger, across all runs (sequential composition of "
                "that unit's releases); record-level and owner-level charges are composed apart, each against its "
                "own budget" if len(views) > 1 else
                "every charge in the owner's ledger, across all runs (sequential composition of all releases)")
    implementation = ("privfl: DP-SGD by Opacus at the owner; privacy ledger of Ed25519-signed, sha256-chained "
                      "entries (see the report's generator versions)")
    if any(v.privacy_unit == "owner" for v in views):
        implementation = implementation.replace("at the owner;", "at the owner; DP-FedAvg (clipped, noised updates) "
                                                                 "at the coordinator;")
    return [
        _item("epsilon", "Epsilon spent (lifetime, cumulative)", owner.epsilon_spent, spent_evidence),
        _item("delta", "Delta", owner.delta, ledger),
        _item("epsilon_budget", "Epsilon budget", owner.epsilon_budget, ledger),
        _item("epsilon_remaining", "Epsilon left", owner.epsilon_remaining, spent_evidence),
        _item("epsilon_meaning", "What this epsilon means",
              epsilon_sentence(owner.epsilon_spent, owner.delta, owner.privacy_unit if owner.privacy_unit in
                               ("record", "owner") else "record"), spent_evidence),
        _item("epsilon_per_unit", "Epsilon per privacy unit (each against its own budget; PLD and RDP)", per_unit,
              spent_evidence),
        _item("privacy_unit", "Privacy unit (granularity)",
              "; ".join(f"{u}: {PRIVACY_UNITS.get(u, u)}" for u in units), ledger),
        _item("released", "What was computed and released", released, ev.PRIVFL_DESIGN),
        _item("releases", "Number of releases (charges) / refusals",
              f"{owner.charges} / {owner.refusals}", ledger),
        _item("mechanism", "Mechanism",
              "; ".join(MECHANISMS.get(m, m) for m in owner.mechanisms) or "none", ledger),
        _item("mechanism_parameters", "Mechanism parameters", settings, ledger),
        _item("accountant", "Accountant (composition method)",
              "; ".join(f"{a}: {ACCOUNTANTS.get(a, a)}" for a in owner.accountants) or "none", ledger),
        _item("composition", "What is composed", composed,
              derived if owner.source.chain_complete else ev.OWNER_SIGNED_PARTIAL),
        _item("time_period", "Releases between", f"{owner.first_entry} and {owner.last_entry}", ledger),
        _item("budget_period", "Period the budget covers; refresh", period, period_ev),
        _item("budget_set_by", "Who set the budget", set_by, set_by_ev),
        _item("budget_decided_on", "When the budget was decided", decided, decided_ev),
        _item("budget_rationale", "Why this epsilon", rationale, rationale_ev),
        _item("when_exhausted", "When the budget is spent", exhausted, exhausted_ev),
        _item("purpose", "Purpose (as signed in the ledger)", owner.purposes, ledger),
        _item("dataset", "Data set", dataset, dataset_ev),
        _item("records", "Records in the data set", records, records_ev),
        _item("implementation", "Implementation", implementation, ev.PRIVFL_DESIGN),
    ]
