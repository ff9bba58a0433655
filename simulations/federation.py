"""A simulated federation's data: who the owners are and what each holds.

One function, :func:`simulated_federation`, answers for every part of a simulation
(the launcher's pre-flight checks and enrolment, the ServerApp's model shape and
central test set, each simulated ClientApp's training and evaluation data), so all
of them see the same owners with the same records.  The result depends only on the
config (data set, partitioning, seed), and is cached per process: a worker serves
many rounds of many owners.

Sources:
- bundled data sets (digits, heart-disease), split IID, by Dirichlet label skew, or
  naturally (one owner per hospital); each owner also holds its share of the test
  split, which it evaluates the global model on when asked (federated evaluation);
- a folder of per-owner files (``dataset = "folder"``): each file is one owner, an
  optional ``test.*`` is the central test set and optional ``evaluation/<owner>.*``
  files are what each owner evaluates on.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from privfl.config import BUNDLED_DATASETS, ConfigError, ExperimentConfig
from privfl.simulations.datasets import (
    ArrayDataset,
    heart_disease_owner_indices,
    load_dataset,
    load_heart_disease,
    natural_partitions,
)
from privfl.simulations.partitioning import dirichlet_partition, iid_partition

EVALUATION_FOLDER = "evaluation"
DEFAULT_OWNERS = 10  # num-owners = 0 on a data set without natural owners


@dataclass(frozen=True, eq=False)
class SimulatedFederation:
    owner_ids: tuple[str, ...]
    train: tuple[ArrayDataset, ...]
    evaluation: tuple[ArrayDataset | None, ...]  # what each owner evaluates on
    test: ArrayDataset | None  # the central test set, when the experiment names one
    num_features: int
    num_classes: int

    def owner(self, index: int) -> tuple[str, ArrayDataset, ArrayDataset | None]:
        return self.owner_ids[index], self.train[index], self.evaluation[index]


def simulated_federation(config: ExperimentConfig, num_owners: int | None = None) -> SimulatedFederation:
    """The owners of ``config``'s simulation (``num_owners`` defaults to the config's)."""
    if config.dataset not in (*BUNDLED_DATASETS, "folder"):
        raise ConfigError(f"dataset = {config.dataset!r} has no data to simulate owners with; use digits, "
                          "heart-disease or folder")
    return _build(config.dataset, config.data_dir, config.label_column, config.num_classes, config.scheme,
                  num_owners if num_owners is not None else config.num_owners, config.dirichlet_alpha, config.seed)


@lru_cache(maxsize=8)
def _build(dataset: str, data_dir: str, label_column: str, num_classes: int, scheme: str, num_owners: int,
           alpha: float, seed: int) -> SimulatedFederation:
    if dataset == "folder":
        return _from_folder(Path(data_dir), label_column, num_classes or None, num_owners)
    train, test = load_dataset(dataset, seed)
    if scheme == "natural":
        names = natural_partitions(dataset) or []
        if num_owners not in (0, len(names)):
            raise ConfigError(f"{dataset} has {len(names)} natural owners ({', '.join(names)}), not {num_owners}; "
                              f"set num-owners = {len(names)} (or 0)")
        blocks = heart_disease_owner_indices()
        per_hospital = load_heart_disease()
        return SimulatedFederation(
            owner_ids=tuple(names), train=tuple(train.subset(blocks[n]) for n in names),
            evaluation=tuple(per_hospital[n][1] for n in names), test=test,
            num_features=train.num_features, num_classes=train.num_classes)
    num_owners = num_owners or DEFAULT_OWNERS
    try:
        parts = _split(train, scheme, num_owners, alpha, seed, min_size=10)
    except ValueError as err:
        raise ConfigError(f"cannot split {dataset} into {num_owners} owners: {err}") from None
    try:  # each owner's share of the test split, for federated evaluation
        evaluation = tuple(test.subset(p) for p in _split(test, scheme, num_owners, alpha, seed, min_size=1))
    except ValueError:  # more owners than test records: owners hold no evaluation data
        evaluation = (None,) * num_owners
    width = len(str(num_owners - 1))
    return SimulatedFederation(
        owner_ids=tuple(f"owner-{i:0{width}d}" for i in range(num_owners)),
        train=tuple(train.subset(p) for p in parts), evaluation=evaluation,
        test=test, num_features=train.num_features, num_classes=train.num_classes)


def _split(data: ArrayDataset, scheme: str, num_owners: int, alpha: float, seed: int,
           min_size: int) -> list[np.ndarray]:
    if scheme == "iid":
        return iid_partition(len(data), num_owners, seed)
    return dirichlet_partition(data.labels, num_owners, alpha, seed, min_partition_size=min_size)


def _from_folder(folder: Path, label_column: str, num_classes: int | None, num_owners: int) -> SimulatedFederation:
    from privfl.datafiles import DataFileError, load_data_folder, read_owner_data

    try:
        data = load_data_folder(folder, label_column=label_column, num_classes=num_classes)
    except DataFileError as err:
        raise ConfigError(f"data-dir {folder}: {err}") from None
    owner_ids = tuple(data.owners)
    if num_owners not in (0, len(owner_ids)):
        raise ConfigError(f"data-dir {folder} holds {len(owner_ids)} owners ({', '.join(owner_ids)}), not "
                          f"{num_owners}; set num-owners = {len(owner_ids)} (or 0)")
    evaluation = []
    for owner_id in owner_ids:
        files = sorted((folder / EVALUATION_FOLDER).glob(f"{owner_id}.*")) if (folder / EVALUATION_FOLDER).is_dir() \
            else []
        try:
            evaluation.append(_dataset(read_owner_data(files[0], label_column=label_column,
                                                       num_classes=data.num_classes)) if files else None)
        except DataFileError as err:
            raise ConfigError(f"{files[0]}: {err}") from None
    return SimulatedFederation(owner_ids=owner_ids, train=tuple(data.owners[o] for o in owner_ids),
                               evaluation=tuple(evaluation), test=data.test, num_features=data.num_features,
                               num_classes=data.num_classes)


def _dataset(loaded: object) -> ArrayDataset:
    """An ArrayDataset from what the data-file reader returns (a table with names, or the data set)."""
    return loaded if isinstance(loaded, ArrayDataset) else loaded.dataset  # type: ignore[attr-defined]


def partition_sizes(federation: SimulatedFederation) -> dict[str, int]:
    return {o: len(t) for o, t in zip(federation.owner_ids, federation.train)}


__all__ = ["SimulatedFederation", "partition_sizes", "simulated_federation"]
