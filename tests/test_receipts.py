"""The server accepts an update only with the owner's genuine receipt for exactly that release."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from privfl import protocol
from privfl.protocol import TrainingPlan
from privfl.config import ExperimentConfig
from privfl.privacy.keys import generate_key, generate_owner_keys, load_private_key
from privfl.privacy.ledger.anchor import AGGREGATED
from privfl.privacy.ledger.registry import CoordinatorRegistry
from privfl.privacy.ledger import FederationLedger, OwnerLedger, ReceiptRejected
from privfl.server.receipts import ReceiptCheck

PLAN = TrainingPlan.from_config(ExperimentConfig())
EVENT = PLAN.privacy_event(144)
UPDATE = OrderedDict(w=torch.arange(6.0).reshape(2, 3), b=torch.zeros(2))


pytestmark = pytest.mark.usefixtures("flower_task_identity")


@pytest.fixture
def world(tmp_path):
    keys = tmp_path / "keys"
    generate_owner_keys(keys, "alice")
    generate_owner_keys(tmp_path / "other-keys", "alice")  # a forger's key under the same name
    coordinator = generate_key()
    federation = FederationLedger.open(tmp_path / "federation.db", coordinator.public_key())
    registry = CoordinatorRegistry.open(tmp_path / "registry.db", coordinator)
    yield tmp_path, ReceiptCheck(federation, registry, keys, PLAN, experiment_id="7",
                                 coordinator_key=coordinator), federation
    federation.close()
    registry.close()


def _owner(tmp_path, keys="keys", name="alice.db") -> OwnerLedger:
    return OwnerLedger.open(tmp_path / name, "alice", load_private_key(tmp_path / keys / "alice.key"))


def _charge(ledger, *, round_=1, event=EVENT, update=UPDATE, clipping=PLAN.max_grad_norm, run_id="7"):
    return ledger.charge(run_id, round_, event, clipping_norm=clipping, delta=1e-5, epsilon_budget=50,
                         accountant="rdp", update_hash=protocol.update_digest(update))


def _reply(entry_bytes: bytes | None, update=UPDATE, node: int = 3) -> Message:
    asked = Message(content=RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    records = {protocol.ARRAYS: ArrayRecord(update), protocol.METRICS: MetricRecord({"num-examples": 144})}
    if entry_bytes is not None:
        records[protocol.PRIVACY] = protocol.signed_receipt(entry_bytes)
    return Message(content=RecordDict(records), reply_to=asked)


def test_a_genuine_receipt_is_accepted_and_kept(world):
    tmp_path, check, federation = world
    with _owner(tmp_path) as owner:
        entry = _charge(owner)
    accepted = check.accept(_reply(entry.signed_bytes()), server_round=1)
    receipt = accepted.receipt
    assert receipt.owner_id == "alice" and receipt.status == protocol.TRAINED
    assert receipt.epsilon == entry.cumulative_epsilon
    assert federation.entries("alice") == []  # nothing is written per reply ...
    check.commit(1, [(accepted, AGGREGATED)])  # ... but once per round: kept and anchored
    assert [e.signed_bytes() for e in federation.entries("alice")] == [entry.signed_bytes()]
    assert check.anchored_head("alice") == (entry.sequence, entry.hash)


def test_missing_and_unsigned_receipts_are_rejected(world):
    _, check, _ = world
    with pytest.raises(ReceiptRejected, match="no privacy receipt"):
        check.accept(_reply(None), server_round=1)
    bare = _reply(None)
    bare.content[protocol.PRIVACY] = ConfigRecord({"owner-id": "alice"})
    with pytest.raises(ReceiptRejected, match="not a signed ledger entry"):
        check.accept(bare, server_round=1)


def test_a_receipt_signed_with_another_key_is_rejected(world):
    tmp_path, check, federation = world
    with _owner(tmp_path, keys="other-keys", name="forged.db") as forger:
        forged = _charge(forger)
    with pytest.raises(ReceiptRejected, match="expected the owner.s key"):
        check.accept(_reply(forged.signed_bytes()), server_round=1)
    assert federation.entries("alice") == []


def test_a_tampered_receipt_is_rejected(world):
    tmp_path, check, _ = world
    with _owner(tmp_path) as owner:
        signed = bytearray(_charge(owner).signed_bytes())
    signed[12] ^= 0x01
    with pytest.raises(ReceiptRejected):
        check.accept(_reply(bytes(signed)), server_round=1)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(event=PLAN.privacy_event(144).__class__(9.0, EVENT.sample_rate, EVENT.steps)), "noise 9.0"),
        (dict(clipping=5.0), "clipped at 5.0"),
        (dict(event=EVENT.__class__(EVENT.noise_multiplier, EVENT.sample_rate, EVENT.steps * 3)), "local epochs"),
        (dict(round_=2), "round 2"),
        (dict(run_id="8"), "experiment 8"),
    ],
)
def test_a_receipt_for_another_release_is_rejected(world, changes, message):
    tmp_path, check, _ = world
    with _owner(tmp_path) as owner:
        entry = _charge(owner, **changes)
    with pytest.raises(ReceiptRejected, match=message):
        check.accept(_reply(entry.signed_bytes()), server_round=1)


def test_an_update_swapped_after_the_charge_is_rejected(world):
    tmp_path, check, _ = world
    with _owner(tmp_path) as owner:
        entry = _charge(owner)
    swapped = OrderedDict(w=UPDATE["w"] + 1, b=UPDATE["b"])
    with pytest.raises(ReceiptRejected, match="not the one the owner charged for"):
        check.accept(_reply(entry.signed_bytes(), update=swapped), server_round=1)


def test_an_owner_without_a_registered_key_is_rejected(world):
    tmp_path, check, _ = world
    generate_owner_keys(tmp_path / "unregistered", "mallory")
    key = load_private_key(tmp_path / "unregistered" / "mallory.key")
    with OwnerLedger.open(tmp_path / "mallory.db", "mallory", key) as mallory:
        entry = _charge(mallory)
    with pytest.raises(ReceiptRejected, match="no registered public key"):
        check.accept(_reply(entry.signed_bytes()), server_round=1)


def test_one_node_cannot_speak_for_two_owners(world):
    tmp_path, check, _ = world
    with _owner(tmp_path) as owner:
        check.accept(_reply(_charge(owner).signed_bytes(), node=3), server_round=1)
    generate_owner_keys(tmp_path / "keys", "bob")
    with OwnerLedger.open(tmp_path / "bob.db", "bob", load_private_key(tmp_path / "keys" / "bob.key")) as bob:
        entry = _charge(bob, round_=2)
    with pytest.raises(ReceiptRejected, match="spoke for owner alice"):
        check.accept(_reply(entry.signed_bytes(), node=3), server_round=2)
