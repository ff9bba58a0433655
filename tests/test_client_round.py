"""An owner's round, driven with Flower's real Message and Context objects and a real ledger.

What a coordinator sends cannot lower an owner's protection: every refusal below is
signed by the owner and releases nothing.
"""

from __future__ import annotations

import math
import multiprocessing
import os

import pytest
from flwr.app import MessageType

from privfl import protocol
from privfl.client.owner_ledger import close_owner_ledgers
from privfl.client.round import run_train_round
from privfl.models import ModelSpec
from privfl.privacy.accountants import get_accountant
from privfl.privacy.keys import load_public_key
from privfl.privacy.ledger import CHARGE, REFUSAL, Entry, OwnerLedger, verify
from privfl.protocol import TrainingPlan
from tests.owner_helpers import (
    CONFIG, deployed_context, deployed_owner, message, request, simulated_context, simulated_world,
)

N = 1437 // 4 + 1  # digits train split, IID over 4 owners: owner-1 holds 360 records

pytestmark = pytest.mark.usefixtures("flower_task_identity", "fresh_owner_ledgers")


def _entry(reply) -> Entry:
    return Entry.from_signed(reply[protocol.PRIVACY][protocol.SIGNED_ENTRY])


def _sim_round(world, server_round: int, **changes):
    config, where = world
    req = request(config, server_round, owners_dir=where.owners_dir, **changes)
    return run_train_round(message(req), simulated_context(config))


def _deployed_round(policy_file, server_round: int = 1, run_config=None, **changes):
    req = request(CONFIG, server_round, **changes)
    return run_train_round(message(req), deployed_context({"policy": str(policy_file)}, run_config))


def _ledger(path) -> OwnerLedger:
    return OwnerLedger.open_readonly(path)


def _refusal(reply) -> Entry:
    entry = _entry(reply)
    assert entry.kind == REFUSAL and protocol.ARRAYS not in reply  # nothing is released
    return entry


@pytest.fixture
def world(tmp_path):
    return simulated_world(tmp_path)


def test_a_trained_round_returns_update_and_signed_entry_with_cumulative_epsilon(world):
    config, where = world
    first, second = _sim_round(world, 1), _sim_round(world, 2)
    entry = _entry(second)
    assert _entry(first).kind == entry.kind == CHARGE and entry.owner_id == "owner-1"
    event = TrainingPlan.from_config(config).privacy_event(N)
    assert entry.event == event and entry.run_id == config.experiment_id and entry.round == 2
    assert entry.cumulative_epsilon == pytest.approx(get_accountant("pld").epsilon([event, event], config.delta))
    assert entry.update_hash == protocol.update_digest(second[protocol.ARRAYS].to_torch_state_dict())
    ledger_file = where.owner_dir("owner-1") / "ledger.db"
    with _ledger(ledger_file) as ledger:
        assert [e.round for e in ledger.entries()] == [1, 2]
    assert verify(ledger_file, load_public_key(where.owner_keys_dir / "owner-1.pub")).ok
    assert second[protocol.PRIVACY][protocol.OWNER_PROTOCOL_VERSION] == protocol.PROTOCOL_VERSION


def test_a_worker_serving_more_owners_than_it_keeps_open_closes_and_reopens_their_ledgers(world, monkeypatch):
    """A simulation worker serves thousands of owners: it must not hold every ledger open (file descriptors)."""
    from privfl.client import owner_ledger

    monkeypatch.setattr(owner_ledger, "max_open_ledgers", lambda: 2)
    config, where = world
    for server_round in (1, 2):
        for partition in range(4):
            req = request(config, server_round, owners_dir=where.owners_dir)
            reply = run_train_round(message(req), simulated_context(config, partition))
            assert _entry(reply).kind == CHARGE and _entry(reply).round == server_round
            assert len(owner_ledger._OPEN) <= 2
    close_owner_ledgers()
    for owner in ("owner-0", "owner-1", "owner-2", "owner-3"):
        ledger_file = where.owner_dir(owner) / "ledger.db"
        with _ledger(ledger_file) as ledger:
            assert [e.round for e in ledger.entries()] == [1, 2]  # a reopened ledger goes on where it was
        assert verify(ledger_file, load_public_key(where.owner_keys_dir / f"{owner}.pub")).ok


def test_the_owner_refuses_when_the_next_round_would_cross_its_budget_even_after_a_restart(tmp_path):
    one_round = get_accountant("pld").epsilon([TrainingPlan.from_config(CONFIG).privacy_event(300)], 1e-5)
    policy = deployed_owner(tmp_path / "st-mary", epsilon_budget=one_round * 1.01)  # room for one round, not two
    assert _entry(_deployed_round(policy, 1)).kind == CHARGE
    for _ in range(2):  # a restarted node reads the same ledger and refuses again
        close_owner_ledgers()
        entry = _refusal(_deployed_round(policy, 2))
        assert "would exceed the budget" in entry.refusal_reason
        assert entry.cumulative_epsilon == pytest.approx(one_round, rel=1e-6)  # nothing charged
    with _ledger(tmp_path / "st-mary" / "ledger.db") as ledger:
        assert [e.kind for e in ledger.entries()] == [CHARGE, REFUSAL]  # the repeated refusal is one entry


def test_a_hostile_run_config_changes_nothing_for_a_deployed_owner(tmp_path):
    """The run config is the coordinator's: a budget of 1000 and dp = false in it are ignored."""
    one_round = get_accountant("pld").epsilon([TrainingPlan.from_config(CONFIG).privacy_event(300)], 1e-5)
    policy = deployed_owner(tmp_path / "st-mary", epsilon_budget=one_round * 1.01)
    hostile = {**CONFIG.to_mapping(), "epsilon-budget": 1000.0, "dp": False, "accountant": "prv", "device": "cuda"}
    assert _entry(_deployed_round(policy, 1, run_config=hostile)).kind == CHARGE
    entry = _refusal(_deployed_round(policy, 2, run_config=hostile))
    assert entry.epsilon_budget == pytest.approx(one_round * 1.01) and entry.accountant == "pld"


def test_a_retried_round_resends_the_charged_update_and_charges_once(world):
    config, where = world
    first = _sim_round(world, 1)
    close_owner_ledgers()  # the retry comes from a restarted node
    again = _sim_round(world, 1)
    assert _entry(again).signed_bytes() == _entry(first).signed_bytes()
    assert protocol.update_digest(again[protocol.ARRAYS].to_torch_state_dict()) == _entry(first).update_hash
    with _ledger(where.owner_dir("owner-1") / "ledger.db") as ledger:
        assert len(ledger.entries()) == 1


def _crash_after_charge(world) -> None:
    """Child process: commit the charge, then die before the update is returned."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 0, 1
    original = OwnerLedger.charge

    def charge_then_die(self, *args, **kwargs):
        original(self, *args, **kwargs)
        os._exit(17)  # killed between commit and release

    OwnerLedger.charge = charge_then_die
    _sim_round(world, 1)


def test_a_client_killed_between_commit_and_release_leaves_exactly_one_entry(world):
    config, where = world
    child = multiprocessing.get_context("spawn").Process(target=_crash_after_charge, args=(world,))
    child.start()
    child.join(120)
    assert child.exitcode == 17
    ledger_file = where.owner_dir("owner-1") / "ledger.db"
    with _ledger(ledger_file) as ledger:
        assert len(ledger.entries()) == 1
    reply = _sim_round(world, 1)  # the round runs again
    with _ledger(ledger_file) as ledger:
        entries = ledger.entries()
    assert len(entries) == 1 and _entry(reply).signed_bytes() == entries[0].signed_bytes()
    assert protocol.update_digest(reply[protocol.ARRAYS].to_torch_state_dict()) == entries[0].update_hash


def test_a_steady_round_has_one_durable_write_the_charge(world, monkeypatch):
    """The charge's commit is fsynced (synchronous = FULL); nothing else in a round calls fsync (issue 23)."""
    from privfl.client.owner_ledger import _OPEN

    _sim_round(world, 1)  # first contact: the owner's ledger is opened
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd) or real(fd))
    _entry(_sim_round(world, 2))
    assert calls == []
    (ledger, _), = _OPEN.values()
    assert ledger._store.pragma("synchronous") == 2  # FULL: the commit itself is durable before the release


def _killed_at_the_head_record(world, when: str) -> None:
    """Child process: SIGKILL itself while the node's head record moves on after a charge (no fsync there)."""
    import signal

    from flwr.supercore.task_identity import TaskIdentity

    from privfl.client import owner_ledger

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 0, 1
    original = owner_ledger.write_node_head

    def write_then_die(path, *args, **kwargs):
        if when == "before the rename":
            os.replace = lambda *_: os.kill(os.getpid(), signal.SIGKILL)  # the temporary file is written
        original(path, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)  # after: the record moved on, the update not yet returned

    owner_ledger.write_node_head = write_then_die
    _sim_round(world, 1)


@pytest.mark.parametrize("when", ["before the rename", "after the record moved on"])
def test_a_client_killed_while_its_head_record_moves_on_releases_once_charged_once(world, when):
    """kill -9 mid-round around the head record, which is written without fsync after the fsynced charge."""
    from privfl.privacy.keys import load_private_key
    from privfl.privacy.ledger.node_head import node_head_path, read_node_head

    config, where = world
    child = multiprocessing.get_context("spawn").Process(target=_killed_at_the_head_record, args=(world, when))
    child.start()
    child.join(120)
    assert child.exitcode == -9  # killed by SIGKILL, mid-round
    owner = where.owner_dir("owner-1")
    ledger_file = owner / "ledger.db"
    with _ledger(ledger_file) as ledger:
        (charged,) = ledger.entries()  # the charge is there: it was committed before the record moved
    key = next(owner.glob("*.key"))
    record = read_node_head(node_head_path(key), load_private_key(key).public_key())
    assert record is not None and record.sequence == (1 if when.startswith("after") else 0)  # never ahead
    reply = _sim_round(world, 1)  # the round runs again: the same update and entry, no second charge
    with _ledger(ledger_file) as ledger:
        assert [e.signed_bytes() for e in ledger.entries()] == [charged.signed_bytes()]
    assert _entry(reply).signed_bytes() == charged.signed_bytes()
    assert protocol.update_digest(reply[protocol.ARRAYS].to_torch_state_dict()) == charged.update_hash
    _sim_round(world, 2)  # the next charge moves the record on (a lagging record is allowed, and is caught up)
    with _ledger(ledger_file) as ledger:
        assert len(ledger.entries()) == 2
    assert read_node_head(node_head_path(key), load_private_key(key).public_key()).sequence == 2


@pytest.mark.parametrize("ask, policy, expected", [
    ({"dp": False}, {}, "requires DP"),
    ({"noise_multiplier": 0.3}, {"min_noise_multiplier": 0.8}, "requires at least 0.8 (min-noise-multiplier)"),
    ({"purpose": "marketing"}, {"allowed_purposes": ("sepsis model",)}, "purpose 'marketing' is not among"),
    ({"privacy_unit": "owner"}, {}, "privacy unit 'owner' is not one this owner accepts"),
    ({"spec": ModelSpec("mlp", 64, 10)}, {"allowed_models": ("logreg",)}, "'mlp' is not among the models"),
    ({"spec": ModelSpec("logreg", 13, 2)}, {}, "has 64 features; the model 'logreg' expects 13"),
    ({"protocol_version": 1}, {}, "protocol 1"),
    ({}, {"delta": 0.01}, "not below 1/n = 1/300 for 300 records"),
    ({}, {"max_round_epsilon": 0.01}, "per-round limit 0.01 (max-round-epsilon)"),
])
def test_a_request_below_the_owners_policy_gets_a_signed_refusal(tmp_path, ask, policy, expected):
    policy_file = deployed_owner(tmp_path / "st-mary", **policy)
    entry = _refusal(_deployed_round(policy_file, 1, **ask))
    assert expected in entry.refusal_reason
    assert verify(tmp_path / "st-mary" / "ledger.db", load_public_key(tmp_path / "st-mary" / "signing.pub")).ok


def test_an_owner_whose_policy_allows_it_trains_without_dp_and_sends_no_ledger_entry(tmp_path):
    policy_file = deployed_owner(tmp_path / "lab", dp_required=False)
    reply = _deployed_round(policy_file, 1, dp=False)
    assert reply[protocol.PRIVACY][protocol.NON_PRIVATE] is True and protocol.ARRAYS in reply
    assert math.isinf(protocol.PrivacyReceipt.non_private("lab").epsilon)


@pytest.mark.parametrize("node_config, expected", [
    ({}, "has no owner policy"),
    ({"owner-id": "st-mary", "delta": 1e-6, "data": "d.npz", "ledger": "l.db", "signing-key": "k"},
     "no epsilon budget set"),
    ({"owner-id": "st-mary", "epsilon_budget": 3.0}, "unknown key 'epsilon_budget' (did you mean 'epsilon-budget'?)"),
    ({"owner-id": "st-mary", "epsilon-budget": "3"}, "epsilon-budget = '3' has type str; expected float"),
    ({"owner-id": "st-mary", "epsilon-budget": -1.0, "delta": 1e-6}, "epsilon-budget = -1.0: must be finite and > 0"),
    ({"policy": "/nowhere/policy.toml"}, "owner policy file not found"),
])
def test_a_node_without_a_valid_policy_refuses_unsigned_with_the_reason(tmp_path, node_config, expected):
    reply = run_train_round(message(request(CONFIG, 1)), deployed_context(node_config))
    record = reply[protocol.PRIVACY]
    assert expected in record[protocol.UNSIGNED_REFUSAL] and protocol.ARRAYS not in reply


def test_a_simulated_partition_outside_the_federation_refuses_with_the_reason(world):
    config, where = world
    context = simulated_context(config)
    context.node_config["partition-id"] = 9
    reply = run_train_round(message(request(config, 1, owners_dir=where.owners_dir)), context)
    assert "partition-id 9 is outside 0..3" in reply[protocol.PRIVACY][protocol.UNSIGNED_REFUSAL]


def test_evaluation_is_answered_only_when_the_policy_says_so(tmp_path):
    from privfl.client.evaluation import run_evaluate_round
    from tests.owner_helpers import write_owner_data

    declining = deployed_owner(tmp_path / "a")
    reply = run_evaluate_round(message(request(CONFIG, 1), MessageType.EVALUATE),
                               deployed_context({"policy": str(declining)}))
    assert "answer-evaluation = false" in reply[protocol.PRIVACY][protocol.UNSIGNED_REFUSAL]

    evaluation = write_owner_data(tmp_path / "eval.npz", rows=40, seed=1)
    answering = deployed_owner(tmp_path / "b", owner_id="st-john", answer_evaluation=True,
                               evaluation_data=str(evaluation))
    reply = run_evaluate_round(message(request(CONFIG, 1), MessageType.EVALUATE),
                               deployed_context({"policy": str(answering)}))
    metrics = reply[protocol.METRICS]
    # the count of evaluation records is not public unless the policy says so (public-record-count)
    assert metrics["num-examples"] == 1 and 0 <= metrics["accuracy"] <= 1 and metrics["loss"] > 0
    assert reply[protocol.OWNER][protocol.OWNER_ID] == "st-john"


def test_an_edited_policy_or_head_record_is_read_again_despite_the_per_process_caches(tmp_path):
    """The node caches the parsed policy (by exact text) and the verified head record (by inode, size, mtime)."""
    from privfl.client.owner_ledger import open_owner_ledger
    from privfl.privacy.ledger.node_head import NodeHeadError
    from privfl.privacy.policy import load_policy_file

    policy_file = deployed_owner(tmp_path / "st-mary")
    assert load_policy_file(policy_file).epsilon_budget == 3.0
    policy_file.write_text(policy_file.read_text().replace("epsilon-budget = 3.0", "epsilon-budget = 0.5"))
    assert load_policy_file(policy_file).epsilon_budget == 0.5  # the edit counts from the next message on

    _deployed_round(policy_file, 1)  # charged: the head record moved on, and is cached
    ledger = open_owner_ledger(load_policy_file(policy_file))
    record = ledger.head_record
    body = record.read_text()
    record.write_text(body.replace('"sequence": 1', '"sequence": 2'))  # another sequence, same size
    with pytest.raises(NodeHeadError, match="not signed by this owner's key"):
        open_owner_ledger(load_policy_file(policy_file))
