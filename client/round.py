"""One training round at a client, in the order the trust model demands.

1. read what the server asks (training plan, model) and the owner's own policy;
2. ask the owner's ledger whether the release fits the budget; if not, record a
   signed refusal and release nothing;
3. train with DP-SGD (an owner whose config requires DP never trains without it);
4. save the update and charge the release to the owner's ledger (durably) *before*
   the update leaves;
5. return the update with the signed ledger entry as its receipt.

A retried round finds its charge in the ledger and re-sends the very update it
charged for, so a retry neither charges twice nor releases a second noisy update.
"""

from __future__ import annotations

import hashlib
from typing import Any

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from privfl.logs import get_logger
from privfl import protocol
from privfl.client.data import OwnerData, load_owner_data
from privfl.client.owner_ledger import locate, open_owner_ledger
from privfl.client.release_store import ReleaseStore
from privfl.client.training import LocalUpdate, TrainingPlan, train_locally
from privfl.config import ExperimentConfig
from privfl.devices import resolve_device
from privfl.models import ModelSpec, ensure_privatizable
from privfl.privacy.accountants import get_accountant
from privfl.privacy.budget import PrivacyBudget, decide_next_release
from privfl.privacy.ledger import OwnerLedger

log = get_logger("client")


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
    owner = load_owner_data(config, context.node_config)
    if not config.dp and not plan.dp:  # an owner that allows non-private training
        update = _train(config, asked, plan, owner, msg)
        return _release(update, protocol.non_private_receipt(owner.owner_id))

    budget = owner_budget(config, context.node_config, owner)
    ledger = open_owner_ledger(owner.owner_id, locate(owner.owner_id, context.node_config, asked))
    round_ = _Round(ledger, budget, config, plan, run_id=str(context.run_id),
                    server_round=int(asked["server-round"]))
    if not plan.dp:
        return round_.refuse("the owner requires DP training; the server asked for non-private training")
    charged = ledger.charge_for(round_.run_id, round_.server_round)
    if charged is not None:
        return round_.resend(charged)
    planned = plan.privacy_event(len(owner.train))
    decision = decide_next_release(ledger.events(), planned, budget, get_accountant(config.accountant))
    if not decision.allowed:
        log.info("%s refuses to train: %s", owner.owner_id, decision.reason)
        return round_.refuse(decision.reason, planned)
    update = _train(config, asked, plan, owner, msg)
    if update.privacy_event != planned:
        raise RuntimeError(
            f"Opacus recorded {update.privacy_event}, not the planned {planned}; "
            "refusing to release an update whose privacy cost was not checked"
        )
    return round_.charge_and_release(update)


class _Round:
    """One (run, round) of one owner: refuse, charge-then-release, or re-send."""

    def __init__(self, ledger: OwnerLedger, budget: PrivacyBudget, config: ExperimentConfig,
                 plan: TrainingPlan, *, run_id: str, server_round: int) -> None:
        self.ledger, self.budget, self.config, self.plan = ledger, budget, config, plan
        self.run_id, self.server_round = run_id, server_round
        self.releases = ReleaseStore(ledger.path)

    def _terms(self) -> dict[str, Any]:
        return dict(delta=self.budget.delta, epsilon_budget=self.budget.epsilon,
                    accountant=self.config.accountant, purpose=self.config.purpose)

    def refuse(self, reason: str, planned: Any = None) -> RecordDict:
        entry = self.ledger.refuse(self.run_id, self.server_round, reason, event=planned,
                                   clipping_norm=self.plan.max_grad_norm, **self._terms())
        return RecordDict({protocol.PRIVACY: protocol.signed_receipt(entry.signed_bytes())})

    def charge_and_release(self, update: LocalUpdate) -> RecordDict:
        digest = protocol.update_digest(update.state_dict)
        self.releases.save(self.run_id, self.server_round, update)  # before the charge
        entry = self.ledger.charge(self.run_id, self.server_round, update.privacy_event,
                                   clipping_norm=self.plan.max_grad_norm, update_hash=digest, **self._terms())
        return _release(update, protocol.signed_receipt(entry.signed_bytes()))

    def resend(self, charged: Any) -> RecordDict:
        update = self.releases.load(self.run_id, self.server_round, charged.update_hash)
        if update is None:
            raise RuntimeError(
                f"owner {self.ledger.owner_id}: run {self.run_id} round {self.server_round} is already charged but "
                "the update it was charged for is gone; refusing to release a second update under one charge"
            )
        log.warning("%s: round %s of run %s was already charged; re-sending the charged update",
                    self.ledger.owner_id, self.server_round, self.run_id)
        return _release(update, protocol.signed_receipt(charged.signed_bytes()))


def _train(config: ExperimentConfig, asked: Any, plan: TrainingPlan, owner: OwnerData, msg: Message) -> LocalUpdate:
    model = ModelSpec.from_record_values(asked).build()
    if plan.dp:
        ensure_privatizable(model)
    model.load_state_dict(msg.content[protocol.ARRAYS].to_torch_state_dict())
    return train_locally(model, owner.train.to_torch(), plan, resolve_device(config.device),
                         seed=_round_seed(config.seed, int(asked["server-round"]), owner.owner_id))


def _release(update: LocalUpdate, receipt: Any) -> RecordDict:
    return RecordDict({
        protocol.ARRAYS: ArrayRecord(update.state_dict),
        protocol.METRICS: MetricRecord({"num-examples": update.num_examples, "train-loss": update.mean_loss}),
        protocol.PRIVACY: receipt,
    })


def _round_seed(seed: int, server_round: int, owner_id: str) -> int:
    """Distinct, reproducible batch order per (experiment seed, round, owner)."""
    digest = hashlib.sha256(f"{seed}:{server_round}:{owner_id}".encode()).digest()
    return int.from_bytes(digest[:7], "little")
