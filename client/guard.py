"""The owner's guard: does a request stay within the owner's policy and budget?

Every rule here compares what the coordinator asks for with what the owner's own
policy allows (DESIGN principle 1).  A rule that fails yields the reason the owner
records in its signed refusal, naming the policy key, so the coordinator, the owner's
IT team and an auditor can all see why nothing was released.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from privfl.client.data import OwnerData
from privfl.models import MODEL_NAMES
from privfl.privacy.accountants import get_accountant
from privfl.privacy.budget import BudgetDecision, decide_next_release, delta_problem, noise_problem
from privfl.privacy.events import DpEvent
from privfl.privacy.planning import plan_noise
from privfl.privacy.policy import OWNER, RECORD, OwnerPolicy, PolicyError
from privfl.protocol import RoundRequest, TrainingPlan


def review_request(policy: OwnerPolicy, request: RoundRequest, data: OwnerData, *, training: bool) -> str | None:
    """Why the owner refuses ``request`` (None: it is within the policy); the plan and budget aside.

    For training, the plan is checked next (:func:`plan_problem`), once the owner has
    planned its own noise if the coordinator sent a target.
    """
    if not policy.allows_purpose(request.purpose):
        return (f"purpose {request.purpose!r} is not among the purposes this owner allows "
                f"(allowed-purposes: {', '.join(policy.allowed_purposes)})")
    if request.privacy_unit not in policy.privacy_units:
        return (f"privacy unit {request.privacy_unit!r} is not one this owner accepts "
                f"(privacy-units: {', '.join(policy.privacy_units)})")
    model = request.model.name
    if "*" not in policy.allowed_models and model not in policy.allowed_models:
        kind = "built-in model" if model in MODEL_NAMES else "model import path"
        return f"{kind} {model!r} is not among the models this owner allows (allowed-models: " \
               f"{', '.join(policy.allowed_models)})"
    return _shape_problem(request, data, training=training)


def plan_problem(policy: OwnerPolicy, plan: TrainingPlan, data: OwnerData, unit: str = RECORD) -> str | None:
    """Why the owner refuses to train under ``plan`` (its noise already planned, if it plans its own).

    Without DP-SGD, an owner-level round's release is covered by its owner-level charge
    (the coordinator noises the sum); any other release without DP needs a policy that
    does not require DP.
    """
    if not plan.dp:
        return dp_required_problem(policy, plan, unit)
    noise = noise_problem(plan.noise_multiplier, policy.min_noise_multiplier)
    if noise:
        return noise
    problem = delta_problem(policy.delta, len(data.train))
    return f"{problem} (the owner policy's delta)" if problem else None


def dp_required_problem(policy: OwnerPolicy, plan: TrainingPlan, unit: str = RECORD) -> str | None:
    """Why a release without DP-SGD is refused (None: the plan has DP-SGD, or the policy allows it).

    An owner-level round without DP-SGD is no exception: its noise is added by the coordinator,
    which sees the owner's update (or, with SecAgg+, the cohort's sum) before any noise, so
    nothing this owner's own process does would protect a record from the coordinator.
    """
    if plan.dp or not policy.dp_required:
        return None
    if unit == OWNER:
        return ("the request asks for an owner-level round without DP-SGD; its noise would be added by the "
                "coordinator, after it has seen this owner's update without noise, and this owner's policy "
                "requires DP (dp-required = true): it releases owner-level updates only with DP-SGD (dp = true)")
    return ("the request asks for training without differential privacy; this owner's policy requires DP "
            "(dp-required = true)")


def _shape_problem(request: RoundRequest, data: OwnerData, *, training: bool) -> str | None:
    spec = request.model
    held = data.train if training or data.evaluation is None else data.evaluation
    if held.num_features != spec.num_features:
        return (f"this owner's data has {held.num_features} features; the model {spec.name!r} expects "
                f"{spec.num_features}")
    if len(held) and int(held.labels.max()) >= spec.num_classes:
        return (f"this owner's data has label {int(held.labels.max())}; the model {spec.name!r} has "
                f"{spec.num_classes} classes (labels 0..{spec.num_classes - 1})")
    return None


def owner_plan(policy: OwnerPolicy, request: RoundRequest, records: int,
               spent_elsewhere: Sequence[DpEvent]) -> TrainingPlan:
    """The request's plan with this owner's own noise, when the coordinator sent a target (privacy/planning.py)."""
    plan = request.plan
    if not plan.owner_planned:
        return plan
    noise = plan_noise(accountant=policy.accountant, target_epsilon=plan.target_epsilon, delta=policy.delta,
                       records=records, batch_size=plan.batch_size, local_epochs=plan.local_epochs,
                       rounds=max(plan.num_rounds, request.server_round), spent=spent_elsewhere,
                       budget=policy.epsilon_budget)
    return replace(plan, noise_multiplier=noise.noise_multiplier)


def decide_release(policy: OwnerPolicy, spent: Sequence[DpEvent], planned: DpEvent,
                   unit: str = RECORD) -> BudgetDecision:
    """The budget decision for the next release of one unit, with the owner's accountant and per-round cap.

    Raises PolicyError when the accountant cannot evaluate the event at all: dp-accounting's PLD
    overflows on a coordinator-chosen noise multiplier such as 1e300, and that used to crash the
    node instead of answering with a signed refusal.
    """
    try:
        return decide_next_release(spent, planned, policy.budget_of(unit), get_accountant(policy.accountant),
                                   max_round_epsilon=policy.max_round_epsilon)
    except ArithmeticError as err:
        raise PolicyError(f"this owner's accountant ({policy.accountant}) cannot evaluate {planned}: "
                          f"{type(err).__name__}: {err}") from None


def released_count(policy: OwnerPolicy, plan: TrainingPlan, records: int) -> int:
    """The number of training records an update says it was trained on (its FedAvg weight).

    The exact count only where the owner's policy declares it public
    (``public-record-count``); otherwise batches per epoch x batch size, which the
    round's DP event already discloses (Opacus samples at rate 1 / batches per epoch),
    so the weight tells the coordinator nothing the receipt does not.
    """
    if policy.public_record_count:
        return records
    return plan.batches_per_epoch(records) * plan.batch_size
