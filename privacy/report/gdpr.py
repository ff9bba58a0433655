"""Map a run to the GDPR: the Art. 30 record of processing, and the measures of Art. 25 and 32.

Art. 30 items come from the owner's processing record (owner-declared); the ledger
adds only what it proves (the purpose each entry was signed with).  The Art. 25 and
Art. 32 measures are stated with their evidence: what the verified ledger shows, what
was checked when the report was generated, and what privfl does by design but the
ledger cannot show (for example that training data never left the owner).

Measure statuses: ``met``, ``partly met``, ``not met``, ``failed`` (verification
failed), ``not evidenced`` (true by design or configuration, not shown by the
ledger), ``limitation`` (a known weakness, disclosed), ``not checked``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from privfl.privacy.budget import fits_budget
from privfl.privacy.report import evidence as ev
from privfl.privacy.report.model import HistorySection, LedgerIntegrity, OwnerStatement, Release
from privfl.privacy.report.processing_record import ProcessingRecord, records_for

ARTICLE_30_FIELDS = (
    ("controller", "name", "Art. 30(1)(a)", "Controller"),
    ("controller", "address", "Art. 30(1)(a)", "Controller's address"),
    ("controller", "contact", "Art. 30(1)(a)", "Controller's contact"),
    ("controller", "representative", "Art. 30(1)(a), Art. 27", "Representative in the EU"),
    ("controller", "joint_controllers", "Art. 30(1)(a), Art. 26", "Joint controllers"),
    ("data_protection_officer", "name", "Art. 30(1)(a), Art. 37", "Data protection officer"),
    ("data_protection_officer", "contact", "Art. 30(1)(a), Art. 37(7)", "DPO's contact"),
    ("processing", "purpose", "Art. 30(1)(b)", "Purpose of the processing"),
    ("processing", "purposes", "Art. 5(1)(b), Art. 30(1)(b)", "Purposes ledger entries may be signed with"),
    ("processing", "legal_basis", "Art. 6(1), Art. 9(2)", "Legal basis"),
    ("processing", "data_subjects", "Art. 30(1)(c)", "Categories of data subjects"),
    ("processing", "data_categories", "Art. 30(1)(c)", "Categories of personal data"),
    ("processing", "special_categories", "Art. 9(1)", "Special categories of personal data"),
    ("processing", "recipients", "Art. 30(1)(d)", "Categories of recipients"),
    ("processing", "third_country_transfers", "Art. 30(1)(e)", "Transfers to third countries, safeguards"),
    ("processing", "retention", "Art. 30(1)(f)", "Time limits for erasure (retention)"),
    ("processing", "security_measures", "Art. 30(1)(g), Art. 32(1)", "Technical and organisational security measures"),
    ("processing", "dpia", "Art. 35", "Data protection impact assessment"),
)


def article_30(records: list[ProcessingRecord], owners: list[OwnerStatement]) -> list[dict[str, Any]]:
    """One record of processing per processing record given (and one for owners without a record)."""
    groups: list[tuple[ProcessingRecord | None, list[OwnerStatement]]] = []
    for owner in owners:
        record = records_for(records, owner.owner_id)
        for held, members in groups:
            if held is record:
                members.append(owner)
                break
        else:
            groups.append((record, [owner]))
    for record in records:  # a record no owner in the report matches is still shown
        if not any(held is record for held, _ in groups):
            groups.append((record, []))
    sections = []
    for record, members in groups:
        items = []
        for section, key, reference, label in ARTICLE_30_FIELDS:
            value = record.get(section, key) if record else None
            declared = value not in (None, "", [])
            items.append({"field": f"{section}.{key}", "reference": reference, "label": label,
                          "value": value if declared else None,
                          "evidence": ev.OWNER_DECLARED if declared else ev.NOT_DECLARED})
        purposes = sorted({p for o in members for p in o.purposes})
        intact = all(o.intact for o in members)
        items.append({"field": "ledger.purposes", "reference": "Art. 30(1)(b), Art. 5(1)(b)",
                      "label": "Purpose each release was signed with (ledger)", "value": purposes,
                      "evidence": ev.LEDGER_VERIFIED if intact else ev.LEDGER_UNVERIFIED})
        items.append({"field": "ledger.technical_measures", "reference": "Art. 30(1)(g)",
                      "label": "Technical measures evidenced by the ledger",
                      "value": "see the Art. 25 and Art. 32 measures below",
                      "evidence": ev.LEDGER_VERIFIED if intact else ev.LEDGER_UNVERIFIED})
        sections.append({
            "record": record.source if record else None,
            "record_id": record.get("", "record_id") if record else None,
            "last_reviewed": record.get("", "last_reviewed") if record else None,
            "owners": [o.owner_id for o in members],
            "items": items,
            "missing": [i["field"] for i in items if i["evidence"] == ev.NOT_DECLARED],
        })
    return sections


def _measure(id_: str, reference: str, measure: str, status: str, evidence: str, detail: str) -> dict[str, Any]:
    return {"id": id_, "reference": reference, "measure": measure, "status": status, "evidence": evidence,
            "detail": detail}


def _ledger_evidence(owners: list[OwnerStatement]) -> str:
    return ev.LEDGER_VERIFIED if owners and all(o.intact for o in owners) else ev.LEDGER_UNVERIFIED


def _within(row: Release) -> bool | None:
    c = row.epsilon_cumulative
    if c is None:
        return None
    if math.isinf(c):
        return False
    # The one budget rule, on the figure the owner enforced (as the unit's block judges it): its stated epsilon
    # where the recomputation confirms it (they differ by rounding only), else the recomputed one.
    return fits_budget(row.epsilon_cumulative_stated if row.epsilon_stated_matches else c, row.epsilon_budget)


def article_25(owners: list[OwnerStatement], history: HistorySection | None) -> list[dict[str, Any]]:
    charges = [r for o in owners for r in o.entries if r.kind == "charge"]
    n = len(charges)
    noisy = sum(1 for r in charges if (r.event.noise_multiplier or 0) > 0 and r.mechanism != "unknown")
    within = [_within(r) for r in charges]
    over = sum(1 for w in within if w is False)
    unknown = sum(1 for w in within if w is None)
    refusals = sum(o.refusals for o in owners)
    record_charges = [r for r in charges if r.privacy_unit != "owner"]
    owner_charges = n - len(record_charges)
    bound = sum(1 for r in record_charges if r.update_hash)
    named = sum(1 for o in owners for r in o.entries if r.privacy_unit in ("record", "owner"))
    entries = sum(len(o.entries) for o in owners)
    led = _ledger_evidence(owners)

    def status(ok: int, total: int) -> str:
        if total == 0:
            return "not evidenced"
        return "met" if ok == total else ("partly met" if ok else "not met")

    measures = [
        _measure("dp_every_release", "Art. 25(1)", "Differential privacy applied to every release",
                 status(noisy, n), led,
                 f"{noisy} of {n} charges record a DP mechanism with a noise multiplier above 0"),
        _measure("budget_enforced", "Art. 25(1), Art. 5(1)(c)",
                 "Per-owner lifetime privacy budget enforced before each release",
                 "not evidenced" if n == 0 else ("met" if over == 0 and unknown == 0 else
                                                 ("not met" if over else "partly met")),
                 ev.RECOMPUTED if led == ev.LEDGER_VERIFIED else ev.LEDGER_UNVERIFIED,
                 f"{n - over - unknown} of {n} charges keep the recomputed cumulative epsilon within the budget "
                 f"stated in them{f'; {over} exceed it' if over else ''}"
                 f"{f'; {unknown} cannot be computed' if unknown else ''}; {refusals} release(s) refused for lack "
                 "of budget. The owner's client composes its past events with the planned release and refuses "
                 "before training when the total would cross the budget (privfl design)."),
        _measure("charge_before_release", "Art. 25(1), Art. 5(2)",
                 "Each release charged in the owner's ledger before the update leaves, bound to the update",
                 status(bound, len(record_charges)) if record_charges or not owner_charges else "not evidenced", led,
                 f"{bound} of {len(record_charges)} record-level charges hold the sha256 of the update released; the "
                 "charge is committed (fsynced) before the update is sent (privfl design)"
                 + (f"; {owner_charges} owner-level charge(s) are made before the coordinator draws, by every owner "
                    "that could be drawn, so they bind no update" if owner_charges else "")),
        _measure("privacy_unit_named", "Art. 25(1)", "The privacy unit (what is protected) is stated for each entry",
                 status(named, entries), led, f"{named} of {entries} entries name the privacy unit (record or owner)"),
        _measure("data_stays_at_owner", "Art. 25(1), Art. 5(1)(c)",
                 "Training data stays at the owner; only noised model updates leave", "not evidenced",
                 ev.PRIVFL_DESIGN, "federated learning: each owner trains where its data is and sends only a model "
                 "update; the ledger records releases, not data movements, so it cannot show this"),
    ]
    checked = [o for o in owners if o.purpose_check.status != "not-checked"]
    mismatched = [o.owner_id for o in checked if o.purpose_check.status == "mismatch"]
    measures.append(_measure(
        "purpose_limitation", "Art. 5(1)(b), Art. 25(1)",
        "Every release signed with a purpose the owner's processing record declares",
        "not checked" if not checked else ("not met" if mismatched else "met"),
        (ev.RECOMPUTED if led == ev.LEDGER_VERIFIED else ev.LEDGER_UNVERIFIED) if checked else ev.NOT_DECLARED,
        f"{len(checked) - len(mismatched)} of {len(checked)} owners with declared purposes signed every entry with "
        f"one of them" + (f"; undeclared purposes: {', '.join(mismatched[:10])}"
                          f"{' ...' if len(mismatched) > 10 else ''}" if mismatched else "")
        + ("" if len(checked) == len(owners) else
           f"; {len(owners) - len(checked)} owner(s) have no processing record declaring purposes "
           "([processing] purposes)")))
    config = (history.config if history else None) or {}
    if "dp" in config:
        measures.append(_measure(
            "privacy_by_default", "Art. 25(2)", "Privacy by default: DP-SGD unless explicitly switched off",
            "met" if config.get("dp") else "not met", ev.RUN_HISTORY,
            f"this run's configuration: dp = {str(config.get('dp')).lower()}, epsilon budget "
            f"{config.get('epsilon-budget')}, delta {config.get('delta')}; privfl's default configuration "
            "trains with DP and an owner that requires DP refuses non-private training"))
    else:
        measures.append(_measure(
            "privacy_by_default", "Art. 25(2)", "Privacy by default: DP-SGD unless explicitly switched off",
            "not evidenced", ev.PRIVFL_DESIGN,
            "privfl's default configuration trains with DP (dp = true) and a lifetime budget per owner; "
            "give the run's history.json to show this run's configuration"))
    return measures


def article_32(owners: list[OwnerStatement], ledgers: list[LedgerIntegrity],
               key_modes: Mapping[str, Any] | None, empirical: Any = None) -> list[dict[str, Any]]:
    intact = [lg for lg in ledgers if lg.intact]
    all_intact = bool(ledgers) and len(intact) == len(ledgers)
    verified_status = "met" if all_intact else "failed"
    verified_ev = ev.CHECKED_NOW if all_intact else ev.LEDGER_UNVERIFIED
    entries = sum(lg.entries_checked for lg in ledgers)
    epsilons = sum(lg.epsilons_checked for lg in ledgers)
    n = len(owners)
    pinned = sum(1 for o in owners if o.integrity.key_independently_supplied)
    anchored = sum(1 for o in owners if o.integrity.checked_against)
    own_ledgers = sum(1 for o in owners if o.source.ledger_kind == "owner")
    bad = [f"{lg.path}: {lg.problem}" for lg in ledgers if not lg.intact]

    def part(ok: int, total: int) -> str:
        if total == 0:
            return "not checked"
        return "met" if ok == total else ("partly met" if ok else "not met")

    measures = [
        _measure("signed_entries", "Art. 32(1)(b)", "Integrity: every ledger entry signed with the owner's Ed25519 key",
                 verified_status, verified_ev,
                 f"{len(intact)} of {len(ledgers)} ledger file(s) verified; {entries} entries' signatures checked"
                 + (f". FAILED: {'; '.join(bad)}" if bad else "")),
        _measure("hash_chain", "Art. 32(1)(b)",
                 "Integrity: entries sha256 hash-chained, so edits, deletions, insertions and reordering are detected; "
                 "every stated epsilon recomputed", verified_status, verified_ev,
                 f"chains walked and {epsilons} stated epsilons recomputed from the events"),
        _measure("keys_independent", "Art. 32(1)(b)",
                 "Verification keys supplied independently of the ledger files", part(pinned, n), ev.CHECKED_NOW,
                 f"{pinned} of {n} owners verified against a key given to the report (not read from the ledger)"),
        _measure("truncation_checked", "Art. 32(1)(b)",
                 "Entries removed from the end of an owner's ledger detected against the federation's copies",
                 part(anchored, own_ledgers) if own_ledgers else "not checked", ev.CHECKED_NOW,
                 f"{anchored} of {own_ledgers} owner ledgers checked against a federation ledger's receipts"
                 if own_ledgers else "no owner ledger given; the federation ledger alone cannot show truncation"),
        _measure("append_only_storage", "Art. 32(1)(b)",
                 "Append-only storage: SQLite with triggers refusing UPDATE/DELETE, schema checked",
                 verified_status, verified_ev,
                 "verification checks that each file's tables, indexes and triggers are exactly privfl's"),
        _measure("durable_before_release", "Art. 32(1)(c)",
                 "Resilience: an entry is fsynced (WAL, synchronous=FULL) before the release it records",
                 "not evidenced", ev.PRIVFL_DESIGN, "a crash can lose an update, never its charge"),
        _measure("tls_transport", "Art. 32(1)(a), (b)",
                 "Confidentiality in transit: TLS and node authentication between owners and server",
                 "not evidenced", ev.PRIVFL_DESIGN,
                 "deployments run Flower's SuperLink/SuperNode over TLS with node authentication; a simulation runs "
                 "on one machine; the ledger does not record the transport"),
    ]
    if key_modes and key_modes.get("checked"):
        loose = key_modes["loose"]
        measures.append(_measure(
            "key_files_0600", "Art. 32(1)(b)", "Private signing keys readable by their owner only (mode 0600)",
            "not met" if loose else "met", ev.CHECKED_NOW,
            f"{len(key_modes['modes'])} private key file(s) in {key_modes['folder']}"
            + (f"; too open: {', '.join(loose)}" if loose else ": all mode 0600 or stricter")))
    else:
        measures.append(_measure(
            "key_files_0600", "Art. 32(1)(b)", "Private signing keys readable by their owner only (mode 0600)",
            "not checked", ev.PRIVFL_DESIGN,
            "privfl writes private keys with mode 0600; no key folder was given to check"))
    measures.append(_regular_testing(verified_status, verified_ev, empirical))
    measures.append(_measure(
        "noise_randomness", "Art. 32(1)", "Randomness of the DP noise", "limitation", ev.PRIVFL_DESIGN,
        "the noise generator is seeded from the OS's entropy every round, but it is torch's Mersenne Twister, not "
        "a cryptographically secure generator (Opacus's secure_mode needs torchcsprng, unavailable here)"))
    return measures


def _regular_testing(verified_status: str, verified_ev: str, empirical: Any) -> dict[str, Any]:
    """Art. 32(1)(d) rests on evidence: the ledgers verified now AND an empirical audit of the guarantee that ran.

    Advice to re-run the report is not a test: without an empirical audit result the measure is
    at most "partly met"; a lower bound above a claim fails it.
    """
    from privfl.privacy.report.empirical import audited

    what = "Regular testing: ledgers re-verified by this report, and the DP guarantee tested empirically"
    if verified_status != "met":
        return _measure("regular_verification", "Art. 32(1)(d)", what, "failed", verified_ev,
                        "the ledgers did not verify")
    if not audited(empirical):
        return _measure("regular_verification", "Art. 32(1)(d)", what, "partly met", ev.CHECKED_NOW,
                        "the ledgers were verified once, now, by this report; no empirical audit result was found "
                        "(run `privfl audit`, which writes <run-dir>/audit/result.json), so the guarantee itself was "
                        "not tested; advice to re-run on a schedule is not evidence of it")
    broken = [u for u in empirical.units if u.exceeds_claim]
    return _measure("regular_verification", "Art. 32(1)(d)", what, "failed" if broken else "met", ev.CHECKED_NOW,
                    f"ledgers verified now; empirical audit {empirical.source}: "
                    + "; ".join(u.meaning for u in empirical.units))


def limitations(owners: list[OwnerStatement], supplied: Mapping[str, Any], history: HistorySection | None) -> list[str]:
    """What this report cannot prove, stated plainly."""
    notes = [
        "The DP events are the owner's signed statement of what its training did (Opacus's accountant history, "
        "checked against the plan before training). The ledger proves that the owner stated them and that they were "
        "not altered since; it cannot prove that the noise was actually added.",
        "A ledger file alone cannot show entries removed from its end: compare with the federation ledger's copies "
        "(given here for owners listed as checked against one) or with a head (sequence and hash) noted earlier.",
        "Everything marked owner-declared comes from the processing record and is not checked.",
    ]
    if len(supplied) < len(owners):
        notes.append("Where a key was not supplied independently, a ledger rewritten wholesale under a new key would "
                     "verify; supply each owner's public key to rule that out.")
    if history is not None:
        notes.append("Accuracy figures come from the run's history.json, written by the server and not signed.")
        if history.federated_evaluation is not None:
            notes.append("Federated evaluation metrics are a release of their own (each owner's loss and accuracy "
                         "on its data): the DP-SGD epsilon in this report does not cover them.")
    if any("owner" in o.privacy_units for o in owners):
        notes.append("Owner-level (DP-FedAvg) epsilons rest on the coordinator drawing owners as announced (Poisson at "
                     "rate q, or m of N uniformly) and adding the noise it announced to the sum of clipped updates; "
                     "each owner's ledger records the announced mechanism, which the owner checked against its own "
                     "policy before it was charged, but cannot show the coordinator's draw or noise.")
    if any(not o.source.chain_complete for o in owners):
        notes.append("For owners whose chain is only partly held (federation ledger), the lifetime epsilon is the "
                     "owner's signed statement, checked against a lower bound recomputed from the entries held.")
    return notes
