"""One training round at a client, in the order the trust model demands.

1. read what the server asks (training plan, model) and the owner's own policy;
2. ask the owner's budget guard whether the release fits; refuse if it does not;
3. train (DP-SGD when asked, and always when the owner requires DP);
4. charge the release to the owner's record *before* the update leaves;
5. return the update with a privacy receipt.
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import Any

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from privfl import protocol
from privfl.client.budget_guard import BudgetGuard
from privfl.client.data import OwnerData, load_owner_data
from privfl.client.training import TrainingPlan, train_locally
from privfl.config import ExperimentConfig
from privfl.devices import resolve_device
from privfl.models import ModelSpec, ensure_privatizable
from privfl.privacy.accountants import get_accountant
from privfl.privacy.budget import PrivacyBudget

log = logging.getLogger("privfl.client")


def owner_budget(config: ExperimentConfig, node_config: dict[str, Any], owner: OwnerData) -> PrivacyBudget:
    """The owner's budget: its node config wins over the experiment's defaults.

    delta must stay below 1/n: a larger delta admits mechanisms that publish a
    whole record outright with probability delta.
    """
    epsilon = float(node_config.get("epsilon-budget", config.epsilon_budget))
    delta = float(node_config.get("delta", config.delta))
    if delta >= 1.0 / len(owner.train):
        raise ValueError(
            f"owner {owner.owner_id}: delta = {delta:g} is not below 1/n = 1/{len(owner.train)}; "
            f"set delta below {1.0 / len(owner.train):.2g}"
        )
    return PrivacyBudget(epsilon=epsilon, delta=delta)


def run_train_round(msg: Message, context: Context) -> RecordDict:
    config = ExperimentConfig.from_mapping(context.run_config, source="run config")
    asked = msg.content[protocol.TRAIN_CONFIG]
    plan = TrainingPlan.from_record_values(asked)
    spec = ModelSpec.from_record_values(asked)
    owner = load_owner_data(config, context.node_config)
    budget = owner_budget(config, context.node_config, owner)
    guard = BudgetGuard(context.state, budget, get_accountant(config.accountant))
    release_id = f"{context.run_id}:{asked['server-round']}"

    def receipt(status: str, epsilon: float, event: Any = None, reason: str = "") -> protocol.PrivacyReceipt:
        return protocol.PrivacyReceipt(
            owner_id=owner.owner_id, status=status, epsilon=epsilon, delta=budget.delta,
            accountant=guard.accountant.name,
            noise_multiplier=event.noise_multiplier if event else 0.0,
            sample_rate=event.sample_rate if event else 0.0,
            steps=event.steps if event else 0, reason=reason,
        )

    if config.dp and not plan.dp:
        return _refusal(receipt(protocol.REFUSED, guard.spent_epsilon(),
                                reason="the owner requires DP training; the server asked for non-private training"))
    if plan.dp:
        if guard.is_charged(release_id):
            log.warning("%s: round %s was already charged; training again without a second charge",
                        owner.owner_id, release_id)
            decision_epsilon = guard.spent_epsilon()
        else:
            decision = guard.decide(plan.privacy_event(len(owner.train)))
            if not decision.allowed:
                log.info("%s refuses to train: %s", owner.owner_id, decision.reason)
                return _refusal(receipt(protocol.REFUSED, guard.spent_epsilon(), reason=decision.reason))
            decision_epsilon = decision.projected_epsilon

    model = spec.build()
    if plan.dp:
        ensure_privatizable(model)
    model.load_state_dict(msg.content[protocol.ARRAYS].to_torch_state_dict())
    update = train_locally(
        model, owner.train.to_torch(), plan, resolve_device(config.device),
        seed=_round_seed(config.seed, int(asked["server-round"]), owner.owner_id),
    )

    if update.privacy_event is not None:
        if update.privacy_event != plan.privacy_event(len(owner.train)):
            raise RuntimeError(
                f"Opacus recorded {update.privacy_event}, which differs from the planned release; "
                "refusing to release an update whose privacy cost was not checked"
            )
        guard.charge(release_id, update.privacy_event)
        epsilon = decision_epsilon
    else:
        epsilon = math.inf

    metrics = MetricRecord({"num-examples": update.num_examples, "train-loss": update.mean_loss})
    return RecordDict({
        protocol.ARRAYS: ArrayRecord(update.state_dict),
        protocol.METRICS: metrics,
        protocol.PRIVACY: receipt(protocol.TRAINED, epsilon, update.privacy_event).to_record(),
    })


def _refusal(receipt: protocol.PrivacyReceipt) -> RecordDict:
    return RecordDict({protocol.PRIVACY: receipt.to_record()})


def _round_seed(seed: int, server_round: int, owner_id: str) -> int:
    """Distinct, reproducible batch order per (experiment seed, round, owner)."""
    digest = hashlib.sha256(f"{seed}:{server_round}:{owner_id}".encode()).digest()
    return int.from_bytes(digest[:7], "little")
