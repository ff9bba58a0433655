"""The records an owner trains and evaluates on.

Two ways in, one result (:class:`OwnerData`):
- deployment: the institution's policy names its own files (``data``, and
  ``evaluation-data`` if it answers evaluation requests), read with
  :mod:`privfl.datafiles` (CSV, Parquet or .npz; schema in docs/data.md);
- simulation: Flower gives each simulated node only ``partition-id`` and
  ``num-partitions``; the owner's share is that partition of the simulated
  federation (:func:`privfl.simulations.federation.simulated_federation`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from privfl.config import ExperimentConfig
from privfl.privacy.policy import OwnerPolicy
from privfl.simulations.datasets import ArrayDataset
from privfl.simulations.federation import simulated_federation


class OwnerDataError(ValueError):
    """The owner's data cannot be read or does not fit; the message says why."""


@dataclass(frozen=True, eq=False)
class OwnerData:
    owner_id: str
    train: ArrayDataset
    evaluation: ArrayDataset | None = None


def simulated_owner(config: ExperimentConfig, partition_id: int, num_partitions: int) -> OwnerData:
    """Owner ``partition_id`` of a federation of ``num_partitions`` simulated owners."""
    if not 0 <= partition_id < num_partitions:
        raise OwnerDataError(f"partition-id {partition_id} is outside 0..{num_partitions - 1}")
    owner_id, train, evaluation = simulated_federation(config, num_partitions).owner(partition_id)
    return OwnerData(owner_id, train, evaluation)


def deployed_owner_data(policy: OwnerPolicy) -> OwnerData:
    """The institution's own files, as its policy names them (read once while unchanged)."""
    train = _read(policy.data, policy.label_column, "data")
    evaluation = _read(policy.evaluation_data, policy.label_column, "evaluation-data") \
        if policy.evaluation_data else None
    return OwnerData(policy.owner_id, train, evaluation)


def _read(path: str, label_column: str, key: str) -> ArrayDataset:
    file = Path(path)
    try:
        stat = file.stat()
    except OSError as err:
        raise OwnerDataError(f"{key} {file}: {err.strerror or err}") from None
    return _read_cached(str(file.resolve()), stat.st_mtime_ns, stat.st_size, label_column, key)


@lru_cache(maxsize=8)
def _read_cached(path: str, mtime_ns: int, size: int, label_column: str, key: str) -> ArrayDataset:
    from privfl.datafiles import DataFileError, read_owner_data

    try:
        loaded = read_owner_data(path, label_column=label_column)
    except DataFileError as err:
        raise OwnerDataError(f"{key} {path}: {err}") from None
    return loaded if isinstance(loaded, ArrayDataset) else loaded.dataset
