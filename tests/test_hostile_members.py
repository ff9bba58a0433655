"""A registered but malicious institution cannot crash, skew or take over a federation (issue 24, items 2-4).

privfl's ServerApp runs in this process against privfl's ClientApp at every node, with
real ledgers and real keys (bench.inprocess_grid, no Flower runtime).  One node is the
malicious institution: it runs privfl's own client, then rewrites the reply before it
leaves, as a modified ClientApp could; whatever it signs, it signs with its own key.
"""

from __future__ import annotations

import json
import math
import time
import tracemalloc
import warnings
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.inprocess_grid import InProcessGrid
from privfl import protocol
from privfl.client import round as client_round
from privfl.client.app import app as client_app
from privfl.client.owner_ledger import close_owner_ledgers
from privfl.config import ExperimentConfig
from privfl.privacy.events import PoissonSubsampledGaussian
from privfl.privacy.keys import generate_key, generate_owner_keys, load_private_key
from privfl.privacy.ledger import Entry, FederationLedger, OwnerLedger, ReceiptRejected
from privfl.privacy.ledger.entry import encode_entry
from privfl.privacy.ledger.identity import sign_answer
from privfl.privacy.ledger.registry import CoordinatorRegistry
from privfl.privacy.ledger.signing import sign_entry
from privfl.privacy.policy import POLICY_FILE, load_policy_file
from privfl.protocol import TrainingPlan
from privfl.server.app import app as server_app
from privfl.server.history import RunHistory
from privfl.server.receipts import ReceiptCheck
from privfl.server.run_dir import settle
from privfl.server.strategy import BudgetAwareFedAvg

OWNERS = 3
HOSTILE = 3  # the malicious institution's node: it serves owner-2 (simulated partition 2)
HOSTILE_OWNER, VICTIM = "owner-2", "owner-0"

Tamper = Callable[[Message, Message, Context], None]  # (what it was asked, privfl's reply, its context): rewrite


class HostileGrid(InProcessGrid):
    """privfl's ClientApp at every node; node HOSTILE's replies are rewritten by ``tamper`` before they leave.

    Nodes in ``late`` connect only once a round has trained (an owner that joins later).
    """

    def __init__(self, run_config: dict[str, Any], tamper: Tamper, late: tuple[int, ...] = ()) -> None:
        super().__init__(client_app, OWNERS, run_config)
        self.tamper, self.late, self.trained = tamper, set(late), False
        self.sent: dict[int, list[Message]] = defaultdict(list)

    def get_node_ids(self):
        return [n for n in self.contexts if self.trained or n not in self.late]

    def send_and_receive(self, messages, *, timeout=None):
        from flwr.supercore.task_identity import TaskIdentity

        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            self.sent[node].append(message)
            reply = super().send_and_receive([message], timeout=timeout)[0]
            if node == HOSTILE:
                TaskIdentity.node_id = node
                self.tamper(message, reply, self.contexts[node])
                TaskIdentity.node_id = 0
            replies.append(reply)
        if any(m.metadata.message_type == MessageType.TRAIN for m in messages):
            self.trained = True
        return replies


def _config(tmp_path: Path, **changes: Any) -> ExperimentConfig:
    values = dict(num_owners=OWNERS, num_rounds=2, run_dir=str(tmp_path / "run"), federated_evaluation="off",
                  min_owners=2)
    return settle(ExperimentConfig(**{**values, **changes}))


def _run(config: ExperimentConfig, tamper: Tamper, late: tuple[int, ...] = ()) -> tuple[dict, HostileGrid]:
    """Run privfl's ServerApp to the end; whatever it raises fails the test (the run must survive)."""
    import logging

    from flwr.supercore.task_identity import TaskIdentity

    grid = HostileGrid(config.to_mapping(), tamper, late)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=dict(config.to_mapping()))
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    logging.getLogger("flwr").setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server_app(grid, context)
    finally:
        close_owner_ledgers()
    return json.loads((Path(config.run_dir) / "history.json").read_text()), grid


def _kind(asked: Message) -> str:
    config = asked.content.config_records.get(protocol.TRAIN_CONFIG, {})
    if asked.metadata.message_type == MessageType.QUERY:
        return "query"
    if asked.metadata.message_type == MessageType.EVALUATE:
        return "evaluate"
    return "charge" if config.get("stage") == protocol.OWNER_CHARGE_STAGE else "train"


def _owner_key(config: ExperimentConfig, owner_id: str):
    """The owner's signing key (the ServerApp enrolls simulated owners when it starts: call it from a tamper)."""
    policy = load_policy_file(Path(config.federation_dir) / "owners" / owner_id / POLICY_FILE)
    return load_private_key(policy.signing_key, policy.passphrase())


def _resigned(entry: Entry, key, **changes: Any) -> bytes:
    """``entry`` with ``changes``, signed by ``key``: what an institution can sign with its own key."""
    fields = dict(sequence=entry.sequence, previous_hash=entry.previous_hash, run_id=entry.run_id, round=entry.round,
                  owner_id=entry.owner_id, kind=entry.kind, event=entry.event, clipping_norm=entry.clipping_norm,
                  privacy_unit=entry.privacy_unit, delta=entry.delta, accountant=entry.accountant,
                  cumulative_epsilon=entry.cumulative_epsilon, epsilon_budget=entry.epsilon_budget,
                  purpose=entry.purpose, update_hash=entry.update_hash, refusal_reason=entry.refusal_reason)
    return sign_entry(encode_entry(**{**fields, **changes}), key).SerializeToString()


def _failures(history: dict, node: int = HOSTILE) -> str:
    return " | ".join(f for r in history["rounds"] for f in r["failures"] if f.startswith(f"node {node}:"))


def _honest_rounds_went_on(history: dict, hostile_trained: bool = False) -> None:
    rounds = [r for r in history["rounds"] if r["round"]]
    assert rounds and history["status"] == "finished"
    for record in rounds:
        honest = {o for o in record["participants"] if o != HOSTILE_OWNER}
        assert honest == {"owner-0", "owner-1"}, record
        if not hostile_trained:
            assert HOSTILE_OWNER not in record["participants"], record


# -- item 2: one institution cannot kill the run -------------------------------------------


def test_a_receipt_with_sequence_2_63_is_that_nodes_failure_not_the_runs(tmp_path):
    """Signed by the institution's own key; SQLite's integers end at 2^63 - 1 (it raised OverflowError)."""
    config = _config(tmp_path)

    def tamper(asked, reply, context):
        if _kind(asked) == "train" and protocol.PRIVACY in reply.content.config_records:
            entry = Entry.from_signed(reply.content[protocol.PRIVACY][protocol.SIGNED_ENTRY])
            resigned = _resigned(entry, _owner_key(config, HOSTILE_OWNER), sequence=2**63)
            reply.content[protocol.PRIVACY] = protocol.signed_receipt(resigned)

    history, _ = _run(config, tamper)
    _honest_rounds_went_on(history)
    assert "outside 1.." in _failures(history)


@pytest.fixture
def receipts(tmp_path):
    """The coordinator's receipt check, with real ledgers; the institution 'mallory' has a registered key."""
    keys = tmp_path / "keys"
    generate_owner_keys(keys, "mallory")
    coordinator = generate_key()
    federation = FederationLedger.open(tmp_path / "federation.db", coordinator.public_key())
    registry = CoordinatorRegistry.open(tmp_path / "registry.db", coordinator)
    plan = TrainingPlan.from_config(ExperimentConfig(dp=True, accountant="pld"))
    check = ReceiptCheck(federation, registry, keys, plan, experiment_id="7", coordinator_key=coordinator)
    yield check, load_private_key(keys / "mallory.key"), plan
    federation.close()
    registry.close()


UPDATE = OrderedDict(w=torch.arange(6.0).reshape(2, 3), b=torch.zeros(2))


def _receipt_reply(signed: bytes, bridge: list[bytes] = (), node: int = 3) -> Message:
    asked = Message(content=RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    records = {protocol.ARRAYS: ArrayRecord(UPDATE), protocol.METRICS: MetricRecord({"num-examples": 144}),
               protocol.PRIVACY: protocol.signed_receipt(signed, list(bridge))}
    return Message(content=RecordDict(records), reply_to=asked)


def _signed(key, sequence: int, event, *, previous: bytes = bytes(32), round_: int = 1, accountant: str = "pld",
            epsilon: float = 1e6) -> bytes:
    return sign_entry(encode_entry(
        sequence=sequence, previous_hash=previous, run_id="7", round=round_, owner_id="mallory", kind="charge",
        event=event, clipping_norm=1.0, privacy_unit="record", delta=1e-5, accountant=accountant,
        cumulative_epsilon=epsilon, epsilon_budget=1e9, purpose="", update_hash=protocol.update_digest(UPDATE),
        refusal_reason=""), key).SerializeToString()


@pytest.mark.usefixtures("flower_task_identity")
def test_a_receipt_with_sequence_3e7_is_checked_in_constant_memory(receipts):
    """The check once built the set of every sequence up to the receipt's (2.5 GB for 3e7, MemoryError for 1e9)."""
    check, key, plan = receipts
    signed = _signed(key, 30_000_000, plan.privacy_event(144))
    tracemalloc.start()
    try:
        check.accept(_receipt_reply(signed), server_round=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB"


@pytest.mark.usefixtures("flower_task_identity")
@pytest.mark.parametrize("event, accountant, where", [
    (PoissonSubsampledGaussian(0.005, 1 / 3, 3), "pld", "receipt"),  # minutes and GBs under PLD
    (PoissonSubsampledGaussian(1.0, 1e-6, 1_000_000), "prv", "receipt"),  # minutes and GBs under PRV
    (PoissonSubsampledGaussian(0.005, 1 / 3, 3), "pld", "bridge"),  # a costly charge earlier in its chain
])
def test_a_costly_event_is_refused_before_any_accountant_composes_it(receipts, event, accountant, where):
    check, key, plan = receipts
    if where == "receipt":
        reply = _receipt_reply(_signed(key, 1, event, accountant=accountant))
    else:  # the receipt is for exactly the plan's release; the entry before it charged the costly event
        first = _signed(key, 1, event, accountant=accountant, round_=0)
        entry = Entry.from_signed(first)
        from privfl.privacy.ledger.chain import entry_hash

        receipt = _signed(key, 2, plan.privacy_event(144), previous=entry_hash(entry.entry_bytes),
                          accountant=accountant)
        reply = _receipt_reply(receipt, [first])
    started = time.perf_counter()
    with pytest.raises(ReceiptRejected, match="composes"):
        check.accept(reply, server_round=1)
    assert time.perf_counter() - started < 20  # the accountant alone ran for minutes here


def _set(content: RecordDict, key: str, record: Any) -> None:
    content[key] = record


MALFORMED = {
    # an answer to the query without an owner id, and with a head that is not a number
    "query without owner id": ("query", lambda c: _set(c, protocol.OWNER, ConfigRecord({protocol.HEAD_SEQUENCE: 0}))),
    "query head 'abc'": ("query", lambda c: c[protocol.OWNER].__setitem__(protocol.HEAD_SEQUENCE, "abc")),
    "train list loss": ("train", lambda c: c[protocol.METRICS].__setitem__("train-loss", [1.0, 2.0])),
    "train extra metric": ("train", lambda c: c[protocol.METRICS].__setitem__("gradient-norm", 3.0)),
    "evaluation count NaN": ("evaluate", lambda c: c[protocol.METRICS].__setitem__("num-examples", math.nan)),
    "evaluation count inf": ("evaluate", lambda c: c[protocol.METRICS].__setitem__("num-examples", math.inf)),
    "evaluation list loss": ("evaluate", lambda c: c[protocol.METRICS].__setitem__("loss", [0.1, 0.2])),
    "evaluation extra metric": ("evaluate", lambda c: c[protocol.METRICS].__setitem__("f1", 0.5)),
    "evaluation without owner": ("evaluate", lambda c: c.pop(protocol.OWNER)),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_reply_is_that_nodes_failure_and_the_run_goes_on(tmp_path, name):
    stage, corrupt = MALFORMED[name]

    def tamper(asked, reply, context):
        if _kind(asked) == stage and not reply.has_error():
            corrupt(reply.content)

    history, _ = _run(_config(tmp_path, federated_evaluation="every"), tamper)
    rounds = [r for r in history["rounds"] if r["round"]]
    assert history["status"] == "finished"
    for record in rounds:
        assert {"owner-0", "owner-1"} <= set(record["participants"]), record
        evaluated = record["federated_evaluation"]
        assert evaluated and {"owner-0", "owner-1"} <= set(evaluated["owners"]), record
        assert math.isfinite(evaluated["accuracy"]) and 0 <= evaluated["accuracy"] <= 1
    if stage == "query":  # never bound to an owner: never asked to train or evaluate
        assert all(HOSTILE_OWNER not in r["participants"] for r in rounds)
        assert "bound to no owner" in _failures(history)
    elif name in ("evaluation extra metric", "evaluation without owner"):  # its figures, under its bound owner
        assert all(set(r["federated_evaluation"]["owners"]) == {"owner-0", "owner-1", HOSTILE_OWNER} for r in rounds)
    elif stage == "evaluate":
        assert all(HOSTILE_OWNER not in r["federated_evaluation"]["owners"] for r in rounds)
        assert "evaluation reply" in _failures(history)


# -- item 3: one institution cannot replace the global model ----------------------------------


def test_a_claimed_count_of_1e9_with_a_genuine_receipt_does_not_replace_the_global_model(tmp_path, monkeypatch):
    """Weights of +-40 sent with num-examples 10^9, charged and signed by the institution itself: FedAvg's
    weight and the norm bound both came from the claimed count, and the global weights became ~40."""
    train = client_round._train

    def malicious_train(owner, request, msg):
        update = train(owner, request, msg)
        if owner.owner_id != HOSTILE_OWNER:
            return update
        state = OrderedDict((k, torch.full_like(v, 40.0) * (-1) ** torch.arange(v.numel()).reshape(v.shape))
                            for k, v in update.state_dict.items())
        return replace(update, state_dict=state, num_examples=10**9)

    monkeypatch.setattr(client_round, "_train", malicious_train)
    config = _config(tmp_path, num_rounds=2)
    history, _ = _run(config, lambda *_: None)
    _honest_rounds_went_on(history, hostile_trained=True)  # it trained and was charged; its update is dropped
    assert all("exceeds" in r["rejected_updates"].get(HOSTILE_OWNER, "") for r in history["rounds"] if r["round"])
    model = torch.load(Path(config.run_dir) / "model.pt")
    assert max(float(v.abs().max()) for v in model.values()) < 5


def test_a_signed_event_of_many_steps_does_not_replace_the_global_model(tmp_path):
    """The institution signs a release of 5,000 steps (as if it held 5,000 batches) for weights of +-40: its
    FedAvg weight and its own norm bound are then huge, yet the round's bound is the owners' median's."""
    config = _config(tmp_path, num_rounds=1)

    def tamper(asked, reply, context):
        if _kind(asked) != "train" or protocol.PRIVACY not in reply.content.config_records:
            return
        from privfl.privacy.accountants import get_accountant

        entry = Entry.from_signed(reply.content[protocol.PRIVACY][protocol.SIGNED_ENTRY])
        arrays = reply.content[protocol.ARRAYS]
        state = OrderedDict((k, torch.full_like(torch.from_numpy(v.numpy()), 40.0)) for k, v in arrays.items())
        event = PoissonSubsampledGaussian(entry.event.noise_multiplier, 1 / 5000, 5000)
        epsilon = get_accountant(entry.accountant).epsilon([event], entry.delta)
        signed = _resigned(entry, _owner_key(config, HOSTILE_OWNER), event=event, cumulative_epsilon=epsilon,
                           update_hash=protocol.update_digest(state))
        reply.content[protocol.ARRAYS] = ArrayRecord(state)
        reply.content[protocol.PRIVACY] = protocol.signed_receipt(signed)

    history, grid = _run(config, tamper)
    _honest_rounds_went_on(history, hostile_trained=True)
    assert not history["rounds"][-1]["rejected_updates"]  # within its own (huge) bound: averaged, but scaled
    initial = next(m for m in grid.sent[HOSTILE] if _kind(m) == "train").content[protocol.ARRAYS]
    model = torch.load(Path(config.run_dir) / "model.pt")
    moved = math.sqrt(sum(float(((model[k].double() - torch.from_numpy(initial[k].numpy()).double()) ** 2).sum())
                          for k in model))
    size = sum(v.numel() for v in model.values())
    plan = TrainingPlan.from_config(config)
    honest = max(plan.update_norm_bound(PoissonSubsampledGaussian(r["noise_multiplier"], r["sample_rate"], r["steps"]),
                                        size) for r in history["rounds"][-1]["receipts"] if r["owner_id"] != HOSTILE_OWNER)
    print(f"moved {moved:.4g}, the malicious update's norm {40 * math.sqrt(size):.4g}, honest bound <= {honest:.4g}")
    assert moved <= honest  # no farther than an honest owner's DP-SGD could move it, not to the +-40 it sent


@pytest.mark.usefixtures("flower_task_identity")
def test_the_fedavg_weight_is_the_count_the_signed_event_implies(receipts):
    """Not the count the reply claims: batch size x 1 / sample rate of the charged DP-SGD event."""
    check, key, plan = receipts
    event = plan.privacy_event(144)
    accepted = check.accept(_receipt_reply(_signed(key, 1, event, epsilon=_epsilon(event))), server_round=1)
    assert accepted.records == plan.batch_size * plan.batches_per_epoch(144)


def _epsilon(event) -> float:
    from privfl.privacy.accountants import get_accountant

    return get_accountant("pld").epsilon([event], 1e-5)


# -- item 4: one institution cannot speak for another ----------------------------------------


def _impostor(config: ExperimentConfig, how: str) -> Tamper:
    def tamper(asked, reply, context):
        kind = _kind(asked)
        if kind == "query":
            if how == "refuses at the query":
                reply.content = RecordDict({protocol.PRIVACY: protocol.unsigned_refusal("no budget left", VICTIM)})
                return
            head = (4, bytes(32))
            nonce = asked.content[protocol.TRAIN_CONFIG].get(protocol.QUERY_NONCE, "")
            signature = sign_answer(_owner_key(config, HOSTILE_OWNER), config.experiment_id, nonce, VICTIM, head[0], head[1].hex()) \
                if how == "signs with its own key" and nonce else b""
            reply.content = RecordDict({protocol.OWNER: protocol.head_answer(VICTIM, head, signature)})
        elif kind == "train":  # then refuses, unsigned, in the victim's name
            reply.content = RecordDict({protocol.PRIVACY: protocol.unsigned_refusal("no budget left", VICTIM)})

    return tamper


@pytest.mark.parametrize("how", ["answers unsigned", "signs with its own key", "refuses at the query"])
def test_a_node_cannot_answer_for_another_owner_nor_refuse_in_its_name(tmp_path, how):
    """The impostor joins after round 1, once the victim has an anchored head, and names the victim."""
    config = _config(tmp_path, num_rounds=3)
    history, grid = _run(config, _impostor(config, how), late=(HOSTILE,))
    rounds = [r for r in history["rounds"] if r["round"]]
    for record in rounds:
        assert VICTIM in record["participants"] and VICTIM not in record["refused"], record
    assert history["owners"][VICTIM]["rounds_refused"] == 0
    state = json.loads((Path(config.run_dir) / "checkpoints" / "state.json").read_text())
    assert VICTIM not in state["refused_owners"]
    sent = [m.content[protocol.TRAIN_CONFIG] for m in grid.sent[HOSTILE]]
    assert sent and all(c.get("anchor-hash", "") == "" for c in sent)  # never the victim's anchored head
    assert all(m.metadata.message_type == MessageType.QUERY for m in grid.sent[HOSTILE])


def test_an_evaluation_labelled_with_another_owner_is_not_kept_as_that_owners(tmp_path):
    """Accuracy 1.0 over 10^12 examples in another owner's name once made the federated accuracy 0.99999."""

    def tamper(asked, reply, context):
        if _kind(asked) == "evaluate":
            reply.content = RecordDict({
                protocol.METRICS: MetricRecord({"loss": 0.0, "accuracy": 1.0, "num-examples": 10**12}),
                protocol.OWNER: protocol.owner_record(VICTIM)})

    history, _ = _run(_config(tmp_path, num_rounds=1, federated_evaluation="last"), tamper)
    evaluated = next(r["federated_evaluation"] for r in history["rounds"] if r["round"] == 1)
    # the victim's own answer: its count kept at the owner (None) unless its policy makes it public
    examples = evaluated["owners"][VICTIM]["num_examples"]
    assert examples is None or examples < 10**6
    assert HOSTILE_OWNER not in evaluated["owners"]
    assert evaluated["accuracy"] < 0.999
    assert f"names owner '{VICTIM}'" in _failures(history)


# -- the property: no reply raises out of the strategy ---------------------------------------

_scalars = st.one_of(st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                     st.binary(max_size=40), st.booleans())
_config_values = st.one_of(_scalars, st.lists(st.integers(-5, 5), max_size=3), st.lists(st.text(max_size=4), max_size=3))
_metric_values = st.one_of(st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=True, allow_infinity=True),
                           st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=3))
_config_keys = st.sampled_from([protocol.OWNER_ID, protocol.HEAD_SEQUENCE, protocol.HEAD_HASH, protocol.ANSWER_SIGNATURE,
                                protocol.SIGNED_ENTRY, protocol.BRIDGE, protocol.UNSIGNED_REFUSAL,
                                protocol.NON_PRIVATE, "x"])
_metric_keys = st.sampled_from(["num-examples", "loss", "accuracy", "train-loss", "x"])
_arrays = st.dictionaries(st.sampled_from(["w", "b", "linear.weight", "linear.bias"]),
                          st.tuples(st.integers(0, 3), st.integers(1, 3), st.sampled_from([np.float32, np.float64,
                                                                                           np.int64])), max_size=3)


@st.composite
def replies(draw) -> RecordDict:
    content = RecordDict()
    for name in draw(st.lists(st.sampled_from([protocol.OWNER, protocol.PRIVACY, "x"]), max_size=2, unique=True)):
        content[name] = ConfigRecord(draw(st.dictionaries(_config_keys, _config_values, max_size=4)))
    for name in draw(st.lists(st.sampled_from([protocol.METRICS, "y"]), max_size=2, unique=True)):
        content[name] = MetricRecord(draw(st.dictionaries(_metric_keys, _metric_values, max_size=4)))
    if draw(st.booleans()):
        arrays = draw(_arrays)
        content[protocol.ARRAYS] = ArrayRecord(OrderedDict(
            (k, torch.from_numpy(np.full((rows, cols), draw(st.floats(width=32) if dtype is not np.int64
                                                            else st.integers(-9, 9)), dtype=dtype)))
            for k, (rows, cols, dtype) in arrays.items()))
    return content


class _AnswerGrid(InProcessGrid):
    def __init__(self, contents: list[RecordDict]) -> None:
        super().__init__(client_app, 2, {})
        self.contents = contents

    def send_and_receive(self, messages, *, timeout=None):
        return [Message(content=c, reply_to=m) for m, c in zip(messages, self.contents)]


@pytest.fixture(scope="module")
def strategy(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("property")
    keys = tmp_path / "keys"
    for owner in ("owner-0", "owner-1"):
        generate_owner_keys(keys, owner)
    coordinator = generate_key()
    federation = FederationLedger.open(tmp_path / "federation.db", coordinator.public_key())
    registry = CoordinatorRegistry.open(tmp_path / "registry.db", coordinator)
    config = ExperimentConfig(dp=True)
    plan = TrainingPlan.from_config(config)
    from privfl.models import ModelSpec
    from privfl.protocol import RoundRequest

    request = RoundRequest(experiment_id="7", server_round=1, purpose=config.purpose, privacy_unit="record",
                           model=ModelSpec(config.model, 4, 2), plan=plan)
    check = ReceiptCheck(federation, registry, keys, plan, experiment_id="7", coordinator_key=coordinator)
    history = RunHistory(experiment="property", config={})
    strategy = BudgetAwareFedAvg(request=lambda r: replace(request, server_round=r), fraction_train=1.0,
                                 min_owners=1, history=history, receipts=check, seed=1,
                                 evaluate_rounds=lambda r: True)
    check.bind(1, "owner-0")  # node 1 is bound (as if its owner had signed), node 2 is not
    strategy._global = ArrayRecord(OrderedDict(w=torch.zeros(2, 3), b=torch.zeros(2)))
    yield strategy
    federation.close()
    registry.close()


@pytest.mark.usefixtures("flower_task_identity")
@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(contents=st.lists(replies(), min_size=2, max_size=2), stage=st.sampled_from(["query", "train", "evaluate"]))
def test_no_reply_raises_out_of_the_strategy(strategy, contents, stage):
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 0, 1
    asked = [Message(content=RecordDict(), dst_node_id=n, message_type=MessageType.TRAIN) for n in (1, 2)]
    for message in asked:
        message.metadata.__dict__["_src_node_id"] = 0
    answers = [Message(content=c, reply_to=m) for m, c in zip(asked, contents)]
    if stage == "query":
        strategy._identify(_AnswerGrid(contents), 1, [1, 2])
    elif stage == "train":
        strategy.aggregate_train(1, answers)
    else:
        result = strategy.aggregate_evaluate(1, answers)
        assert result is None or (math.isfinite(result["loss"]) and 0 <= result["accuracy"] <= 1)
