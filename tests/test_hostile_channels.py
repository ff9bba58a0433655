"""A hostile coordinator against what leaves an owner besides its charged update (issue 19, items 5, 6, 10).

The coordinator is played in-process: it crafts the messages, the ClientApp's own round
and evaluate functions answer them with real ledgers, keys and Opacus.  What it must not
get: batches it can reproduce (item 5), anything about the data that no charged DP
guarantee covers and the owner's policy does not declare public (item 6), and an
exception instead of a signed refusal for a value it made up (item 10).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, MessageType
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from privfl import protocol
from privfl.client.evaluation import run_evaluate_round
from privfl.client.owner_ledger import close_owner_ledgers
from privfl.client.round import run_train_round
from privfl.models import LogisticRegression
from privfl.privacy.ledger import CHARGE, REFUSAL, Entry
from privfl.privacy.policy import load_policy_file
from privfl.protocol import TrainingPlan
from tests.owner_helpers import (
    CONFIG, DIGITS, deployed_context, deployed_owner, message, request, write_owner_data,
)

pytestmark = pytest.mark.usefixtures("flower_task_identity", "fresh_owner_ledgers")

ROWS = 300  # records of a test owner; CONFIG's batch size 72 gives 5 batches per epoch


def _train(policy_file: Path, server_round: int = 1, *, record=None, arrays=None, **changes):
    req = request(CONFIG, server_round, **changes)
    return run_train_round(message(req, record=record, arrays=arrays), deployed_context({"policy": str(policy_file)}))


def _evaluate(policy_file: Path, arrays: ArrayRecord, server_round: int = 1, **changes):
    req = request(CONFIG, server_round, **changes)
    return run_evaluate_round(message(req, MessageType.EVALUATE, arrays=arrays),
                              deployed_context({"policy": str(policy_file)}))


def _entry(reply) -> Entry:
    return Entry.from_signed(reply[protocol.PRIVACY][protocol.SIGNED_ENTRY])


# --------------------------------------------------------------------------- item 5: secret batch sampling


class _BatchRecorder:
    """Which records each forward pass of a logistic regression saw (a global forward hook: observation only)."""

    def __init__(self, features: np.ndarray) -> None:
        self.index = {row.tobytes(): i for i, row in enumerate(np.asarray(features, dtype=np.float32))}
        self.batches: list[list[int]] = []

    def __enter__(self) -> _BatchRecorder:
        def hook(module, args):
            if isinstance(module, LogisticRegression) and torch.is_grad_enabled():
                rows = args[0].detach().cpu().numpy().reshape(len(args[0]), -1)
                self.batches.append(sorted(self.index[row.tobytes()] for row in rows))

        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def _coordinator_prediction(features: np.ndarray, labels: np.ndarray, plan: TrainingPlan, experiment_id: str,
                            server_round: int, owner_id: str) -> list[list[int]]:
    """The batches the coordinator computes from what it knows: privfl's former seed formula, fed to the
    very loaders privfl and Opacus build (a DataLoader whose generator Opacus's DPDataLoader keeps)."""
    from opacus.data_loader import DPDataLoader

    digest = hashlib.sha256(f"{experiment_id}:{server_round}:{owner_id}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:7], "little"))
    data = TensorDataset(torch.as_tensor(features), torch.as_tensor(labels))
    loader = DPDataLoader.from_data_loader(DataLoader(data, batch_size=plan.batch_size, shuffle=True,
                                                      generator=generator))
    index = {row.tobytes(): i for i, row in enumerate(np.asarray(features, dtype=np.float32))}
    batches = []
    for _ in range(plan.local_epochs):
        for x, _y in loader:
            batches.append(sorted(index[row.tobytes()] for row in x.numpy().reshape(len(x), -1)))
    return batches


def test_the_coordinator_cannot_reproduce_the_batches_an_owner_drew(tmp_path):
    """Two identical owners (same id, data, key-independent request) answering the identical round draw
    different batches, and the seed formula the coordinator knows predicts neither."""
    policies = [deployed_owner(tmp_path / name, owner_id="st-mary", rows=ROWS) for name in ("a", "b")]
    saved = np.load(tmp_path / "a" / "data.npz")
    features, labels = saved["features"], saved["label"]
    plan = TrainingPlan.from_config(CONFIG)
    drawn = []
    for policy in policies:
        with _BatchRecorder(features) as recorder:
            reply = _train(policy)
        assert _entry(reply).kind == CHARGE and protocol.ARRAYS in reply
        assert len(recorder.batches) == plan.local_epochs * plan.batches_per_epoch(ROWS)
        drawn.append(recorder.batches)
    assert drawn[0] != drawn[1]
    predicted = _coordinator_prediction(features, labels, plan, CONFIG.experiment_id, 1, "st-mary")
    assert len(predicted) == len(drawn[0])
    for batches in drawn:
        assert batches != predicted
        # not even one batch in common: the draws are independent of the prediction
        assert sum(a == b for a, b in zip(batches, predicted)) == 0


def test_train_locally_draws_fresh_batches_unless_a_test_seeds_them():
    from privfl.client.training import train_locally

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(100, 64, generator=g), torch.randint(0, 10, (100,), generator=g))
    plan = TrainingPlan(local_epochs=1, batch_size=10, learning_rate=0.1, momentum=0.0, dp=True,
                        noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode="hooks")

    def batches(seed):
        with _BatchRecorder(data.tensors[0].numpy()) as recorder, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train_locally(LogisticRegression(64, 10), data, plan, torch.device("cpu"), seed=seed, noise_seed=0)
        return recorder.batches

    assert batches(None) != batches(None)
    assert batches(5) == batches(5)  # an explicit seed (tests, benchmarks) still reproduces


# --------------------------------------------------------------------------- item 6: what else leaves


def test_an_update_carries_neither_the_training_loss_nor_the_exact_record_count(tmp_path):
    plan = TrainingPlan.from_config(CONFIG)
    reply = _train(deployed_owner(tmp_path / "a", rows=ROWS))
    assert _entry(reply).kind == CHARGE
    disclosed = plan.batches_per_epoch(ROWS) * plan.batch_size  # 5 x 72: what the receipt's sample rate says
    assert dict(reply[protocol.METRICS]) == {"num-examples": disclosed} and disclosed != ROWS
    assert _entry(reply).event.sample_rate == 1 / plan.batches_per_epoch(disclosed)

    public = _train(deployed_owner(tmp_path / "b", rows=ROWS, public_record_count=True))
    assert dict(public[protocol.METRICS]) == {"num-examples": ROWS}  # declared public by the policy


def test_one_changed_label_changes_nothing_but_the_noisy_weights(tmp_path):
    """The old reply's mean training loss told neighbouring data sets apart at any noise multiplier."""
    first, second = deployed_owner(tmp_path / "a", rows=ROWS), deployed_owner(tmp_path / "b", rows=ROWS)
    saved = dict(np.load(tmp_path / "b" / "data.npz"))
    saved["label"][0] = (saved["label"][0] + 1) % 10
    np.savez(tmp_path / "b" / "data.npz", **saved)
    replies = [_train(first), _train(second)]
    assert all(_entry(r).kind == CHARGE for r in replies)
    assert dict(replies[0][protocol.METRICS]) == dict(replies[1][protocol.METRICS])
    assert set(replies[0].keys()) == set(replies[1].keys()) == {protocol.ARRAYS, protocol.METRICS, protocol.PRIVACY}


def test_the_weight_sent_keeps_the_coordinators_update_norm_check_sound(tmp_path):
    """FedAvg weights by the count sent; the coordinator's bound on a DP-SGD update must still hold for
    every record count that count stands for (else honest small owners would be dropped)."""
    plan = TrainingPlan.from_config(CONFIG)
    for batch, records in itertools.product((1, 16, 72, 500), (1, 7, 71, 72, 73, 300, 1437)):
        p = TrainingPlan(**{**plan.__dict__, "batch_size": batch})
        sent = p.batches_per_epoch(records) * batch
        exact = _former_bound(p, records, 650) * (1 - 1e-12)
        assert p.max_update_norm(sent, 650) >= exact and p.max_update_norm(records, 650) >= exact
    policy = deployed_owner(tmp_path / "a", rows=ROWS)
    arrays = ArrayRecord(DIGITS.build(seed=0).state_dict())
    reply = _train(policy, arrays=arrays)
    before, after = arrays.to_torch_state_dict(), reply[protocol.ARRAYS].to_torch_state_dict()
    norm = math.sqrt(sum(float(((after[k] - before[k]) ** 2).sum()) for k in before))
    assert 0 < norm <= plan.max_update_norm(int(reply[protocol.METRICS]["num-examples"]), 650)


def _former_bound(plan: TrainingPlan, n: int, d: int) -> float:
    """The bound as it was for an exact count n (lr (n C + noise) / (n / batches) per step)."""
    batches = plan.batches_per_epoch(n)
    noise = plan.noise_multiplier * plan.max_grad_norm * (math.sqrt(d) + 7.5)
    return plan.local_epochs * batches * plan.learning_rate * (n * plan.max_grad_norm + noise) * batches / n \
        / (1 - plan.momentum)


def _constant_model(label: int) -> ArrayRecord:
    """A model that answers ``label`` for every input: its accuracy is that label's share of the data."""
    model = DIGITS.build(seed=0)
    with torch.no_grad():
        model.linear.weight.zero_()
        model.linear.bias.zero_()
        model.linear.bias[label] = 10.0
    return ArrayRecord(model.state_dict())


def _evaluating_owner(folder: Path, **policy) -> tuple[Path, np.ndarray]:
    folder.mkdir(parents=True)
    evaluation = write_owner_data(folder / "evaluation.npz", rows=40, seed=1)
    policy_file = deployed_owner(folder / "owner", answer_evaluation=True, evaluation_data=str(evaluation), **policy)
    return policy_file, np.bincount(np.load(evaluation)["label"], minlength=10) / 40


def test_ten_constant_models_do_not_give_away_the_evaluation_labels(tmp_path):
    """Ten requests, each under a fresh experiment id (the coordinator's to choose) and a fresh node
    process: one answer, as the default policy declares, then refusals naming max-evaluations."""
    policy_file, shares = _evaluating_owner(tmp_path / "a")
    answers, refusals = {}, []
    for label in range(10):
        close_owner_ledgers()  # a new node process: the count is on disk, not in memory
        reply = _evaluate(policy_file, _constant_model(label), experiment_id=f"probe-{label}")
        if protocol.METRICS in reply:
            answers[label] = reply[protocol.METRICS]
        else:
            refusals.append(reply[protocol.PRIVACY][protocol.UNSIGNED_REFUSAL])
    assert list(answers) == [0] and len(refusals) == 9
    assert all("max-evaluations = 1" in reason for reason in refusals)
    assert answers[0]["accuracy"] == pytest.approx(shares[0])  # what one answer tells, declared in the policy
    assert answers[0]["num-examples"] == 1  # the evaluation records' count is not public by default
    again = _evaluate(policy_file, _constant_model(0), experiment_id="probe-again", server_round=9)
    assert dict(again[protocol.METRICS]) == dict(answers[0])  # the same model again: the same answer, free


def test_evaluations_the_policy_allows_are_answered_and_counted_at_the_node(tmp_path):
    from privfl.client.evaluation_record import evaluated_models

    policy_file, shares = _evaluating_owner(tmp_path / "a", max_evaluations=10, public_record_count=True)
    histogram = [_evaluate(policy_file, _constant_model(label), experiment_id=f"e{label}")[protocol.METRICS]
                 for label in range(10)]
    assert [a["accuracy"] for a in histogram] == pytest.approx(list(shares))  # the policy allowed this
    assert all(a["num-examples"] == 40 for a in histogram)
    assert evaluated_models(load_policy_file(policy_file).ledger) == 10
    refused = _evaluate(policy_file, ArrayRecord(DIGITS.build(seed=3).state_dict()), experiment_id="e11")
    assert "max-evaluations = 10" in refused[protocol.PRIVACY][protocol.UNSIGNED_REFUSAL]


def test_a_policy_that_does_not_answer_evaluation_counts_nothing(tmp_path):
    from privfl.client.evaluation_record import evaluated_models

    policy_file = deployed_owner(tmp_path / "a")
    reply = _evaluate(policy_file, _constant_model(0))
    assert "answer-evaluation = false" in reply[protocol.PRIVACY][protocol.UNSIGNED_REFUSAL]
    assert evaluated_models(load_policy_file(policy_file).ledger) == 0


# --------------------------------------------------------------------------- item 10: invalid values refused


@pytest.mark.parametrize(("key", "value"), [
    ("batch-size", 0), ("batch-size", -3), ("local-epochs", 0), ("max-grad-norm", -1.0), ("max-grad-norm", 0.0),
    ("max-grad-norm", math.nan), ("max-grad-norm", math.inf), ("grad-sample-mode", "ew"),
    ("grad-sample-mode", "nonsense"), ("learning-rate", math.nan), ("learning-rate", -math.inf),
    ("noise-multiplier", math.inf), ("momentum", -0.5), ("momentum", 1.0), ("target-epsilon", math.nan),
    ("num-rounds", -1), ("num-classes", 1), ("num-features", 0),
    ("num-classes", 10**12),  # the owner would allocate a model of 64 x 10^12 weights before any check
    ("noise-multiplier", 1e-6),  # positive, but no accountant can account it in bounded memory
    ("max-grad-norm", 1.7976931348623157e308),  # finite, but arithmetic on it overflows
])
def test_an_invalid_request_value_gets_a_signed_refusal_naming_it(tmp_path, key, value):
    policy_file = deployed_owner(tmp_path / "a", rows=ROWS)
    values = dict(request(CONFIG, 1).to_record())
    values[key] = value
    reply = _train(policy_file, record=ConfigRecord(values))
    entry = _entry(reply)
    assert entry.kind == REFUSAL and protocol.ARRAYS not in reply
    assert f"{key} = {value!r}" in entry.refusal_reason


_PLAN_VALUES = {
    "local-epochs": st.integers(-2, 3), "batch-size": st.integers(-2, 400) | st.just(10**9),
    "learning-rate": st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, 0.5, 5.0]),
    "momentum": st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, 0.9, 1.0]),
    "noise-multiplier": st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, 1.0, 2.3]),
    "max-grad-norm": st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, 1.0, 1e-6]),
    "grad-sample-mode": st.sampled_from(["auto", "hooks", "functorch", "ghost", "ew", "", "HOOKS"]),
    "target-epsilon": st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, 1.0]),
    "num-rounds": st.integers(-2, 50),
    "dp": st.booleans(),
    "num-features": st.sampled_from([-1, 0, 1, 63, 64]),
    "num-classes": st.sampled_from([-1, 0, 1, 2, 10, 11]),
}
_WRONG_TYPES = st.sampled_from(["1", b"1", True, [1, 2]])


@pytest.fixture(scope="module")
def _fuzzed_owner(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzzed")
    evaluation = write_owner_data(folder / "evaluation.npz", rows=30, seed=1)
    return deployed_owner(folder / "owner", rows=120, epsilon_budget=1e6, answer_evaluation=True,
                          evaluation_data=str(evaluation), max_evaluations=5)


_ROUNDS = itertools.count(1)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(sorted(_PLAN_VALUES)), st.none(), min_size=1, max_size=4).flatmap(
    lambda keys: st.fixed_dictionaries({k: _PLAN_VALUES[k] | _WRONG_TYPES for k in keys})))
def test_any_crafted_request_gets_a_release_or_a_refusal_never_an_exception(_fuzzed_owner, changes):
    values = dict(request(CONFIG, next(_ROUNDS), learning_rate=0.1).to_record())
    values.update(changes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reply = _train(_fuzzed_owner, values["server-round"], record=ConfigRecord(values))
        answer = run_evaluate_round(message(request(CONFIG, 1), MessageType.EVALUATE, record=ConfigRecord(values)),
                                    deployed_context({"policy": str(_fuzzed_owner)}))
    entry = _entry(reply)
    if entry.kind == CHARGE:
        assert protocol.ARRAYS in reply and entry.update_hash == protocol.update_digest(
            reply[protocol.ARRAYS].to_torch_state_dict())
    else:
        assert entry.kind == REFUSAL and entry.refusal_reason and protocol.ARRAYS not in reply
    assert (protocol.METRICS in answer) != (protocol.PRIVACY in answer)


def test_the_coordinator_records_no_count_that_an_owner_kept(tmp_path):
    """FedAvg still weighs the answers (a weight of 1 each), and the run history says the count is unknown
    rather than stating one evaluation record per owner."""
    from flwr.app import Message

    from privfl.server.history import RunHistory
    from privfl.server.strategy import BudgetAwareFedAvg

    kept, _ = _evaluating_owner(tmp_path / "a")
    public, _ = _evaluating_owner(tmp_path / "b", owner_id="st-john", public_record_count=True)
    class _Bound:  # nodes 1 and 2 already vouched for by their owners' keys (tested in test_ledger_attacks)
        owners = {1: "st-mary", 2: "st-john"}

        def owner_of(self, node):
            return self.owners.get(node)

        def label(self, node):
            return self.owners.get(node) or f"node-{node}"

    history = RunHistory(experiment="e", config={})
    strategy = BudgetAwareFedAvg(request=lambda r: request(CONFIG, r), fraction_train=1.0, min_owners=1,
                                 history=history, receipts=_Bound(), seed=0, evaluate_rounds=lambda r: True)
    replies = []
    for node, policy in ((1, kept), (2, public)):
        asked = message(request(CONFIG, 1), MessageType.EVALUATE)
        asked = Message(content=asked.content, dst_node_id=node, message_type=MessageType.EVALUATE)
        answer = run_evaluate_round(asked, deployed_context({"policy": str(policy)}))
        replies.append(Message(content=answer, reply_to=asked))
        assert replies[-1].metadata.src_node_id == node
    aggregated = strategy.aggregate_evaluate(1, replies)
    assert aggregated is not None and 0 <= aggregated["accuracy"] <= 1
    evaluation = history.round(1).federated_evaluation
    assert evaluation["owners"]["st-mary"]["num_examples"] is None
    assert evaluation["owners"]["st-john"]["num_examples"] == 40
    assert evaluation["num_examples"] is None  # a total over an unknown count is unknown


_OWNER_VALUES = {
    "owner-noise-multiplier": st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, 1.0]),
    "owner-sampling": st.sampled_from(["poisson", "fixed", "", "other"]),
    "owner-sample-rate": st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, 0.5, 1.0]),
    "owner-sample-size": st.integers(-2, 5),
    "owner-population": st.integers(-2, 5),
    "owner-clipping-norm": st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, 1.0]),
    "stage": st.sampled_from([protocol.TRAIN_STAGE, protocol.OWNER_CHARGE_STAGE, "other"]),
}


@pytest.fixture(scope="module")
def _fuzzed_owner_level(tmp_path_factory):
    return deployed_owner(tmp_path_factory.mktemp("fuzzed-owner") / "owner", rows=120, epsilon_budget=1e6,
                          owner_epsilon_budget=1e6, privacy_units=("record", "owner"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(sorted(_OWNER_VALUES)), st.none(), min_size=1, max_size=3).flatmap(
    lambda keys: st.fixed_dictionaries({k: _OWNER_VALUES[k] | _WRONG_TYPES for k in keys})))
def test_any_crafted_owner_level_request_gets_an_answer_never_an_exception(_fuzzed_owner_level, changes):
    from dataclasses import replace

    from privfl.protocol import OwnerRound

    terms = OwnerRound(noise_multiplier=1.0, sampling="poisson", sample_rate=0.5, sample_size=0, population=4,
                       clipping_norm=1.0, secure=False)
    req = replace(request(CONFIG, next(_ROUNDS)), privacy_unit="owner", owner_round=terms,
                  stage=protocol.OWNER_CHARGE_STAGE)
    values = {**dict(req.to_record()), **changes}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reply = run_train_round(message(req, record=ConfigRecord(values)),
                                deployed_context({"policy": str(_fuzzed_owner_level)}))
    entry = _entry(reply)
    assert entry.kind in (CHARGE, REFUSAL) and (protocol.ARRAYS not in reply or entry.kind == CHARGE)
