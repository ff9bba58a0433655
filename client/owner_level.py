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
   weight).  A release needs the step-1 charge of the same round.  With DP-SGD as
   well, the release is also charged at the record level; without, it leaves under
   the owner-level charge alone, saved first so a retry re-sends the same update.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from flwr.app import Message, RecordDict

from privfl import protocol
from privfl.client.guard import decide_release
from privfl.client.training import LocalUpdate
from privfl.privacy.ledger import UnsupportedEvent
from privfl.privacy.owner_level import clip_to_norm
from privfl.privacy.policy import OWNER, PolicyError
from privfl.protocol import OwnerRound, RoundRequest


def owner_charge(round_: Any, request: RoundRequest) -> RecordDict:
    """Step 1: charge this round's owner-level event, or refuse (signed) saying why."""
    owner, terms = round_.owner, request.owner_round
    key = OwnerRound.charge_key(request.experiment_id)
    reason = _terms_problem(owner.policy, terms)
    if reason:
        return round_.refuse(reason, request=request, unit=OWNER, run_id=key)
    existing = owner.ledger.charge_for(key, request.server_round)
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
    entry = round_.charge(key, event, request, clipping_norm=terms.clipping_norm, unit=OWNER)
    return RecordDict({protocol.PRIVACY: round_._receipt(entry)})


def owner_release_problem(owner: Any, request: RoundRequest) -> str | None:
    """Step 2: why a drawn owner does not release (None: it was charged for the round and may)."""
    reason = _terms_problem(owner.policy, request.owner_round)
    if reason:
        return reason
    if owner.ledger.charge_for(OwnerRound.charge_key(request.experiment_id), request.server_round) is None:
        return (f"this owner was not charged for owner-level round {request.server_round} before the draw; it "
                "releases nothing the round's charge does not cover")
    return None


def _terms_problem(policy: Any, terms: OwnerRound | None) -> str | None:
    if terms is None:
        return "the request asks for an owner-level round but names no owner-level mechanism"
    if policy.owner_epsilon_budget is None:
        return "no owner-level epsilon budget set (owner-epsilon-budget): this owner accepts no owner-level round"
    if policy.require_secure_aggregation and not terms.secure:
        return ("this owner's update would reach the coordinator in the clear; its policy requires secure "
                "aggregation (require-secure-aggregation)")
    if not terms.noise_multiplier > 0 or terms.noise_multiplier < policy.min_noise_multiplier:
        return (f"the owner-level noise multiplier {terms.noise_multiplier:g} is below this owner's minimum "
                f"{policy.min_noise_multiplier:g} (min-noise-multiplier)")
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
