"""Canary owners for the owner-level audit of a *simulated* federation (Andrew et al., ICLR 2024; docs/audit.md).

k canary owners join the simulated owners.  Each has a fixed random unit direction in the
model's d-dimensional parameter space; whenever the coordinator draws it, its update is
that direction scaled to the clipping norm (:mod:`privfl.client.audit_canary`), so it is
clipped, summed, noised and charged like any owner's.  All k are inserted, as in the paper;
the null distribution comes from fresh random directions that were never inserted (their
cosine with any fixed vector is about N(0, 1/d)).  After training, the cosines of the
canaries' directions with the final model delta, against the fresh directions' cosines,
give the one-shot epsilon *estimate* (:func:`privfl.privacy.empirical.one_shot_estimate`).

Where they live: each canary owner is one more file of the audit's data folder (a few
records copied from the pool, which it never releases: its update is replaced) and a
direction file beside its policy in the simulation's owners folder.  Their owner ids start
with ``audit-canary-``, so every ledger entry and report line of one says it is an audit's
canary.  The directions (the secret) stay in ``<run-dir>/audit/canary-owners.npz``.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from privfl.client.audit_canary import CANARY_FILE
from privfl.config import ConfigError, ExperimentConfig
from privfl.privacy.empirical import EmpiricalEpsilon, one_shot_estimate
from privfl.privacy.empirical.one_shot import cosines
from privfl.simulations.federation import SimulatedFederation

CANARY_PREFIX = "audit-canary-"  # a canary owner's id: marked as an audit's in every ledger entry and report
SECRET_FILE = "canary-owners.npz"
CANARY_RECORDS = 16  # records a canary owner holds so that it can be set up like any owner (never released)
NULL_DIRECTIONS = 2000  # fresh random directions for the null distribution of the cosine


@dataclass(frozen=True, eq=False)
class CanaryOwners:
    """The canary owners' ids and directions (unit rows, in the model's flattened parameter order)."""

    owner_ids: tuple[str, ...]
    directions: np.ndarray  # (k, d) float64, unit rows

    def __len__(self) -> int:
        return len(self.owner_ids)

    @property
    def dim(self) -> int:
        return int(self.directions.shape[1])

    def save(self, path: Path) -> None:
        np.savez(path, owner_ids=np.array(self.owner_ids), directions=self.directions)

    @classmethod
    def load(cls, path: Path) -> CanaryOwners:
        with np.load(path, allow_pickle=False) as archive:
            return cls(tuple(str(o) for o in archive["owner_ids"]), archive["directions"])


def model_dimension(config: ExperimentConfig, num_features: int, num_classes: int) -> int:
    """d: the number of parameters of ``config``'s model (what a direction must span)."""
    from privfl.models import build_model

    model = build_model(config.model, num_features, num_classes)
    return int(sum(v.numel() for v in model.state_dict().values()))


def draw_canary_owners(count: int, dim: int, *, seed: int | None = None) -> CanaryOwners:
    """``count`` canary owners with independent uniformly random unit directions in R^dim."""
    if count < 2:
        raise ConfigError(f"the owner-level audit needs at least 2 canary owners (the Gaussian fit), not {count}")
    rng = np.random.default_rng(secrets.randbits(128) if seed is None else seed)
    width = len(str(count - 1))
    ids = tuple(f"{CANARY_PREFIX}{i:0{width}d}" for i in range(count))
    return CanaryOwners(ids, unit_directions(rng, count, dim))


def unit_directions(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    """``count`` independent uniformly random unit vectors in R^dim (normalised Gaussians)."""
    raw = rng.standard_normal((count, dim))
    return raw / np.linalg.norm(raw, axis=1, keepdims=True)


def write_canary_owner_data(data: Path, federation: SimulatedFederation, canaries: CanaryOwners, *,
                            seed: int | None = None) -> None:
    """One data file per canary owner in the audit's data folder: a few pooled records (all classes if it can)."""
    rng = np.random.default_rng(secrets.randbits(128) if seed is None else seed)
    features = np.concatenate([t.features for t in federation.train])
    labels = np.concatenate([t.labels for t in federation.train])
    for owner_id in canaries.owner_ids:
        rows = rng.choice(len(labels), size=min(CANARY_RECORDS, len(labels)), replace=False)
        np.savez(data / f"{owner_id}.npz", features=features[rows], label=labels[rows])


def place_canary_directions(owners_dir: Path, canaries: CanaryOwners) -> None:
    """Write each canary owner's direction beside its (future) policy: what makes its node a canary."""
    for owner_id, direction in zip(canaries.owner_ids, canaries.directions, strict=True):
        folder = Path(owners_dir) / owner_id
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / CANARY_FILE, direction)


def flat_delta(final: Mapping[str, Any], initial: Mapping[str, Any]) -> np.ndarray:
    """final - initial, flattened over the arrays in ``initial``'s order (the order the directions use)."""
    parts = []
    for name, start in initial.items():
        end = final[name]
        parts.append((np.asarray(end, dtype=np.float64) - np.asarray(start, dtype=np.float64)).ravel())
    return np.concatenate(parts)


def owner_level_estimate(canaries: CanaryOwners, model_delta: np.ndarray, *, delta: float,
                         seed: int | None = None) -> EmpiricalEpsilon:
    """The one-shot estimate from the canaries' cosines with ``model_delta``, null from fresh directions."""
    if model_delta.size != canaries.dim:
        raise ValueError(f"the model delta has {model_delta.size} values, the canaries' directions {canaries.dim}")
    rng = np.random.default_rng(secrets.randbits(128) if seed is None else seed)
    observed = cosines(canaries.directions, model_delta)
    null = cosines(unit_directions(rng, NULL_DIRECTIONS, canaries.dim), model_delta)
    estimate = one_shot_estimate(observed, dim=canaries.dim, delta=delta, null_cosines=null)
    estimate.details.update(null_directions=NULL_DIRECTIONS, null_std_observed=float(np.std(null, ddof=1)),
                            canary_cosines=observed.tolist())
    return estimate


def prepare_owner_audit(config: ExperimentConfig, audited: ExperimentConfig, count: int, *,
                        seed: int | None = None) -> tuple[ExperimentConfig, CanaryOwners]:
    """Add ``count`` canary owners to ``audited``, the experiment that
    :func:`~privfl.simulations.canaries.prepare_audit` made of ``config``.

    Writes their data files into the audit's data folder (records drawn from ``config``'s
    owners: the audited folder is not read here, so no process caches it without them) and
    the secret into ``<run-dir>/audit/canary-owners.npz``; the direction files go beside their
    policies once the owners folder is known (:func:`place_canary_directions`, after ``settle``).
    """
    from privfl.simulations.canaries import AUDIT_FOLDER
    from privfl.simulations.federation import simulated_federation

    if config.deployment or audited.deployment or not audited.owner_dp:
        raise ConfigError("canary owners audit owner-level DP (owner-dp = true) of a simulation (deployment = false)")
    federation = simulated_federation(config)
    canaries = draw_canary_owners(count, model_dimension(audited, federation.num_features, federation.num_classes),
                                  seed=seed)
    write_canary_owner_data(Path(audited.data_dir), federation, canaries, seed=seed)
    canaries.save(Path(audited.run_dir) / AUDIT_FOLDER / SECRET_FILE)
    return audited.replace(purpose=f"{audited.purpose} ({count} canary owners)"), canaries
