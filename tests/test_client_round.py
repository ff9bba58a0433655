"""A client's round, driven with Flower's real Message and Context objects and a real ledger."""

from __future__ import annotations

import math
import multiprocessing
import os

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from privfl import protocol
from privfl.client.owner_ledger import close_owner_ledgers
from privfl.client.round import run_train_round
from privfl.client.training import TrainingPlan
from privfl.config import ExperimentConfig
from privfl.models import ModelSpec
from privfl.privacy.accountants import get_accountant
from privfl.privacy.keys import load_public_key
from privfl.privacy.ledger import CHARGE, REFUSAL, Entry, OwnerLedger, verify

CONFIG = ExperimentConfig(num_owners=4, num_rounds=3)
N = 1437 // 4 + 1  # digits train split, IID over 4 owners: owner-1 holds 360 records


pytestmark = pytest.mark.usefixtures("flower_task_identity")


def _context(config: ExperimentConfig = CONFIG, **node) -> Context:
    """A fresh node process: empty Flower state, as after a restart."""
    node_config = {"partition-id": 1, "num-partitions": config.num_owners, **node}
    return Context(run_id=7, node_id=1, node_config=node_config, state=RecordDict(), run_config=config.to_mapping())


def _message(folder, server_round: int, config: ExperimentConfig = CONFIG) -> Message:
    spec = ModelSpec(config.model, 64, 10)
    train_config = ConfigRecord({**TrainingPlan.from_config(config).to_record_values(), **spec.to_record_values(),
                                 "server-round": server_round, "ledger-dir": str(folder / "ledgers"),
                                 "keys-dir": str(folder / "keys")})
    content = RecordDict({protocol.ARRAYS: ArrayRecord(spec.build(seed=0).state_dict()),
                          protocol.TRAIN_CONFIG: train_config})
    return Message(content=content, dst_node_id=1, message_type=MessageType.TRAIN)


def _round(folder, server_round: int, config: ExperimentConfig = CONFIG, context: Context | None = None):
    return run_train_round(_message(folder, server_round, config), context or _context(config))


def _entry(reply: RecordDict) -> Entry:
    return Entry.from_signed(reply[protocol.PRIVACY][protocol.SIGNED_ENTRY])


def _ledger(folder) -> OwnerLedger:
    return OwnerLedger.open_readonly(folder / "ledgers" / "owner-1.db")


def _one_round_epsilon() -> float:
    event = TrainingPlan.from_config(CONFIG).privacy_event(N)
    return get_accountant("rdp").epsilon([event], CONFIG.delta)


def test_a_trained_round_returns_update_and_signed_entry_with_cumulative_epsilon(tmp_path):
    first, second = _round(tmp_path, 1), _round(tmp_path, 2)
    entry = _entry(second)
    assert _entry(first).kind == entry.kind == CHARGE and entry.owner_id == "owner-1"
    event = TrainingPlan.from_config(CONFIG).privacy_event(N)
    assert entry.event == event and entry.run_id == "7" and entry.round == 2
    assert entry.cumulative_epsilon == pytest.approx(get_accountant("rdp").epsilon([event, event], CONFIG.delta))
    assert entry.update_hash == protocol.update_digest(second[protocol.ARRAYS].to_torch_state_dict())
    with _ledger(tmp_path) as ledger:
        assert [e.round for e in ledger.entries()] == [1, 2]
    public = load_public_key(tmp_path / "keys" / "owner-1.pub")
    assert verify(tmp_path / "ledgers" / "owner-1.db", public).ok


def test_the_owner_refuses_when_the_next_round_would_cross_its_budget_even_after_a_restart(tmp_path):
    budget = {"epsilon-budget": _one_round_epsilon() * 1.01}  # room for one round, not two
    assert _entry(_round(tmp_path, 1, context=_context(**budget))).kind == CHARGE
    for attempt in range(2):  # a restarted node reads the same ledger and refuses again
        close_owner_ledgers()
        reply = _round(tmp_path, 2, context=_context(**budget))
        entry = _entry(reply)
        assert entry.kind == REFUSAL and "would exceed the budget" in entry.refusal_reason
        assert protocol.ARRAYS not in reply  # nothing is released
        assert entry.cumulative_epsilon == pytest.approx(_one_round_epsilon(), rel=1e-6)  # nothing charged
    with _ledger(tmp_path) as ledger:
        assert [e.kind for e in ledger.entries()] == [CHARGE, REFUSAL]  # the repeated refusal is one entry


def test_a_retried_round_resends_the_charged_update_and_charges_once(tmp_path):
    first = _round(tmp_path, 1)
    close_owner_ledgers()  # the retry comes from a restarted node
    again = _round(tmp_path, 1, context=_context())
    assert _entry(again).signed_bytes() == _entry(first).signed_bytes()
    assert protocol.update_digest(again[protocol.ARRAYS].to_torch_state_dict()) == _entry(first).update_hash
    with _ledger(tmp_path) as ledger:
        assert len(ledger.entries()) == 1


def _crash_after_charge(folder) -> None:
    """Child process: commit the charge, then die before the update is returned."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 0, 1
    original = OwnerLedger.charge

    def charge_then_die(self, *args, **kwargs):
        original(self, *args, **kwargs)
        os._exit(17)  # killed between commit and release

    OwnerLedger.charge = charge_then_die
    run_train_round(_message(folder, 1), _context())


def test_a_client_killed_between_commit_and_release_leaves_exactly_one_entry(tmp_path):
    child = multiprocessing.get_context("spawn").Process(target=_crash_after_charge, args=(tmp_path,))
    child.start()
    child.join(120)
    assert child.exitcode == 17
    with _ledger(tmp_path) as ledger:
        assert len(ledger.entries()) == 1
    reply = _round(tmp_path, 1)  # the round runs again
    with _ledger(tmp_path) as ledger:
        entries = ledger.entries()
    assert len(entries) == 1 and _entry(reply).signed_bytes() == entries[0].signed_bytes()
    assert protocol.update_digest(reply[protocol.ARRAYS].to_torch_state_dict()) == entries[0].update_hash


def test_an_owner_that_requires_dp_refuses_non_private_training(tmp_path):
    reply = run_train_round(_message(tmp_path, 1, CONFIG.replace(dp=False)), _context())  # owner's config: dp
    entry = _entry(reply)
    assert entry.kind == REFUSAL and "requires DP" in entry.refusal_reason


def test_non_private_owner_sends_no_ledger_entry(tmp_path):
    config = CONFIG.replace(dp=False)
    reply = _round(tmp_path, 1, config, _context(config))
    assert reply[protocol.PRIVACY][protocol.NON_PRIVATE] is True
    assert math.isinf(protocol.PrivacyReceipt.non_private("owner-1").epsilon)


def test_delta_must_be_below_one_over_n(tmp_path):
    with pytest.raises(ValueError, match="not below 1/n"):
        _round(tmp_path, 1, context=_context(delta=0.01))


def test_missing_partition_is_a_clear_error(tmp_path):
    context = Context(run_id=7, node_id=1, node_config={}, state=RecordDict(), run_config=CONFIG.to_mapping())
    with pytest.raises(ValueError, match="neither 'data-path'.*nor 'partition-id'"):
        run_train_round(_message(tmp_path, 1), context)


def test_partition_outside_the_federation_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="partition-id 9 is outside 0..3"):
        _round(tmp_path, 1, context=_context(**{"partition-id": 9}))
