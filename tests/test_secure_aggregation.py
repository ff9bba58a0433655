"""Secure aggregation (privfl.server.secure_aggregation + privfl.client.secure_aggregation):
Flower's SecAgg+ driven under the Message API, run in one process with InProcessGrid
and a tiny ClientApp of owners that return fixed deltas and a receipt."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common import ndarray_to_bytes
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    Key,
    Stage,
)
from flwr.common.serde import message_from_proto, message_to_proto
from privfl.client.secure_aggregation import SECAGG_RECORD, privfl_secagg_mod
from privfl.server.owner_dp import (
    OwnerLevelDP,
    OwnerSampling,
    clip_to_norm,
    sum_clipped_updates,
)
from privfl.server.secure_aggregation import (
    DEFAULT_QUANTIZATION_RANGE,
    SecAggConfigError,
    SecureAggregationError,
    check_secagg,
    secure_sum,
)

from bench.inprocess_grid import InProcessGrid

NODES = list(range(1, 11))
SHAPES = {"w": (6, 5), "b": (5,)}
CLIP = 1.0


@pytest.fixture(autouse=True)
def _server_identity(flower_task_identity):
    """Messages are built as the ServerApp of a run (conftest's fixture)."""


def _deltas(seed: int = 0) -> dict[int, dict[str, np.ndarray]]:
    """Per node a delta; nodes 2 and 9 far above the clip norm, the rest below it."""
    rng = np.random.default_rng(seed)
    deltas = {}
    for node in NODES:
        scale = 5.0 if node in (2, 9) else 0.05
        deltas[node] = {k: (rng.normal(size=s) * scale).astype(np.float32) for k, s in SHAPES.items()}
    return deltas


def _receipt(node: int) -> ConfigRecord:
    return ConfigRecord({"owner-id": f"owner-{node}", "signed-entry": f"entry of {node}".encode()})


class Owners:
    """A ClientApp whose train handler returns each node's delta and receipt; behaviours per node."""

    def __init__(self, deltas, *, crash=(), refuse=(), clip_themselves=False, expect_config=True):
        self.deltas, self.crash, self.refuse = deltas, set(crash), set(refuse)
        self.clip_themselves, self.expect_config = clip_themselves, expect_config
        self.seen: dict[int, Message] = {}
        self.app = ClientApp()
        self.app.train(mods=[privfl_secagg_mod])(self.train)

    def train(self, msg: Message, context) -> Message:
        node = context.node_id
        self.seen[node] = msg
        if self.expect_config:  # privfl's request reaches the handler as sent, without SecAgg+'s records
            assert dict(msg.content["config"]) == {"experiment-id": "exp-1", "server-round": 3}
            assert set(msg.content.keys()) == {"arrays", "config"}
        if node in self.crash:
            raise RuntimeError(f"owner {node} crashed mid-round")
        if node in self.refuse:
            return Message(RecordDict({"privacy": _receipt(node)}), reply_to=msg)
        delta, metrics = self.deltas[node], {"num-examples": 1, "train-loss": 0.5}
        if self.clip_themselves:
            delta, unclipped = clip_to_norm(delta, CLIP)
            metrics["unclipped"] = int(unclipped)
        return Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in delta.items()}),
                                   "metrics": MetricRecord(metrics), "privacy": _receipt(node)}), reply_to=msg)


def _over_the_wire(message: Message) -> Message:
    """The message as the other side gets it through Flower's runtime: serialised, nothing shared."""
    return message_from_proto(message_to_proto(message))


class RecordingGrid(InProcessGrid):
    """InProcessGrid that keeps every reply as it left an owner, and can lose or garble some.

    ``wire=True``: every message and reply is serialised and parsed back on its way, as
    in a deployment (InProcessGrid alone hands the very objects over)."""

    def __init__(self, client_app, *, silent_at=None, silent=(), garble=(), wire=False):
        if wire:
            app = client_app
            client_app = lambda message, context: _over_the_wire(app(_over_the_wire(message), context))
        super().__init__(client_app, len(NODES), {})
        self.silent_at, self.silent, self.garble = silent_at, set(silent), set(garble)
        self.replies: list[tuple[str, Message]] = []

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        stage = ""
        if messages and RECORD_KEY_CONFIGS in messages[0].content.config_records:
            stage = messages[0].content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE, "")
        replies = []
        for reply in super().send_and_receive(messages, timeout=timeout):
            node = reply.metadata.src_node_id
            self.replies.append((stage, reply))
            if stage == self.silent_at and node in self.silent:
                continue  # lost: the coordinator never hears from it
            if stage == Stage.COLLECT_MASKED_VECTORS and node in self.garble:
                configs = reply.content.config_records[RECORD_KEY_CONFIGS]
                vectors = list(configs[Key.MASKED_PARAMETERS])
                vectors[1] = ndarray_to_bytes(np.zeros(3, np.int64))  # as many arrays, one of another shape
                configs[Key.MASKED_PARAMETERS] = vectors
            replies.append(reply)
        return replies


def _request() -> RecordDict:
    global_model = ArrayRecord({k: Array(np.zeros(s, np.float32)) for k, s in SHAPES.items()})
    return RecordDict({"arrays": global_model, "config": ConfigRecord({"experiment-id": "exp-1", "server-round": 3})})


def _run(grid, nodes=NODES, **kwargs):
    settings = {"num_shares": 9, "reconstruction_threshold": 5, "clipping_range": CLIP, "timeout": 30.0,
                "clip_norm": CLIP, "count_unclipped": True, "server_round": 3}
    settings.update(kwargs)
    return secure_sum(grid, nodes, _request(), **settings)


def _tolerance(owners: int) -> float:
    """Stochastic rounding: each owner's coordinate is off by less than one step 2c / Q."""
    return owners * 2 * CLIP / DEFAULT_QUANTIZATION_RANGE


def _plain_sum(deltas, nodes):
    return sum_clipped_updates([deltas[n] for n in nodes], CLIP)


# -- the sum -----------------------------------------------------------------------------


@pytest.mark.parametrize("clip_themselves", [False, True])
def test_zero_noise_secagg_equals_the_plain_sum_of_clipped_deltas(clip_themselves):
    deltas = _deltas()
    owners = Owners(deltas, clip_themselves=clip_themselves)
    grid = RecordingGrid(owners.app)
    result = _run(grid)
    assert result.nodes == NODES and result.dropped == [] and result.no_update == []
    expected, unclipped = _plain_sum(deltas, NODES)
    for name, shape in SHAPES.items():
        assert result.sum[name].shape == shape
        np.testing.assert_allclose(result.sum[name], expected[name], rtol=0, atol=_tolerance(10))
    assert unclipped == 8 and result.unclipped_count == 8  # nodes 2 and 9 were clipped

    # the DP release from the secure sum equals the one from the clear path (noise 0 for the check)
    class ZeroNoise:
        def normal(self, loc=0.0, scale=1.0, size=None):
            return np.zeros(size) if size is not None else 0.0

    dp = OwnerLevelDP(1.0, CLIP, OwnerSampling.fixed(10))
    global_model = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    secure = dp.aggregate(global_model, result.sum, result.unclipped_count, 20, rng=ZeroNoise())
    clear = dp.aggregate(global_model, expected, unclipped, 20, rng=ZeroNoise())
    for name in SHAPES:
        np.testing.assert_allclose(secure[name], clear[name], atol=_tolerance(10) / 10)

    # nothing the coordinator received holds a delta or the unclipped bit in the clear
    assert grid.replies
    for _, reply in grid.replies:
        if reply.has_error():
            continue
        assert all(len(record) == 0 for record in reply.content.array_records.values())
        assert all("unclipped" not in record for record in reply.content.metric_records.values())


def test_receipts_come_back_per_node_untouched():
    owners = Owners(_deltas())
    result = _run(RecordingGrid(owners.app))
    assert set(result.replies) == set(NODES) == set(result.messages)
    for node, records in result.replies.items():
        assert dict(records["privacy"]) == dict(_receipt(node))
        assert dict(records["metrics"]) == {"num-examples": 1, "train-loss": 0.5}
        assert set(records.keys()) == {"privacy", "metrics"}
        message = result.messages[node]  # the same, as a reply from that node
        assert message.metadata.src_node_id == node and dict(message.content["privacy"]) == dict(_receipt(node))


def test_each_owner_can_get_its_own_request():
    owners = Owners(_deltas(), expect_config=False)
    requests = {}
    for node in NODES:
        request = _request()
        request["config"] = ConfigRecord({"experiment-id": "exp-1", "anchor-sequence": node})
        requests[node] = request
    result = secure_sum(
        RecordingGrid(owners.app), NODES, requests, num_shares=9, reconstruction_threshold=5, clipping_range=CLIP,
        timeout=30.0, clip_norm=CLIP)
    assert result.nodes == NODES and result.unclipped_count is None
    for node in NODES:
        assert owners.seen[node].content["config"]["anchor-sequence"] == node
        assert set(owners.seen[node].content.keys()) == {"arrays", "config"}
        assert set(requests[node].keys()) == {"arrays", "config"}  # the caller's requests are left as they were
    requests[3]["arrays"] = ArrayRecord({"w": Array(np.zeros(2))})
    with pytest.raises(SecAggConfigError, match="node 3 has another 'arrays' layout"):
        secure_sum(RecordingGrid(owners.app), NODES, requests, num_shares=9, reconstruction_threshold=5,
                   clipping_range=CLIP, timeout=30.0)
    with pytest.raises(SecAggConfigError, match="each of the nodes"):
        secure_sum(RecordingGrid(owners.app), NODES[:9], requests, num_shares=9, reconstruction_threshold=5,
                   clipping_range=CLIP, timeout=30.0)


# -- dropouts ----------------------------------------------------------------------------


@pytest.mark.parametrize("wire", [False, True])
def test_two_owners_crashing_in_the_masked_vectors_stage_leave_the_sum_of_the_other_eight(wire):
    deltas = _deltas(1)
    owners = Owners(deltas, crash=(3, 7))
    grid = RecordingGrid(owners.app, wire=wire)
    result = _run(grid)
    remaining = [n for n in NODES if n not in (3, 7)]
    assert result.nodes == remaining and result.dropped == [3, 7]
    assert "crashed mid-round" in result.failures[3]
    expected, unclipped = _plain_sum(deltas, remaining)
    for name in SHAPES:
        np.testing.assert_allclose(result.sum[name], expected[name], atol=_tolerance(8))
    assert result.unclipped_count == unclipped == 6
    assert set(result.replies) == set(remaining)

    # the next round starts afresh at the owners that dropped
    owners.crash.clear()
    again = _run(grid)
    assert again.nodes == NODES


def test_two_owners_that_never_answer_the_masked_vectors_stage_leave_the_sum_of_the_other_eight():
    deltas = _deltas(2)
    grid = RecordingGrid(Owners(deltas).app, silent_at=Stage.COLLECT_MASKED_VECTORS, silent=(4, 10))
    result = _run(grid)
    remaining = [n for n in NODES if n not in (4, 10)]
    assert result.nodes == remaining and result.dropped == [4, 10]
    assert "no answer" in result.failures[10]
    expected, _ = _plain_sum(deltas, remaining)
    for name in SHAPES:
        np.testing.assert_allclose(result.sum[name], expected[name], atol=_tolerance(8))


def test_a_garbled_masked_vector_counts_as_a_dropout_instead_of_breaking_the_round():
    deltas = _deltas(3)
    result = _run(RecordingGrid(Owners(deltas).app, garble=(5,)))
    remaining = [n for n in NODES if n != 5]
    assert result.nodes == remaining and "shape" in result.failures[5]
    expected, _ = _plain_sum(deltas, remaining)
    np.testing.assert_allclose(result.sum["w"], expected["w"], atol=_tolerance(9))


def test_a_refusing_owner_masks_nothing_but_its_receipt_arrives():
    deltas = _deltas(4)
    result = _run(RecordingGrid(Owners(deltas, refuse=(6,)).app))
    contributors = [n for n in NODES if n != 6]
    assert result.nodes == contributors and result.no_update == [6] and result.dropped == []
    assert dict(result.replies[6]["privacy"]) == dict(_receipt(6))
    expected, unclipped = _plain_sum(deltas, contributors)
    np.testing.assert_allclose(result.sum["b"], expected["b"], atol=_tolerance(10))
    assert result.unclipped_count == unclipped


def test_too_many_dropouts_stop_the_round_with_a_clear_error():
    owners = Owners(_deltas(), crash=(1, 2, 3, 4, 5))
    with pytest.raises(SecureAggregationError, match="too few owners left") as caught:
        _run(RecordingGrid(owners.app))
    assert set(caught.value.failures) == {1, 2, 3, 4, 5}


# -- ordinary messages pass through ------------------------------------------------------


def test_ordinary_train_messages_reach_the_handler_untouched():
    owners = Owners(_deltas(), expect_config=False)
    grid = InProcessGrid(owners.app, 2, {})
    request = _request()
    msg = Message(request, 1, MessageType.TRAIN)
    [reply] = grid.send_and_receive([msg])
    assert owners.seen[1] is msg and msg.content is request
    assert set(request.keys()) == {"arrays", "config"}
    np.testing.assert_array_equal(reply.content["arrays"]["w"].numpy(), _deltas()[1]["w"])  # in the clear
    assert dict(reply.content["privacy"]) == dict(_receipt(1))
    assert SECAGG_RECORD not in reply.content


# -- configuration errors ----------------------------------------------------------------


@pytest.mark.parametrize(("shares", "threshold", "cohort", "match"), [
    (9, 10, 10, "cannot exceed num_shares"),
    (9, 9, 10, "must be below num_shares"),
    (11, 6, 10, "cannot exceed the number of owners"),
    (5, 1, 10, ">= 2"),
    (8, 5, 10, "must be odd"),
    (9, 4, 10, "more than half"),
    (2, 2, 10, "num_shares must be >= 3"),
    (3, 2, 2, "at least 3 owners"),
    (9, 5, 1100, "wrap around"),
    (9.0, 5, 10, "integer"),
])
def test_thresholds_that_cannot_be_met_are_refused_before_the_run(shares, threshold, cohort, match):
    with pytest.raises(SecAggConfigError, match=match):
        check_secagg(shares, threshold, cohort)


def test_valid_settings_pass_including_shares_equal_to_the_cohort():
    check_secagg(9, 5, 10)
    check_secagg(10, 6, 10)
    check_secagg(3, 2, 3)
    check_secagg(9, 5, 2000, quantization_range=2**20)


def test_secure_sum_refuses_settings_before_sending_anything():
    grid = RecordingGrid(Owners(_deltas()).app)
    with pytest.raises(SecAggConfigError, match="clipping_range"):
        _run(grid, clipping_range=0.5)
    with pytest.raises(SecAggConfigError, match="distinct"):
        _run(grid, nodes=[1, 1, 2, 3])
    with pytest.raises(SecAggConfigError, match="cannot exceed the number of owners"):
        _run(grid, nodes=[1, 2, 3])
    with pytest.raises(SecAggConfigError, match="clip_norm"):
        _run(grid, clip_norm=None)
    with pytest.raises(SecAggConfigError, match="no \\(non-empty\\) ArrayRecord 'update'"):
        _run(grid, payload_key="update")
    assert grid.replies == [] and math.isclose(CLIP, 1.0)
