"""One training round at an owner, in the order the trust model demands.

1. find the owner this node serves: its own policy, key and ledger (a node that has
   none of them refuses, unsigned, saying why; it never falls back to the run config);
2. read the request and check it against the owner's policy (protocol version,
   purpose, privacy unit, model, DP required, least noise, data shape, delta); a
   request below the policy gets a signed refusal and nothing is released;
3. check that the owner's ledger still holds the head the coordinator anchored for it
   (else it was truncated, restored or rewritten: the owner cannot know its true
   spend and refuses); ask the ledger whether the release fits the budget (and the
   per-round cap); if not, a signed refusal;
4. train with DP-SGD, save the update and charge the release to the owner's ledger
   (durably) *before* the update leaves;
5. return the update with the signed ledger entry as its receipt, and the entries
   written since the anchored head (the bridge the coordinator checks it against).

Owner-level (DP-FedAvg) rounds come in two steps (:mod:`privfl.client.owner_level`):
every owner that could be drawn is first charged the round's owner-level event
(``stage = owner-charge``), then the drawn owners train and release their update
clipped to the owner-level norm, as a difference from the global model.  With DP-SGD
as well (both units), that release is also charged at the record level.

A release without DP (a policy with ``dp-required = false``, or an owner-level round
without DP-SGD) is charged too, as a :class:`~privfl.privacy.events.NonPrivateRelease`
bound to the update's hash: the owner's record-level epsilon is infinite from then on.

A charge is keyed by privfl's experiment id and round (not Flower's run id, which a
resumed experiment changes).  A retried or resumed round finds its charge and re-sends
the very update it charged for, so it is never charged twice and never releases a
second noisy update under one charge.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from privfl import protocol
from privfl.client.audit_canary import canary_update
from privfl.client.data import OwnerDataError
from privfl.client.guard import decide_release, owner_plan, plan_problem, released_count, review_request
from privfl.client.owner_level import as_released, owner_charge, owner_release_problem
from privfl.client.owner import Owner, OwnerSetupError, node_owner
from privfl.client.release_store import ReleaseStore
from privfl.client.training import LocalUpdate, train_locally
from privfl.devices import resolve_device
from privfl.logs import get_logger
from privfl.privacy.events import NonPrivateRelease
from privfl.privacy.ledger import UnsupportedEvent
from privfl.privacy.ledger.bridge import split_bridge
from privfl.privacy.ledger.entry import unit_of
from privfl.privacy.policy import OWNER, RECORD, PolicyError
from privfl.protocol import OwnerRound, ProtocolError, RoundRequest

log = get_logger("client")


def run_train_round(msg: Message, context: Context) -> RecordDict:
    asked = msg.content.config_records.get(protocol.TRAIN_CONFIG, {})
    try:
        owner = node_owner(context, str(asked.get("owners-dir", "")))
    except OwnerSetupError as err:
        log.error("refusing to train (unsigned: no usable policy or key): %s", err)
        return RecordDict({protocol.PRIVACY: protocol.unsigned_refusal(str(err), err.owner_id)})
    experiment_id, server_round = asked.get("experiment-id"), asked.get("server-round")
    if not (isinstance(experiment_id, str) and experiment_id and isinstance(server_round, int)
            and not isinstance(server_round, bool) and server_round >= 0):
        reason = "the request names no experiment id and round, which key every charge"
        log.error("%s refuses: %s", owner.owner_id, reason)
        return RecordDict({protocol.PRIVACY: protocol.unsigned_refusal(reason, owner.owner_id)})
    reason = protocol.experiment_id_problem(experiment_id)
    if reason:  # unsigned: a refusal keyed by this id could itself sit under another key's charges
        log.error("%s refuses: %s", owner.owner_id, reason)
        return RecordDict({protocol.PRIVACY: protocol.unsigned_refusal(reason, owner.owner_id)})
    reason = federation_problem(owner, experiment_id)
    if reason:  # unsigned: a refusal keyed by this id would sit beside the other federation's entries
        log.error("%s refuses: %s", owner.owner_id, reason)
        return RecordDict({protocol.PRIVACY: protocol.unsigned_refusal(reason, owner.owner_id)})
    round_ = _Round(owner, experiment_id, server_round)
    anchored = asked.get("anchor-sequence", 0)
    round_.anchored = anchored if isinstance(anchored, int) and not isinstance(anchored, bool) else 0
    try:
        request = RoundRequest.from_record(asked)
    except ProtocolError as err:
        return round_.refuse(f"the request does not follow this owner's protocol: {err}")
    try:
        data = owner.data()
    except OwnerDataError as err:
        return round_.refuse(f"this owner's data cannot be used: {err}")
    reason = review_request(owner.policy, request, data, training=True) or anchor_problem(owner.ledger, request)
    if reason:
        return round_.refuse(reason, request=request)
    if request.privacy_unit == OWNER:
        if request.stage == protocol.OWNER_CHARGE_STAGE:
            return owner_charge(round_, request)
        reason = owner_release_problem(owner, request)
        if reason:
            return round_.refuse(reason, request=request)
    try:  # the owner's own noise, when the coordinator sent a privacy target
        plan = owner_plan(owner.policy, request, len(data.train), owner.ledger.events_outside(experiment_id))
    except (ValueError, UnsupportedEvent) as err:
        return round_.refuse(f"this owner cannot plan its noise for the target: {err}", request=request)
    reason = plan_problem(owner.policy, plan, data, request.privacy_unit)
    if reason:
        return round_.refuse(reason, request=request)
    request = replace(request, plan=plan)
    if not plan.dp:
        if request.privacy_unit == OWNER:  # released under its owner-level charge alone
            return round_.release_owner_level(request, msg)
        # the owner's policy allows non-private training (dp-required = false)
        return round_.release_non_private(request, msg)

    charged = owner.ledger.charge_for(experiment_id, server_round, unit=RECORD)
    if charged is not None:
        return round_.resend(charged)
    planned = plan.privacy_event(len(data.train))
    try:
        decision = decide_release(owner.policy, owner.ledger.events(), planned)
    except PolicyError as err:
        return round_.refuse(str(err), request=request, unit=RECORD)
    if not decision.allowed:
        return round_.refuse(decision.reason, request=request, planned=planned, unit=RECORD)
    try:
        update = _train(owner, request, msg)
    except _GlobalModelMismatch as err:
        return round_.refuse(str(err), request=request, planned=planned, unit=RECORD)
    if update.privacy_event != planned:
        raise RuntimeError(
            f"Opacus recorded {update.privacy_event}, not the planned {planned}; "
            "refusing to release an update whose privacy cost was not checked"
        )
    return round_.charge_and_release(as_released(update, request, msg), request)


class _Round:
    """One (experiment, round) of one owner: refuse, charge-then-release, or re-send."""

    def __init__(self, owner: Owner, experiment_id: str, server_round: int) -> None:
        self.owner, self.experiment_id, self.server_round = owner, experiment_id, server_round
        self.releases = ReleaseStore(owner.ledger.path)
        self.anchored = 0  # the head sequence the coordinator anchored for this owner

    def _receipt(self, entry: Any) -> Any:
        """The signed entry and the owner's entries since the anchored head, for the coordinator to link.

        Only this experiment's entries go in full; every other entry (another federation's, another
        experiment's) goes as its hashes alone (privacy/ledger/bridge.py), so a coordinator that sends
        anchor 0 learns where the owner's chain stands, not what it released to others.
        """
        between = self.owner.ledger.entries_between(self.anchored, entry.sequence)
        bridge, elided = split_bridge(between, run_ids(self.experiment_id), self.owner.policy.federation)
        return protocol.signed_receipt(entry.signed_bytes(), bridge, elided)

    def _terms(self, request: RoundRequest | None, unit: str | None) -> dict[str, Any]:
        policy = self.owner.policy
        if unit is None and request is not None and request.privacy_unit in (RECORD, OWNER):
            unit = request.privacy_unit
        budget = policy.owner_epsilon_budget if unit == OWNER and policy.owner_epsilon_budget else policy.epsilon_budget
        return dict(delta=policy.delta, epsilon_budget=budget, accountant=policy.accountant,
                    purpose=request.purpose if request is not None else "", privacy_unit=unit,
                    federation=policy.federation)

    def refuse(self, reason: str, *, request: RoundRequest | None = None, planned: Any = None,
               unit: str | None = None, run_id: str | None = None) -> RecordDict:
        log.warning("%s refuses round %s of %s: %s", self.owner.owner_id, self.server_round, self.experiment_id,
                    reason)
        clipping = request.plan.max_grad_norm if request is not None else 0.0
        entry = self.owner.ledger.refuse(run_id or self.experiment_id, self.server_round, reason, event=planned,
                                         clipping_norm=clipping, **self._terms(request, unit))
        return RecordDict({protocol.PRIVACY: self._receipt(entry)})

    def charge(self, run_id: str, event: Any, request: RoundRequest, *, clipping_norm: float, unit: str,
               update_hash: bytes = b"", enforce_budget: bool = True) -> Any:
        return self.owner.ledger.charge(run_id, self.server_round, event, clipping_norm=clipping_norm,
                                        update_hash=update_hash, enforce_budget=enforce_budget,
                                        **self._terms(request, unit))

    def charge_and_release(self, update: LocalUpdate, request: RoundRequest) -> RecordDict:
        """A DP-SGD release (record-level), charged before it leaves."""
        digest = protocol.update_digest(update.state_dict)
        self.releases.save(self.experiment_id, self.server_round, update)  # before the charge
        entry = self.charge(self.experiment_id, update.privacy_event, request, clipping_norm=request.plan.max_grad_norm,
                            unit=RECORD, update_hash=digest)
        return _release(update, self._receipt(entry))

    def release_owner_level(self, request: RoundRequest, msg: Message) -> RecordDict:
        """An owner-level round without DP-SGD (a policy with dp-required = false): the clipped update
        leaves under its owner-level charge, recorded first as a record-level release without DP."""
        charge = self.owner.ledger.charge_for(OwnerRound.charge_key(self.experiment_id), self.server_round,
                                              unit=OWNER)
        return self._release_without_dp(request, msg, self._receipt(charge))

    def release_non_private(self, request: RoundRequest, msg: Message) -> RecordDict:
        """A release without DP (the owner's policy allows it: dp-required = false)."""
        return self._release_without_dp(request, msg, None)

    def _release_without_dp(self, request: RoundRequest, msg: Message, receipt: Any) -> RecordDict:
        """Charge a :class:`NonPrivateRelease` bound to the update's hash, then release; a re-ask re-sends it.

        No DP-SGD: the coordinator sees this update without noise, so the owner's record-level
        epsilon is infinite from this entry on (charged whatever the budget: the policy allows
        it, and the ledger must say it).  The charge names the update's hash, as a DP-SGD charge
        does: a round asked again re-sends that very update, or, when it is gone, refuses;
        it never trains and releases a second update under one charge.
        """
        released = self.owner.ledger.charge_for(self.experiment_id, self.server_round, unit=RECORD)
        if released is not None:
            update = self.releases.load(self.experiment_id, self.server_round, released.update_hash)
            if update is None:
                reason = (f"round {self.server_round} of {self.experiment_id} was already released (entry "
                          f"{released.sequence}) and the update it recorded is gone: this owner sends no second one")
                return self.refuse(reason, request=request, unit=request.privacy_unit)
            log.warning("%s: round %s of %s was already released; re-sending the same update",
                        self.owner.owner_id, self.server_round, self.experiment_id)
        else:
            update = as_released(_train(self.owner, request, msg), request, msg)
            digest = protocol.update_digest(update.state_dict)
            self.releases.save(self.experiment_id, self.server_round, update)  # before the charge
            released = self.charge(self.experiment_id, NonPrivateRelease(), request, clipping_norm=0.0, unit=RECORD,
                                   update_hash=digest, enforce_budget=False)
        if receipt is None:
            receipt = protocol.non_private_receipt(self.owner.owner_id, released.signed_bytes())
        return _release(update, receipt)

    def resend(self, charged: Any) -> RecordDict:
        update = self.releases.load(self.experiment_id, self.server_round, charged.update_hash)
        if update is None:  # a signed refusal, not an exception: a coordinator can ask any old round again
            return self.refuse(f"round {self.server_round} of {self.experiment_id} is already charged (entry "
                               f"{charged.sequence}) but the update it was charged for is gone (only the latest "
                               "round's is kept): this owner releases no second update under one charge",
                               unit=unit_of(charged))
        log.warning("%s: round %s of %s was already charged; re-sending the charged update",
                    self.owner.owner_id, self.server_round, self.experiment_id)
        return _release(update, self._receipt(charged))


def run_ids(experiment_id: str) -> tuple[str, str]:
    """The keys an experiment's charges and refusals are written under: record-level and owner-level."""
    return experiment_id, OwnerRound.charge_key(experiment_id)


def federation_problem(owner: Owner, experiment_id: str) -> str | None:
    """Why this node serves no round of ``experiment_id``: the id belongs to another federation at this owner.

    The coordinator chooses experiment ids, and short human names are guessable; the
    federation comes from the owner's own policy.  An id is bound to the federation of
    its first entry, so a coordinator naming another federation's experiment neither
    reads its entries in the bridge nor gets its charged update re-sent.  The reason
    names neither the other federation nor anything of its experiment.
    """
    mine = owner.policy.federation
    for run_id in run_ids(experiment_id):
        theirs = owner.ledger.federation_of(run_id)
        if theirs is not None and theirs != mine:
            return (f"experiment id {experiment_id!r} is bound to another federation at this owner: "
                    "this node serves no round of it (choose a new experiment id)")
    return None


def anchor_problem(ledger: Any, request: RoundRequest) -> str | None:
    """Why the owner cannot vouch for its own spend: it lacks the head the coordinator anchored.

    Anchor 0 ("this coordinator never anchored this owner") skips only the coordinator's
    half: before any round the node has already held its ledger to its own head record
    (:mod:`privfl.privacy.ledger.node_head`), whatever anchor the request names.
    """
    if not request.anchor_sequence:
        return None
    held = ledger.entry(request.anchor_sequence)
    if held is not None and held.hash.hex() == request.anchor_hash:
        return None
    found = "does not hold" if held is None else "holds a different"
    return (f"this owner's ledger {found} entry {request.anchor_sequence}, which the coordinator accepted "
            f"({request.anchor_hash[:16]}...): the ledger was truncated, restored from an older copy, or rewritten, "
            "so its spend cannot be vouched for; restore the ledger (docs/ledger.md) before training again")


class _GlobalModelMismatch(ValueError):
    """The global model's weights do not fit the model the request names."""


def _train(owner: Owner, request: RoundRequest, msg: Message) -> LocalUpdate:
    from privfl.task import ModelMismatchError, ModelNotPrivatizableError, check_model

    try:
        model = check_model(request.model, private=request.plan.dp)
    except (ModelMismatchError, ModelNotPrivatizableError) as err:
        raise _GlobalModelMismatch(str(err)) from None
    try:
        model.load_state_dict(msg.content[protocol.ARRAYS].to_torch_state_dict())
    except (RuntimeError, KeyError, ValueError) as err:
        raise _GlobalModelMismatch(f"the global model's weights do not fit model {request.model.name!r}: "
                                   f"{str(err).splitlines()[0]}") from None
    data = owner.data()
    # batches and noise from the OS's entropy: nothing the coordinator knows seeds them
    update = train_locally(model, data.train.to_torch(), request.plan, resolve_device(owner.policy.device))
    log.info("%s: round %s of %s, mean training loss %.4f (kept at this node: it is not covered by DP)",
             owner.owner_id, request.server_round, request.experiment_id, update.mean_loss)
    update = replace(update, metrics={"num-examples": released_count(owner.policy, request.plan, len(data.train))})
    return canary_update(owner, request, msg, update)  # a simulated audit's canary owner only (docs/audit.md)


def _release(update: LocalUpdate, receipt: Any) -> RecordDict:
    """The reply: the update, its FedAvg weight (nothing else about the data) and the receipt."""
    metrics = update.metrics if update.metrics is not None else {"num-examples": 1}  # saved before weights were set
    return RecordDict({
        protocol.ARRAYS: ArrayRecord(update.state_dict),
        protocol.METRICS: MetricRecord(metrics),
        protocol.PRIVACY: receipt,
    })

