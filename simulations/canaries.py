"""Canary records for an empirical privacy audit of a *simulated* federation (issue 21, docs/audit.md).

An audit plants m generated records (random inputs in the data's range, random labels)
among the simulated owners; each is included in its owner's training data independently
with probability 1/2, by a coin drawn from a secret seed (the OS's entropy unless a test
gives one).  After training, how well the final model fits each canary is scored, and
the one-run bound (:mod:`privfl.privacy.empirical.one_run`) turns the guesses into an
epsilon lower bound.

Where canaries live.  Only here, in the simulation's data setup: the audited experiment
is run on a data folder written for it (``<run-dir>/audit/data``: one file per simulated
owner, its records plus its included canaries), so the ClientApp trains exactly as in
``privfl simulate`` and nothing in the client, the server or a deployed institution's data
path knows about canaries.  A real institution's data never receives one: the audit
refuses ``deployment = true``.  The secret (every canary, its owner and its coin) stays in
``<run-dir>/audit/canaries.npz``, outside the data folder the owners read.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privfl.config import ConfigError, ExperimentConfig
from privfl.simulations.datasets import ArrayDataset
from privfl.simulations.federation import EVALUATION_FOLDER, SimulatedFederation

AUDIT_FOLDER = "audit"
DATA_FOLDER = "data"
SECRET_FILE = "canaries.npz"
CANARY_NORM = 5.0  # a canary input's norm, in multiples of the largest training record's
AUDIT_SUFFIX = "-audit"  # the audited experiment's name, and so its run directory and experiment id


@dataclass(frozen=True, eq=False)
class Canaries:
    """m generated records, the owner each is planted at, and whether its coin put it in (the secret)."""

    features: np.ndarray  # (m, d) float32
    labels: np.ndarray  # (m,) int64
    owner: np.ndarray  # (m,) index of the owner it is planted at
    included: np.ndarray  # (m,) bool: the coin

    def __len__(self) -> int:
        return len(self.labels)

    def planted_at(self, index: int) -> np.ndarray:
        """Rows of the canaries that owner ``index`` trains on (its own, included)."""
        return np.flatnonzero((self.owner == index) & self.included)

    def save(self, path: Path) -> None:
        np.savez(path, features=self.features, labels=self.labels, owner=self.owner, included=self.included)

    @classmethod
    def load(cls, path: Path) -> Canaries:
        with np.load(path, allow_pickle=False) as archive:
            return cls(archive["features"], archive["labels"], archive["owner"], archive["included"].astype(bool))


def draw_canaries(federation: SimulatedFederation, count: int, *, seed: int | None = None) -> Canaries:
    """``count`` canaries spread evenly over the owners; the coins come from ``seed`` (default: OS entropy).

    Inputs are isotropic Gaussian directions, zero-mean, of norm ``CANARY_NORM`` times the
    largest record norm in the owners' training data; labels are uniform over the classes.
    Nothing real looks like them, and a model fits one only by memorising it: the loss of
    an included canary drops, an excluded one's does not.  (Inputs drawn within the data's
    range were tried first: with the mechanism broken, noise 0, their losses told nothing
    apart on digits; far-out inputs move the canary's own logit by the update times its norm.)
    """
    if count < 2:
        raise ConfigError(f"an audit needs at least 2 canaries, not {count}")
    rng = np.random.default_rng(secrets.randbits(128) if seed is None else seed)
    pooled = np.concatenate([t.features for t in federation.train])
    radius = CANARY_NORM * float(np.linalg.norm(pooled, axis=1).max())
    directions = rng.standard_normal((count, pooled.shape[1]))
    features = (directions / np.linalg.norm(directions, axis=1, keepdims=True) * radius).astype(np.float32)
    labels = rng.integers(0, federation.num_classes, size=count).astype(np.int64)
    owner = rng.permutation(np.arange(count) % len(federation.owner_ids))
    included = rng.random(count) < 0.5
    return Canaries(features, labels, owner, included)


def with_canaries(federation: SimulatedFederation, canaries: Canaries) -> SimulatedFederation:
    """The federation whose owners train on their records plus their included canaries."""
    train = []
    for index, data in enumerate(federation.train):
        rows = canaries.planted_at(index)
        train.append(ArrayDataset(np.concatenate([data.features, canaries.features[rows]]),
                                  np.concatenate([data.labels, canaries.labels[rows]]),
                                  data.num_classes, f"{data.name} + {len(rows)} canaries"))
    return SimulatedFederation(federation.owner_ids, tuple(train), federation.evaluation, federation.test,
                               federation.num_features, federation.num_classes)


def prepare_audit(config: ExperimentConfig, count: int, *, seed: int | None = None) -> tuple[ExperimentConfig,
                                                                                               Canaries]:
    """Plant canaries in ``config``'s simulated owners; returns the experiment to run and the secret.

    ``count = 0`` plants none (the owner-level audit alone, :mod:`privfl.simulations.canary_owners`,
    adds canary owners to the same data folder).

    ``config.run_dir`` must be set (settled).  Writes ``<run-dir>/audit/data`` (what the
    owners read) and ``<run-dir>/audit/canaries.npz`` (what only the auditor reads).
    """
    from privfl.simulations.federation import simulated_federation

    if config.deployment:
        raise ConfigError("an audit plants canaries in simulated owners' data: it runs simulations only "
                          "(deployment = false); a real institution's data never receives canaries")
    if config.federation_dir:
        raise ConfigError("an audit runs on a fresh federation folder of its own (leave federation-dir empty), "
                          "so that no owner's lifetime ledger is charged for a run on planted data")
    if config.resume:
        raise ConfigError("an audit cannot resume: its canaries' coins are drawn once, for one run")
    federation = simulated_federation(config)
    canaries = draw_canaries(federation, count, seed=seed) if count else no_canaries(federation)
    folder = Path(config.run_dir) / AUDIT_FOLDER
    data = folder / DATA_FOLDER
    (data / EVALUATION_FOLDER).mkdir(parents=True, exist_ok=True)
    for owner_id, train in zip(federation.owner_ids, with_canaries(federation, canaries).train):
        np.savez(data / f"{owner_id}.npz", features=train.features, label=train.labels)
    for owner_id, evaluation in zip(federation.owner_ids, federation.evaluation):
        if evaluation is not None:
            np.savez(data / EVALUATION_FOLDER / f"{owner_id}.npz", features=evaluation.features,
                     label=evaluation.labels)
    if federation.test is not None:
        np.savez(data / "test.npz", features=federation.test.features, label=federation.test.labels)
    canaries.save(folder / SECRET_FILE)
    audited = config.replace(
        experiment=config.experiment + AUDIT_SUFFIX, dataset="folder", data_dir=str(data.resolve()),
        label_column="label", num_owners=0, partitioning="natural", num_classes=federation.num_classes,
        purpose=f"{config.purpose} (empirical privacy audit" + (f" with {count} canaries)" if count else ")"))
    return audited, canaries


def no_canaries(federation: SimulatedFederation) -> Canaries:
    """No canary records (an audit of the owner level alone: the owners' data stays as it is)."""
    return Canaries(np.zeros((0, federation.num_features), dtype=np.float32), np.zeros(0, dtype=np.int64),
                    np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool))


def canary_losses(model: object, canaries: Canaries) -> np.ndarray:
    """Each canary's loss under ``model`` (a torch module): low loss = the model fits it = likely trained on."""
    import torch

    from privfl.task import ClassificationLoss

    module: torch.nn.Module = model  # type: ignore[assignment]
    module.eval()
    with torch.no_grad():
        logits = module(torch.as_tensor(canaries.features))
        losses = ClassificationLoss(reduction="none")(logits, torch.as_tensor(canaries.labels))
    return losses.double().numpy()
