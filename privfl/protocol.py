"""What travels between ServerApp and ClientApp besides the weights, in one place.

A round request (train or evaluate) carries ``arrays`` (the global model) and
``config``: the :class:`RoundRequest` — privfl's protocol and package versions, the
experiment id and round that key every charge, the declared purpose and privacy unit,
the model's shape and, for training, the :class:`TrainingPlan`.  The owner checks all
of it against its own policy before anything else (:mod:`privfl.client.round`).

A train reply carries ``arrays`` (the update), ``metrics`` (only ``num-examples``, its
FedAvg weight: the exact count only where the owner's policy declares it public; no
training loss, which no DP covers) and ``privacy``: the owner's signed ledger
entry for the round (its receipt; never averaged).  A refusal carries only
``privacy``: the signed refusal entry, or, when the owner cannot sign at all (no
valid policy, no key), an unsigned refusal with the reason.  An evaluate reply
carries ``metrics`` (loss, accuracy, num-examples: released without DP, as the owner's
policy declares and bounds) and ``owner`` (who answered).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from flwr.app import ConfigRecord

from privfl import __version__
from privfl.models import ModelSpec
from privfl.privacy.events import LEAST_NOISE, PoissonSubsampledGaussian, below_least_noise
from privfl.settings import key_of, non_negative

# Bumped whenever a key below changes meaning or a required key is added; an owner
# refuses a coordinator that speaks another version rather than guess what it means.
PROTOCOL_VERSION = 2

ARRAYS = "arrays"
METRICS = "metrics"
TRAIN_CONFIG = "config"
PRIVACY = "privacy"
OWNER = "owner"

TRAINED = "trained"
REFUSED = "refused"

SIGNED_ENTRY = "signed-entry"  # bytes of the owner's SignedEntry (protos/ledger.proto)
OWNER_ID = "owner-id"
NON_PRIVATE = "non-private"
UNSIGNED_REFUSAL = "refusal"  # reason text, when the owner could not sign a refusal
OWNER_PRIVFL_VERSION = "privfl-version"
OWNER_PROTOCOL_VERSION = "protocol-version"
BRIDGE = "bridge"  # the owner's signed entries between the anchored head and the receipt
BRIDGE_ELIDED = "bridge-elided"  # the bridge's entries of other experiments: hashes only (privacy/ledger/bridge.py)
HEAD_SEQUENCE = "head-sequence"  # an owner's answer to a query: its ledger head
HEAD_HASH = "head-hash"
QUERY_NONCE = "query-nonce"  # in a query: fresh random hex the owner signs with its answer
ANSWER_SIGNATURE = "answer-signature"  # the owner's signature over its answer (privacy/ledger/identity.py)

# SecAgg+ (owner-level rounds summed securely).  privfl's secure_sum
# (privfl.server.secure_aggregation) adds the SECAGG_RECORD ConfigRecord to the
# masked-vectors request, saying what the owner's mod (privfl.client.secure_aggregation)
# masks; the mod adds a SECAGG_RECORD of its own to its reply.  Flower's own stage keys
# (the "secaggplus_configs" record) are Flower's and are not repeated here.
SECAGG_RECORD = "privfl-secagg"
SECAGG_PAYLOAD_KEY = "payload-key"  # the ArrayRecord (request: global model; reply: delta) that is summed
SECAGG_CLIP_NORM = "clip-norm"  # L2 norm the payload is clipped to (0: the handler clips)
SECAGG_COUNT_UNCLIPPED = "count-unclipped"  # append the bit "norm <= C" to the masked payload
SECAGG_CLIPPING_RANGE = "clipping-range"  # SecAgg+'s per-coordinate range: the bit is scaled to it
SECAGG_HAS_UPDATE = "has-update"  # reply: False when the handler returned no update (a refusal)
UNCLIPPED_METRIC = "unclipped"  # the handler's bit "||delta|| <= C before clipping"; leaves only masked
# In an evaluation answer: 1 when num-examples is the exact count of evaluation records (the owner's policy
# declares it public), 0 when it is only a weight (1) and the count stays at the owner.
EXAMPLES_PUBLIC = "num-examples-public"


class ProtocolError(ValueError):
    """A message that does not follow this protocol (missing key, wrong type, other version)."""


# An experiment id keys every charge in every owner's ledger, and an owner-level charge is
# keyed "<experiment id>/owner" (OwnerRound.charge_key): so an id may not hold '/', else the
# record-level charges of experiment "X/owner" would sit under the key of X's owner-level ones.
_EXPERIMENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def experiment_id_problem(experiment_id: str) -> str | None:
    """Why ``experiment_id`` cannot key an owner's charges (None: it can)."""
    if isinstance(experiment_id, str) and _EXPERIMENT_ID.fullmatch(experiment_id):
        return None
    return (f"experiment id {experiment_id!r} is not usable: use 1-200 letters, digits, '.', '_' or '-', starting "
            "with a letter or digit (an id with '/' could take another experiment's or another privacy unit's "
            "charges for its own)")


def update_digest(state_dict: Mapping[str, Any]) -> bytes:
    """sha256 over a state dict's names, dtypes, shapes and bytes, in key order.

    The owner's ledger entry holds this digest of the update it released; the server
    recomputes it from the arrays it received, so an update cannot be swapped for
    another after it was charged.
    """
    digest = hashlib.sha256()
    for name, tensor in state_dict.items():
        array = tensor.detach().cpu().contiguous().numpy() if hasattr(tensor, "detach") else np.asarray(tensor)
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.digest()


@dataclass(frozen=True)
class TrainingPlan:
    """How the coordinator asks every owner to train in a round."""

    local_epochs: int
    batch_size: int
    learning_rate: float
    momentum: float
    dp: bool
    noise_multiplier: float
    max_grad_norm: float
    grad_sample_mode: str
    # > 0: each owner plans its own noise multiplier for this experiment (privacy/planning.py)
    # to cost it target_epsilon over num_rounds rounds; noise_multiplier is then ignored.
    target_epsilon: float = 0.0
    num_rounds: int = 0

    @classmethod
    def from_config(cls, config: Any) -> TrainingPlan:
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})

    @property
    def owner_planned(self) -> bool:
        return self.dp and self.target_epsilon > 0

    def batches_per_epoch(self, num_examples: int) -> int:
        return max(1, math.ceil(num_examples / self.batch_size))

    def max_update_norm(self, num_examples: int, num_parameters: int) -> float:
        """A norm no DP-SGD update of this plan exceeds, except with probability below 1e-12.

        Each step moves the model by the learning rate times (the clipped per-example
        gradients, at most one per record, of norm ``max_grad_norm``, plus Gaussian
        noise of norm at most sigma C (sqrt(d) + 7.5) with that probability), divided by
        Opacus's expected batch size (records x rate, rounded down); momentum at most
        multiplies a step by 1 / (1 - momentum).  An update beyond it was not produced by
        this plan.  It holds for every record count with the same batches per epoch as
        ``num_examples``: an owner need not send its exact count
        (:func:`privfl.client.guard.released_count` sends batches x batch size).
        """
        batches = self.batches_per_epoch(num_examples)
        most, fewest = batches * self.batch_size, (batches - 1) * self.batch_size + 1
        expected_batch = max(math.floor(fewest / batches), 1)
        noise = self.noise_multiplier * self.max_grad_norm * (math.sqrt(num_parameters) + 7.5) if self.dp else 0.0
        per_step = self.learning_rate * (most * self.max_grad_norm + noise) / expected_batch
        return self.local_epochs * batches * per_step / max(1.0 - self.momentum, 1e-12)

    def update_norm_bound(self, event: PoissonSubsampledGaussian, num_parameters: int) -> float:
        """A norm no update of this plan's DP-SGD under the signed ``event`` exceeds, except with probability
        below 1e-12 a step, from the event alone: no count the owner states enters it.

        Opacus samples at q = 1 / batches and divides each step's sum by the expected batch
        n q, which exceeds b (batches - 1) / batches (n > b (batches - 1)) and is at least 1.
        A Poisson batch of mean B holds more than B + 7.5 sqrt(B) + 30 records with
        probability below 1e-12 (Chernoff), each clipped to C; the noise is as in
        :meth:`max_update_norm`.  A step then moves the model at most
        lr (C (B + 7.5 sqrt(B) + 30) + noise) / B, which falls as B grows, so the least B
        gives the bound; momentum at most multiplies a step by 1 / (1 - momentum).
        """
        batches = max(1, round(1 / event.sample_rate))
        expected = max(1.0, self.batch_size * (batches - 1) / batches)
        records = expected + 7.5 * math.sqrt(expected) + 30
        noise = event.noise_multiplier * self.max_grad_norm * (math.sqrt(num_parameters) + 7.5)
        per_step = self.learning_rate * (records * self.max_grad_norm + noise) / expected
        return event.steps * per_step / max(1.0 - self.momentum, 1e-12)

    def privacy_event(self, num_examples: int) -> PoissonSubsampledGaussian:
        """The DP event one round of this plan is, for an owner with ``num_examples`` records.

        Opacus's DPDataLoader samples each record with rate 1 / len(data_loader),
        i.e. 1 / ceil(n / batch_size), and takes len(data_loader) steps per epoch.
        """
        from privfl.privacy.planning import dp_sgd_round  # the one home of the rule

        return dp_sgd_round(self.noise_multiplier, num_examples, self.batch_size, self.local_epochs)


_PLAN_TYPES = {"local_epochs": int, "batch_size": int, "learning_rate": float, "momentum": float, "dp": bool,
               "noise_multiplier": float, "max_grad_norm": float, "grad_sample_mode": str, "target_epsilon": float,
               "num_rounds": int}


TRAIN_STAGE = "train"
OWNER_CHARGE_STAGE = "owner-charge"  # an owner-level round's first step: every owner charges before the draw


@dataclass(frozen=True)
class OwnerRound:
    """An owner-level (DP-FedAvg) round as the owners are told it, before anyone is sampled.

    The mechanism: the coordinator samples owners (Poisson at ``sample_rate``, or
    ``sample_size`` of ``population`` without replacement), clips each sampled owner's
    update to ``clipping_norm`` and adds Gaussian noise with the accounted multiplier
    ``noise_multiplier`` to their sum.  Its DP event is the same for every owner in the
    population, sampled or not: amplification by sampling is only sound if every round
    is charged to every owner that could have been drawn.
    """

    noise_multiplier: float
    sampling: str  # "poisson" | "fixed"
    sample_rate: float
    sample_size: int
    population: int
    clipping_norm: float
    secure: bool  # updates are summed by SecAgg+: the coordinator never sees one in the clear

    def event(self) -> Any:
        from privfl.privacy.owner_level import OwnerSampling

        return OwnerSampling(self.sampling, self.sample_rate, self.sample_size).event(self.noise_multiplier,
                                                                                     self.population)

    @staticmethod
    def charge_key(experiment_id: str) -> str:
        """Owner-level charges are keyed apart from the same round's record-level (DP-SGD) charge."""
        return f"{experiment_id}/owner"


_OWNER_TYPES = {"noise_multiplier": float, "sampling": str, "sample_rate": float, "sample_size": int,
                "population": int, "clipping_norm": float, "secure": bool}


@dataclass(frozen=True)
class RoundRequest:
    """What the coordinator asks of an owner in one round, as the owner reads it."""

    experiment_id: str
    server_round: int
    purpose: str
    privacy_unit: str
    model: ModelSpec
    plan: TrainingPlan
    protocol_version: int = PROTOCOL_VERSION
    privfl_version: str = __version__
    owners_dir: str = ""  # simulations only: where simulated owners keep their folders
    # The last head of this node's owner that the coordinator anchored (0, "": none yet):
    # the owner shows it still holds it and sends the entries written since.
    anchor_sequence: int = 0
    anchor_hash: str = ""
    stage: str = TRAIN_STAGE
    owner_round: OwnerRound | None = None  # owner-level DP rounds only

    def to_record(self) -> ConfigRecord:
        values: dict[str, Any] = {
            "protocol-version": self.protocol_version, "privfl-version": self.privfl_version,
            "experiment-id": self.experiment_id, "server-round": self.server_round, "purpose": self.purpose,
            "privacy-unit": self.privacy_unit, "owners-dir": self.owners_dir,
            "anchor-sequence": self.anchor_sequence, "anchor-hash": self.anchor_hash,
            "stage": self.stage,
            **self.model.to_record_values(),
            **{key_of(f.name): getattr(self.plan, f.name) for f in fields(TrainingPlan)},
        }
        if self.owner_round is not None:
            values.update({f"owner-{key_of(name)}": getattr(self.owner_round, name) for name in _OWNER_TYPES})
        return ConfigRecord(values)

    @classmethod
    def from_record(cls, record: Any) -> RoundRequest:
        """Parse and type-check a request; raises ProtocolError saying what is wrong."""
        version = record.get("protocol-version") if hasattr(record, "get") else None
        if version != PROTOCOL_VERSION:
            raise ProtocolError(
                f"the coordinator speaks privfl protocol {version!r} (privfl {record.get('privfl-version', '?')}); "
                f"this owner speaks protocol {PROTOCOL_VERSION} (privfl {__version__}): upgrade one side")
        plan = TrainingPlan(**{name: _typed(record, key_of(name), kind) for name, kind in _PLAN_TYPES.items()})
        model = ModelSpec(_typed(record, "model", str), _typed(record, "num-features", int),
                          _typed(record, "num-classes", int))
        problem = plan_value_problem(plan) or _model_value_problem(model) or _owner_terms_problem(record)
        if problem:
            raise ProtocolError(problem)
        return cls(
            experiment_id=_typed(record, "experiment-id", str), server_round=_typed(record, "server-round", int),
            purpose=_typed(record, "purpose", str), privacy_unit=_typed(record, "privacy-unit", str),
            model=model, plan=plan, protocol_version=version,
            privfl_version=_typed(record, "privfl-version", str), owners_dir=str(record.get("owners-dir", "")),
            anchor_sequence=_typed(record, "anchor-sequence", int), anchor_hash=_typed(record, "anchor-hash", str),
            stage=_typed(record, "stage", str),
            owner_round=OwnerRound(**{name: _typed(record, f"owner-{key_of(name)}", kind)
                                      for name, kind in _OWNER_TYPES.items()})
            if "owner-sampling" in record else None,
        )

    def for_owner(self, anchored: tuple[int, bytes] | None) -> RoundRequest:
        """This request for one owner, naming the head the coordinator anchored for it."""
        from dataclasses import replace

        if anchored is None:
            return replace(self, anchor_sequence=0, anchor_hash="")
        return replace(self, anchor_sequence=anchored[0], anchor_hash=anchored[1].hex())


# Bounds on numbers a request may carry, whatever the config rules allow.  Beyond MAX_MAGNITUDE
# arithmetic on them overflows (a clipping norm of 1.8e308 squared); below LEAST_NOISE a DP event
# cannot be accounted (the PLD accountant's grid for sigma 1e-6 asked for petabytes) and a step costs
# an epsilon in the hundreds anyway.
MAX_MAGNITUDE = 1e12


def _number_problem(key: str, value: float) -> str | None:
    if not math.isfinite(value):
        return f"the request's {key} = {value!r}: must be a finite number"
    if abs(value) > MAX_MAGNITUDE:
        return f"the request's {key} = {value!r}: must be at most {MAX_MAGNITUDE:g} in size"
    return None


def plan_value_problem(plan: TrainingPlan) -> str | None:
    """Why a plan's values cannot be trained with (None: they can), before any training starts.

    Each value is held to the rule the experiment config sets for the same key (one home:
    :class:`privfl.config.ExperimentConfig`), and every number must be finite: a
    coordinator can send what no config file would pass (batch size 0, a NaN or infinite
    clipping norm, an unknown per-sample-gradient mode), and the owner answers it with a
    refusal naming the value rather than an exception inside training.
    """
    from privfl.config import ExperimentConfig

    checks = {f.name: f.metadata.get("check") for f in fields(ExperimentConfig)}
    checks["num_rounds"] = non_negative  # a plan's 0: the coordinator set no privacy target over rounds
    for f in fields(TrainingPlan):
        value = getattr(plan, f.name)
        problem = _number_problem(key_of(f.name), value) if isinstance(value, float) else None
        if problem:
            return problem
        check = checks.get(f.name)
        message = check(value) if check is not None else None
        if message:
            return f"the request's {key_of(f.name)} = {value!r}: {message}"
    if plan.dp and plan.noise_multiplier > 0 and below_least_noise(plan.noise_multiplier):
        return f"the request's noise-multiplier = {plan.noise_multiplier!r}: must be 0 or at least {LEAST_NOISE:g}"
    return None


# The most classes a request may name: the owner allocates the model (features x classes and
# more) before any weight arrives, so an unbounded count is a memory-exhaustion attack.
MAX_CLASSES = 100_000


def _model_value_problem(model: ModelSpec) -> str | None:
    if model.num_features < 1:
        return f"the request's num-features = {model.num_features}: must be >= 1"
    if model.num_classes < 2:
        return f"the request's num-classes = {model.num_classes}: must be >= 2"
    if model.num_classes > MAX_CLASSES:  # the owner builds the model before it loads the weights
        return f"the request's num-classes = {model.num_classes}: must be at most {MAX_CLASSES:,}"
    return None


def _owner_terms_problem(record: Any) -> str | None:
    """Owner-level terms the mechanism cannot run with, by its own rules (the owner sampling and the DP event)."""
    if "owner-sampling" not in record:
        return None
    terms = OwnerRound(**{name: _typed(record, f"owner-{key_of(name)}", kind) for name, kind in _OWNER_TYPES.items()})
    for name in ("noise_multiplier", "sample_rate", "clipping_norm"):
        problem = _number_problem(f"owner-{key_of(name)}", getattr(terms, name))
        if problem:
            return problem
    if not terms.clipping_norm > 0:
        return f"the request's owner-clipping-norm = {terms.clipping_norm!r}: must be > 0"
    if terms.noise_multiplier > 0 and below_least_noise(terms.noise_multiplier):
        return f"the request's owner-noise-multiplier = {terms.noise_multiplier!r}: must be at least {LEAST_NOISE:g}"
    try:
        terms.event()
    except (ValueError, TypeError) as err:
        return f"the request's owner-level terms cannot be accounted: {err}"
    return None


def _typed(record: Any, key: str, kind: type) -> Any:
    if key not in record:
        raise ProtocolError(f"the request lacks '{key}'")
    value = record[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"the request's '{key}' is {value!r}, not a {kind.__name__}")
    return value


def signed_receipt(signed_entry: bytes, bridge: list[bytes] | tuple[bytes, ...] = (),
                   elided: list[bytes] | tuple[bytes, ...] = ()) -> ConfigRecord:
    """What an owner sends about a round: its signed ledger entry, the entries since the anchored
    head (those of other experiments elided to their hashes), and the code it runs."""
    values: dict[str, Any] = {SIGNED_ENTRY: signed_entry, OWNER_PRIVFL_VERSION: __version__,
                              OWNER_PROTOCOL_VERSION: PROTOCOL_VERSION}
    if bridge:
        values[BRIDGE] = list(bridge)
    if elided:
        values[BRIDGE_ELIDED] = list(elided)
    return ConfigRecord(values)


def head_answer(owner_id: str, head: tuple[int, bytes], signature: bytes = b"") -> ConfigRecord:
    """An owner's answer to the coordinator's query: who it is and where its ledger stands, signed over
    the query's nonce when the query carried one (only a signed answer binds the node to the owner)."""
    values: dict[str, Any] = {OWNER_ID: owner_id, HEAD_SEQUENCE: head[0], HEAD_HASH: head[1].hex(),
                              OWNER_PRIVFL_VERSION: __version__, OWNER_PROTOCOL_VERSION: PROTOCOL_VERSION}
    if signature:
        values[ANSWER_SIGNATURE] = signature
    return ConfigRecord(values)


def unsigned_refusal(reason: str, owner_id: str = "") -> ConfigRecord:
    """A refusal the owner cannot sign (no valid policy or key): the reason, nothing else to trust."""
    return ConfigRecord({UNSIGNED_REFUSAL: reason, OWNER_ID: owner_id, OWNER_PRIVFL_VERSION: __version__,
                         OWNER_PROTOCOL_VERSION: PROTOCOL_VERSION})


def non_private_receipt(owner_id: str, signed_entry: bytes = b"") -> ConfigRecord:
    """An owner whose policy allows non-private training: its update carries no DP guarantee.

    ``signed_entry``: the owner's ledger entry that recorded the release before it left (a
    ``NonPrivateRelease`` charge: the owner's epsilon is infinite from then on).
    """
    values: dict[str, Any] = {OWNER_ID: owner_id, NON_PRIVATE: True, OWNER_PRIVFL_VERSION: __version__,
                              OWNER_PROTOCOL_VERSION: PROTOCOL_VERSION}
    if signed_entry:
        values[SIGNED_ENTRY] = signed_entry
    return ConfigRecord(values)


def owner_record(owner_id: str) -> ConfigRecord:
    """Who answered an evaluation request (kept per owner, never averaged)."""
    return ConfigRecord({OWNER_ID: owner_id, OWNER_PRIVFL_VERSION: __version__})


@dataclass(frozen=True)
class PrivacyReceipt:
    """The server's reading of an owner's round, taken from its verified ledger entry."""

    owner_id: str
    status: str  # TRAINED or REFUSED
    epsilon: float  # cumulative after this round (or spent so far, when refused); inf if non-private
    delta: float
    accountant: str
    noise_multiplier: float = 0.0
    sample_rate: float = 0.0
    steps: int = 0
    reason: str = ""
    signed: bool = True  # False: an unsigned refusal (the owner had no valid policy or key)
    sequence: int = 0  # the owner's ledger head after this entry
    privacy_unit: str = "record"  # the unit the entry's epsilon is for

    @classmethod
    def from_entry(cls, entry: Any) -> PrivacyReceipt:
        """From a verified :class:`privfl.privacy.ledger.Entry` (charge or refusal)."""
        event = entry.event if entry.is_charge else None
        return cls(
            owner_id=entry.owner_id, status=TRAINED if entry.is_charge else REFUSED,
            epsilon=entry.cumulative_epsilon, delta=entry.delta, accountant=entry.accountant,
            noise_multiplier=getattr(event, "noise_multiplier", 0.0),
            sample_rate=getattr(event, "sample_rate", 0.0), steps=getattr(event, "steps", 0),
            reason=entry.refusal_reason, sequence=entry.sequence,
            privacy_unit=entry.privacy_unit if entry.privacy_unit in ("record", "owner") else "record",
        )

    @classmethod
    def non_private(cls, owner_id: str) -> PrivacyReceipt:
        return cls(owner_id=owner_id, status=TRAINED, epsilon=math.inf, delta=0.0, accountant="")

    @classmethod
    def unsigned_refusal(cls, owner_id: str, reason: str) -> PrivacyReceipt:
        return cls(owner_id=owner_id, status=REFUSED, epsilon=math.nan, delta=0.0, accountant="", reason=reason,
                   signed=False)
