"""An owner's side of owner-level DP (DP-FedAvg): charged before the draw, then a clipped release.

Owner-level DP protects whether an owner took part and what it contributed: the
coordinator samples owners, clips each sampled owner's update to a norm C and adds
Gaussian noise to their sum (:mod:`privfl.server.owner_dp`).  Amplification by
sampling counts every round against every owner that *could* have been drawn, so
the owner's ledger must hold every round, not only the ones it was drawn in:

1. ``stage = owner-charge``: the coordinator tells every owner in the population the
   round's mechanism (noise, sampling, clip) before it draws anyone; each owner checks
   its policy (the ``owner`` unit, its owner-level budget, least noise, secure
   aggregation if it requires it) and charges the round's event, or refuses;
2. the drawn owners train and release their update as a *difference* from the global
   model, clipped to C, with weight 1 (owner-level DP gives every owner the same
   weight).  A release needs the step-1 charge of the same round (of the owner unit:
   a charge of another unit under the same key is never taken for it).  With DP-SGD as
   well, the release is also charged at the record level; without, it is recorded at
   the record level as a :class:`~privfl.privacy.events.NonPrivateRelease` bound to the
   update's hash (:meth:`privfl.client.round._Round.release_owner_level`).

What the owner checks in its own process, whatever the request says:

- DP required (``dp-required = true``): owner-level updates leave only with DP-SGD.
  The owner-level noise is added by the coordinator after it has seen the update (or,
  under SecAgg+, the cohort's sum), so without DP-SGD nothing protects a record from
  the coordinator itself (:func:`privfl.client.guard.dp_required_problem`);
- secure aggregation, when the round claims it or the policy requires it: the release
  is built inside SecAgg+'s masked-vectors stage of this very process and summed with
  at least one other owner's masked vector (:func:`_masking_problem`); a plain train
  message that claims SecAgg+ gets a signed refusal;
- the amplification it credits: the owner cannot check whom the coordinator draws, so
  a sampling rate (Poisson q, or m/N) below ``min-owner-sample-rate`` (default 1: none
  credited) is refused; terms that cannot be run (a clipping norm that is not finite
  and > 0, a sampling outside its range) get a signed refusal, not an exception.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from flwr.app import Message, RecordDict

from privfl import protocol
from privfl.client.guard import decide_release, dp_required_problem
from privfl.client.secure_aggregation import masked_cohort
from privfl.client.training import LocalUpdate
from privfl.privacy.budget import noise_problem
from privfl.privacy.ledger import ChargeConflict, UnsupportedEvent
from privfl.privacy.owner_level import POISSON, clip_to_norm
from privfl.privacy.policy import OWNER, PolicyError
from privfl.protocol import OwnerRound, RoundRequest


def owner_charge(round_: Any, request: RoundRequest) -> RecordDict:
    """Step 1: charge this round's owner-level event, or refuse (signed) saying why."""
    owner, terms = round_.owner, request.owner_round
    key = OwnerRound.charge_key(request.experiment_id)
    reason = _terms_problem(owner.policy, terms) or dp_required_problem(owner.policy, request.plan, OWNER)
    if reason:
        return round_.refuse(reason, request=request, unit=OWNER, run_id=key)
    existing = owner.ledger.charge_for(key, request.server_round, unit=OWNER)
    if existing is not None:  # asked again (a retry, a resumed round): the same charge
        return RecordDict({protocol.PRIVACY: round_._receipt(existing)})
    event = terms.event()
    try:
        decision = decide_release(owner.policy, owner.ledger.events(OWNER), event, unit=OWNER)
    except (UnsupportedEvent, TypeError, PolicyError) as err:
        return round_.refuse(f"this owner cannot account the round's owner-level event: {err}", request=request,
                             unit=OWNER, run_id=key)
    if not decision.allowed:
        return round_.refuse(f"owner-level {decision.reason}", request=request, planned=event, unit=OWNER,
                             run_id=key)
    try:
        entry = round_.charge(key, event, request, clipping_norm=terms.clipping_norm, unit=OWNER)
    except ChargeConflict as err:  # the key holds another unit's or another event's charge: never take it as this
        return round_.refuse(f"this owner cannot charge the round: {err}", request=request, unit=OWNER, run_id=key)
    return RecordDict({protocol.PRIVACY: round_._receipt(entry)})


def owner_release_problem(owner: Any, request: RoundRequest) -> str | None:
    """Step 2: why a drawn owner does not release (None: it was charged for the round and may)."""
    reason = (_terms_problem(owner.policy, request.owner_round)
              or dp_required_problem(owner.policy, request.plan, OWNER)
              or _masking_problem(owner.policy, request.owner_round))
    if reason:
        return reason
    key = OwnerRound.charge_key(request.experiment_id)
    charge = owner.ledger.charge_for(key, request.server_round, unit=OWNER)
    if charge is None:
        return (f"this owner was not charged for owner-level round {request.server_round} before the draw; it "
                "releases nothing the round's charge does not cover")
    terms = request.owner_round
    if charge.event != terms.event() or terms.clipping_norm > charge.clipping_norm:
        return (f"owner-level round {request.server_round} was charged as {charge.event} clipped to "
                f"{charge.clipping_norm:g} (entry {charge.sequence}), but the release is asked under "
                f"{terms.event()} clipped to {terms.clipping_norm:g}: this owner releases only what its charge covers")
    return None


def _terms_problem(policy: Any, terms: OwnerRound | None) -> str | None:
    """Why this owner does not accept the round's owner-level terms, checked against its own policy."""
    if terms is None:
        return "the request asks for an owner-level round but names no owner-level mechanism"
    if policy.owner_epsilon_budget is None:
        return "no owner-level epsilon budget set (owner-epsilon-budget): this owner accepts no owner-level round"
    if policy.require_secure_aggregation and not terms.secure:
        return ("this owner's update would reach the coordinator in the clear; its policy requires secure "
                "aggregation (require-secure-aggregation)")
    noise = noise_problem(terms.noise_multiplier, policy.min_noise_multiplier, "owner-level noise multiplier")
    if noise:
        return noise
    if not (math.isfinite(terms.clipping_norm) and terms.clipping_norm > 0):
        return f"the owner-level clipping norm {terms.clipping_norm!r} is not finite and > 0"
    try:
        terms.event()
    except ValueError as err:  # a sampling that cannot be run (rate outside (0, 1], m > N, ...)
        return f"the owner-level mechanism cannot be accounted: {err}"
    rate = terms.sample_rate if terms.sampling == POISSON else terms.sample_size / terms.population
    if rate < policy.min_owner_sample_rate:
        return (f"the owner-level sampling rate {rate:.4g} ({terms.sampling}) is below the least rate whose "
                f"amplification this owner credits, {policy.min_owner_sample_rate:g} (min-owner-sample-rate): the "
                "coordinator draws the sample and this owner cannot check it")
    return None


def _masking_problem(policy: Any, terms: OwnerRound | None) -> str | None:
    """Why this release may not leave as it would (None: it leaves masked by SecAgg+, or needs not).

    Checked in this owner's own process (:func:`privfl.client.secure_aggregation.masked_cohort`),
    never taken from the request: a round said to be securely aggregated, or an owner that
    requires it, releases only inside SecAgg+'s masked-vectors stage, summed with at least
    one other owner's masked vector.
    """
    if terms is None or not (terms.secure or policy.require_secure_aggregation):
        return None
    why = ("the round is said to be securely aggregated" if terms.secure else
           "this owner's policy requires secure aggregation (require-secure-aggregation)")
    cohort = masked_cohort()
    if cohort is None:
        return (f"{why}, but the request reached this owner as a plain train message, not in SecAgg+'s "
                "masked-vectors stage: its update would leave in the clear")
    if cohort < 2:
        return (f"{why}, but SecAgg+ would sum this owner's masked vector with no other owner's: the "
                "coordinator would unmask this owner's update alone")
    return None


def as_released(update: LocalUpdate, request: RoundRequest, msg: Message) -> LocalUpdate:
    """What leaves the owner: its model (record level), or, in an owner-level round, its update as a
    difference from the global model clipped to the owner-level norm, with weight 1."""
    if request.privacy_unit != OWNER or request.owner_round is None:
        return update
    global_state = msg.content[protocol.ARRAYS].to_torch_state_dict()
    delta = {k: (update.state_dict[k] - global_state[k]).numpy() for k in global_state}
    clipped, unclipped = clip_to_norm(delta, request.owner_round.clipping_norm)
    state = OrderedDict((k, torch.from_numpy(np.asarray(clipped[k], dtype=delta[k].dtype))) for k in global_state)
    metrics: dict[str, Any] = {"num-examples": 1}
    if request.owner_round.secure:  # the SecAgg+ mod sums this bit securely (adaptive clipping) and drops it here
        metrics["unclipped"] = int(unclipped)
    return replace(update, state_dict=state, num_examples=1, metrics=metrics)
