"""A client's round, driven with Flower's real Message and Context objects."""

from __future__ import annotations

import math
import warnings

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from privfl import protocol
from privfl.client.round import run_train_round
from privfl.client.training import TrainingPlan
from privfl.config import ExperimentConfig
from privfl.models import ModelSpec
from privfl.privacy.accountants import get_accountant

CONFIG = ExperimentConfig(num_owners=4, num_rounds=3)


@pytest.fixture(autouse=True)
def _task_identity():
    """Flower's runtime sets who is sending; here the test plays the ServerApp of run 7."""
    from flwr.supercore.task_identity import TaskIdentity

    previous = TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = previous


def _context(config: ExperimentConfig = CONFIG, **node) -> Context:
    node_config = {"partition-id": 1, "num-partitions": config.num_owners, **node}
    return Context(run_id=7, node_id=1, node_config=node_config, state=RecordDict(), run_config=config.to_mapping())


def _message(server_round: int, config: ExperimentConfig = CONFIG) -> Message:
    spec = ModelSpec(config.model, 64, 10)
    train_config = ConfigRecord({**TrainingPlan.from_config(config).to_record_values(), **spec.to_record_values(),
                                 "server-round": server_round})
    content = RecordDict({protocol.ARRAYS: ArrayRecord(spec.build(seed=0).state_dict()),
                          protocol.TRAIN_CONFIG: train_config})
    return Message(content=content, dst_node_id=1, message_type=MessageType.TRAIN)


def _round(context: Context, server_round: int, config: ExperimentConfig = CONFIG) -> RecordDict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_train_round(_message(server_round, config), context)


def _receipt(reply: RecordDict) -> protocol.PrivacyReceipt:
    return protocol.PrivacyReceipt.from_record(reply[protocol.PRIVACY])


def test_a_trained_round_returns_update_metrics_and_cumulative_epsilon():
    context = _context()
    first, second = _receipt(_round(context, 1)), _receipt(_round(context, 2))
    assert first.status == second.status == protocol.TRAINED
    assert first.owner_id == "owner-1"
    n = 1437 // 4 + 1  # digits train split, IID over 4 owners
    event = TrainingPlan.from_config(CONFIG).privacy_event(n)
    assert (second.noise_multiplier, second.sample_rate, second.steps) == (
        event.noise_multiplier, event.sample_rate, event.steps)
    expected = get_accountant("rdp").epsilon([event, event], CONFIG.delta)
    assert second.epsilon == pytest.approx(expected) and second.epsilon > first.epsilon


def test_the_owner_refuses_when_the_next_round_would_cross_its_budget():
    plan_event = TrainingPlan.from_config(CONFIG).privacy_event(360)
    one_round = get_accountant("rdp").epsilon([plan_event], CONFIG.delta)
    context = _context(**{"epsilon-budget": one_round * 1.01})  # room for one round, not two
    assert _receipt(_round(context, 1)).status == protocol.TRAINED
    reply = _round(context, 2)
    receipt = _receipt(reply)
    assert receipt.status == protocol.REFUSED and "would exceed the budget" in receipt.reason
    assert protocol.ARRAYS not in reply  # nothing is released
    assert receipt.epsilon == pytest.approx(one_round, rel=1e-6)  # refusing charges nothing


def test_a_retried_round_is_not_charged_twice():
    context = _context()
    first = _receipt(_round(context, 1))
    again = _receipt(_round(context, 1))
    assert again.epsilon == pytest.approx(first.epsilon)


def test_an_owner_that_requires_dp_refuses_non_private_training():
    context = _context()  # the owner's own config: dp = true
    reply = _round(context, 1, CONFIG.replace(dp=False))
    assert _receipt(reply).status == protocol.REFUSED and "requires DP" in _receipt(reply).reason


def test_non_private_owner_reports_infinite_epsilon():
    config = CONFIG.replace(dp=False)
    assert math.isinf(_receipt(_round(_context(config), 1, config)).epsilon)


def test_delta_must_be_below_one_over_n():
    with pytest.raises(ValueError, match="not below 1/n"):
        _round(_context(delta=0.01), 1)


def test_missing_partition_is_a_clear_error():
    context = Context(run_id=7, node_id=1, node_config={}, state=RecordDict(), run_config=CONFIG.to_mapping())
    with pytest.raises(ValueError, match="neither 'data-path'.*nor 'partition-id'"):
        run_train_round(_message(1), context)


def test_partition_outside_the_federation_is_a_clear_error():
    with pytest.raises(ValueError, match="partition-id 9 is outside 0..3"):
        _round(_context(**{"partition-id": 9}), 1)
