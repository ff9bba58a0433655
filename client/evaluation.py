"""One evaluation request at an owner: the global model scored on the owner's own held-out data.

Federated evaluation lets a coordinator that holds no data see how the model does at
the institutions.  Its metrics are a release about the owner's data that no epsilon
covers: the coordinator picks the model, and ten constant-output models scored on the
same data give away its label shares.  So an owner answers only when its policy
declares these answers releasable without DP (``answer-evaluation``), only on its
``evaluation-data``, only within the same policy checks as training (protocol,
purpose, model, data shape), and only for as many distinct models over its data's
lifetime as ``max-evaluations`` allows, counted at the node before the answer leaves
(:mod:`privfl.client.evaluation_record`).  The number of evaluation records travels
only where ``public-record-count`` declares it public.  A refusal here is not a ledger
entry: evaluation spends no epsilon.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, MetricRecord, RecordDict

from privfl import protocol
from privfl.client.data import OwnerDataError
from privfl.client.evaluation_record import admit_evaluation
from privfl.client.guard import review_request
from privfl.client.owner import Owner, OwnerSetupError, node_owner
from privfl.devices import resolve_device
from privfl.logs import get_logger
from privfl.privacy.keys import KeyFileError, load_private_key
from privfl.privacy.ledger.identity import NONCE_BYTES, sign_answer
from privfl.protocol import ProtocolError, RoundRequest

log = get_logger("client")


def run_evaluate_round(msg: Message, context: Context) -> RecordDict:
    asked = msg.content.config_records.get(protocol.TRAIN_CONFIG, {})
    try:
        owner = node_owner(context, str(asked.get("owners-dir", "")))
    except OwnerSetupError as err:
        return _refuse(str(err), err.owner_id)
    if not owner.policy.answer_evaluation:
        return _refuse("this owner's policy does not answer evaluation requests (answer-evaluation = false)",
                       owner.owner_id)
    try:
        request = RoundRequest.from_record(asked)
        data = owner.data()
    except (ProtocolError, OwnerDataError) as err:
        return _refuse(str(err), owner.owner_id)
    if data.evaluation is None or not len(data.evaluation):
        return _refuse("this owner holds no evaluation data", owner.owner_id)
    reason = review_request(owner.policy, request, data, training=False)
    if reason:
        return _refuse(reason, owner.owner_id)
    from privfl.task import ModelMismatchError, check_model, evaluate

    try:
        model = check_model(request.model, private=False)
        model.load_state_dict(msg.content[protocol.ARRAYS].to_torch_state_dict())
    except (ModelMismatchError, RuntimeError, KeyError, ValueError) as err:
        return _refuse(f"the global model does not fit: {str(err).splitlines()[0]}", owner.owner_id)
    reason = admit_evaluation(owner.ledger.path, _model_digest(request, model), request.experiment_id,
                              request.server_round, owner.policy.max_evaluations)
    if reason:
        return _refuse(reason, owner.owner_id)
    loss, accuracy = evaluate(model, data.evaluation, device=resolve_device(owner.policy.device))
    examples = len(data.evaluation) if owner.policy.public_record_count else 1
    return RecordDict({
        protocol.METRICS: MetricRecord({"loss": loss, "accuracy": accuracy, "num-examples": examples,
                                        protocol.EXAMPLES_PUBLIC: int(owner.policy.public_record_count)}),
        protocol.OWNER: protocol.owner_record(owner.owner_id),
    })


def _model_digest(request: RoundRequest, model: Any) -> str:
    """What makes two evaluation answers the same: the model's architecture and weights."""
    spec = request.model
    digest = hashlib.sha256(f"{spec.name}|{spec.num_features}|{spec.num_classes}|".encode())
    digest.update(protocol.update_digest(model.state_dict()))
    return digest.hexdigest()


def _refuse(reason: str, owner_id: str) -> RecordDict:
    log.warning("%s does not evaluate: %s", owner_id or "this node", reason)
    return RecordDict({protocol.PRIVACY: protocol.unsigned_refusal(reason, owner_id)})


def run_query(msg: Message, context: Context) -> RecordDict:
    """Who this node's owner is and where its ledger stands (asked once per experiment)."""
    asked = msg.content.config_records.get(protocol.TRAIN_CONFIG, {})
    try:
        owner = node_owner(context, str(asked.get("owners-dir", "")))
    except OwnerSetupError as err:
        return _refuse(str(err), err.owner_id)
    head = owner.ledger.head()
    return RecordDict({protocol.OWNER: protocol.head_answer(owner.owner_id, head, _signed_answer(owner, asked, head))})


def _signed_answer(owner: Owner, asked: Any, head: tuple[int, bytes]) -> bytes:
    """The owner's signature over its answer and the query's nonce: what binds this node to the owner at the
    coordinator (b"" when the query carried no usable nonce; the coordinator then binds the node to no owner)."""
    nonce, experiment_id = asked.get(protocol.QUERY_NONCE), asked.get("experiment-id")
    if not (isinstance(nonce, str) and len(nonce) == 2 * NONCE_BYTES and isinstance(experiment_id, str)):
        return b""
    try:
        key = load_private_key(Path(owner.policy.signing_key).resolve(), owner.policy.passphrase())
    except (KeyFileError, OSError) as err:
        log.error("%s cannot sign its answer to the query: %s", owner.owner_id, err)
        return b""
    return sign_answer(key, experiment_id, nonce, owner.owner_id, head[0], head[1].hex())
