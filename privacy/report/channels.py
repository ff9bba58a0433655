"""Every release channel of an owner, and how each is covered (DESIGN principle 6).

Why: epsilon covers the model updates only.  A DPO must see, beside it, everything else
that leaves an owner and what (if anything) protects it: the training loss (not released),
the example counts (declared public by the owner's policy, or not released), evaluation
answers (released WITHOUT DP, bounded only by ``max-evaluations``), refusals (signed, with
their reasons), participation and timing (not covered by epsilon), and SecAgg+ with its
documented limits when it was used.

The list is derived from what this report knows about the run: the privacy units present in
the ledgers (charged record-level and owner-level releases), the run config in the history
(``dp``, ``owner-dp``, ``secure-aggregation``, ``federated-evaluation``), the refusals, and the
owner-policy settings whose defaults privfl defines (:class:`privfl.privacy.policy.OwnerPolicy`:
``public-record-count``, ``answer-evaluation``, ``max-evaluations``), read from the policy
class itself so the text cannot drift from the code.  An institution's own policy values stay
at the institution: the report names the setting and its default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from privfl.privacy.report.model import HistorySection, OwnerStatement, ReleaseChannel

LEDGERS = "ledgers (verified)"
CONFIG = "run config (history, unsigned)"
DESIGN = "privfl design (code)"
SECAGG_LIMITS = (
    "Flower 1.42's SecAgg+ public keys are not authenticated and the coordinator relays every stage, so a hostile "
    "coordinator can play the other peers (or register fake SuperNodes) and unmask one owner's update; its mask "
    "seeds have 32 bits (docs/threat-model.md). Do not rely on SecAgg+ against the coordinator: the DP noise "
    "(DP-SGD at the owner) is what protects records.")


def policy_default(name: str) -> Any:
    """The default of an owner-policy setting, read from the policy class (one home for it)."""
    try:
        from privfl.privacy.policy import OwnerPolicy
    except ImportError:  # pragma: no cover - the policy module is part of privfl
        return None
    for f in fields(OwnerPolicy):
        if f.name == name:
            return f.default
    return None


def _config(history: HistorySection | None) -> dict[str, Any]:
    return dict(history.config) if history is not None else {}


def release_channels(owners: Sequence[OwnerStatement], history: HistorySection | None) -> list[ReleaseChannel]:
    """The release channels of this report's owners, each with its coverage."""
    config = _config(history)
    units = {u for o in owners for u in o.privacy_units}
    record_charges = sum(u.charges for o in owners for u in o.unit_views() if u.privacy_unit == "record")
    owner_charges = sum(u.charges for o in owners for u in o.unit_views() if u.privacy_unit == "owner")
    non_private = [o.owner_id for o in owners if any(
        u.epsilon_spent is not None and u.epsilon_spent == float("inf") for u in o.unit_views())]
    channels: list[ReleaseChannel] = []
    dp = config.get("dp")
    if "record" in units or dp:
        channels.append(ReleaseChannel(
            "model update (record-level)", "yes", "DP, charged",
            f"DP-SGD (Opacus) at the owner; each release charged to the owner's ledger before it leaves "
            f"({record_charges:,} charges in these ledgers); record-level epsilon covers it"
            + (f"; owners with a release WITHOUT DP (epsilon infinite): {', '.join(non_private[:8])}"
               if non_private else ""), LEDGERS))
    elif dp is False:
        channels.append(ReleaseChannel("model update", "yes", "no DP",
                                       "the run asked for training without DP (dp = false): recorded in the ledger as "
                                       "a non-private release, epsilon infinite from then on", CONFIG))
    if "owner" in units or config.get("owner-dp"):
        secagg = bool(config.get("secure-aggregation"))
        channels.append(ReleaseChannel(
            "model update (owner-level)", "yes", "DP, charged",
            f"DP-FedAvg: each owner's update clipped, Gaussian noise added to the sum "
            f"{'(summed by SecAgg+: see below)' if secagg else 'by the coordinator'}; charged as owner-level "
            f"({owner_charges:,} charges); owner-level epsilon covers it", LEDGERS))
    channels.append(ReleaseChannel(
        "final model", "yes", "post-processing",
        "computed from the charged updates only, so it is covered by the same epsilons (post-processing): no "
        "further charge", DESIGN))
    channels.append(ReleaseChannel(
        "training loss", "no", "not released",
        "no DP covers it, so it is logged at the owner only (a train reply carries no loss)", DESIGN))
    public = policy_default("public_record_count")
    channels.append(ReleaseChannel(
        "number of examples", "policy", "public by policy, or not released",
        f"owner policy public-record-count (default {str(public).lower()}): true sends the exact count, declared "
        "public by the owner; false sends batches per epoch x batch size, which the DP event's sample rate already "
        "discloses, and an evaluation answer carries 1", DESIGN))
    evaluation = config.get("federated-evaluation")
    answered = history is not None and history.federated_evaluation is not None and bool(
        history.federated_evaluation.rounds)
    answer_default = policy_default("answer_evaluation")
    max_evals = policy_default("max_evaluations")
    if evaluation == "off" and not answered:
        channels.append(ReleaseChannel(
            "evaluation answers", "no", "not released",
            f"federated evaluation was off in this run; when on, an owner answers only if its policy has "
            f"answer-evaluation = true (default {str(answer_default).lower()}), WITHOUT DP, bounded by "
            f"max-evaluations (default {max_evals})", CONFIG))
    else:
        rounds = len(history.federated_evaluation.rounds) if answered else 0
        channels.append(ReleaseChannel(
            "evaluation answers", "yes" if answered else "when asked", "no DP",
            f"loss and accuracy on the owner's evaluation data are released WITHOUT differential privacy (no epsilon "
            f"covers them); only the owner's max-evaluations (default {max_evals} distinct model(s) over the data's "
            f"lifetime; simulated owners allow many) limits them; off unless the owner's policy has "
            f"answer-evaluation = true (default {str(answer_default).lower()})"
            + (f"; {rounds} evaluation round(s) in this run's history" if answered else ""),
            CONFIG if evaluation else DESIGN))
    refusals = sum(o.refusals for o in owners)
    channels.append(ReleaseChannel(
        "refusals", "yes", "not covered (no data)",
        f"signed refusal entries with their reasons (budget exhausted, a request below the owner's policy); they "
        f"carry no training data but tell the coordinator that the budget or policy stopped the owner "
        f"({refusals:,} in these ledgers)", LEDGERS))
    channels.append(ReleaseChannel(
        "ledger entries (receipts)", "yes", "public metadata",
        "each signed entry (DP parameters, epsilon, purpose, round) goes to the coordinator as the receipt of its "
        "release; each coordinator gets only the entries that concern it", DESIGN))
    channels.append(ReleaseChannel(
        "participation and timing", "yes", "not covered",
        "whether and when an owner answered each round is seen by the coordinator; record-level epsilon does not "
        "cover it, and owner-level DP covers participation in the model only, not the messages", DESIGN))
    if config.get("secure-aggregation"):
        channels.append(ReleaseChannel(
            "SecAgg+ (used in this run)", "yes", "limited", "owner-level updates were summed with Flower's SecAgg+ "
            "(the coordinator should see only the masked sum). " + SECAGG_LIMITS, CONFIG))
    return channels


__all__ = ["SECAGG_LIMITS", "policy_default", "release_channels"]
