"""Which records a client trains on, decided from its node config.

Two ways in, one result (:class:`OwnerData`):
- deployment: the institution points its SuperNode at its own file with
  ``--node-config 'owner-id="st-mary" data-path="/data/st-mary.npz"'`` (arrays
  ``features`` float (n, d) and ``labels`` int (n,));
- simulation: Flower gives each simulated node only ``partition-id`` and
  ``num-partitions``, so the owner's share of a bundled dataset is recomputed from
  the experiment config (deterministic for its seed) and named after the partition.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from privfl.config import ExperimentConfig
from privfl.simulations.datasets import (
    ArrayDataset,
    heart_disease_owner_indices,
    load_dataset,
    natural_partitions,
)
from privfl.simulations.partitioning import dirichlet_partition, iid_partition


# A simulation's worker process serves many rounds of many owners: load each data set once.
_load_dataset = lru_cache(maxsize=4)(load_dataset)


class OwnerDataError(ValueError):
    """The node config does not identify a usable partition or data file."""


@dataclass(frozen=True, eq=False)
class OwnerData:
    owner_id: str
    train: ArrayDataset


def load_owner_data(config: ExperimentConfig, node_config: dict[str, Any]) -> OwnerData:
    if "data-path" in node_config:
        return _load_file(node_config)
    if "partition-id" not in node_config:
        raise OwnerDataError(
            "node config has neither 'data-path' (deployment) nor 'partition-id' (simulation); "
            "start the SuperNode with --node-config 'owner-id=\"...\" data-path=\"/path/to/data.npz\"'"
        )
    return simulated_owner(config, int(node_config["partition-id"]), int(node_config["num-partitions"]))


def simulated_owner(config: ExperimentConfig, partition_id: int, num_partitions: int) -> OwnerData:
    """Owner ``partition_id`` of a federation of ``num_partitions`` simulated owners.

    The federation's size is Flower's (``num-supernodes``), which ``privfl simulate``
    sets to ``num-owners``; with plain ``flwr run`` it is whatever the federation says.
    """
    if not 0 <= partition_id < num_partitions:
        raise OwnerDataError(f"partition-id {partition_id} is outside 0..{num_partitions - 1}")
    owner_ids, partitions = _partitions(config.dataset, config.partitioning, num_partitions,
                                        config.dirichlet_alpha, config.seed)
    train, _ = _load_dataset(config.dataset, config.seed)
    return OwnerData(owner_id=owner_ids[partition_id], train=train.subset(partitions[partition_id]))


def simulated_owner_ids(config: ExperimentConfig, num_partitions: int) -> tuple[str, ...]:
    """The owner names a simulated federation of ``num_partitions`` nodes will use."""
    return _partitions(config.dataset, config.partitioning, num_partitions, config.dirichlet_alpha, config.seed)[0]


@lru_cache(maxsize=8)
def _partitions(
    dataset: str, partitioning: str, num_owners: int, alpha: float, seed: int
) -> tuple[tuple[str, ...], tuple[np.ndarray, ...]]:
    """Owner names and index sets; cached because a worker process serves many rounds."""
    train, _ = _load_dataset(dataset, seed)
    if partitioning == "natural":
        names = natural_partitions(dataset)
        if names is None or len(names) != num_owners:
            raise OwnerDataError(
                f"{dataset} has {len(names or [])} natural owners ({', '.join(names or [])}) but the "
                f"federation has {num_owners} nodes; run it with num-supernodes = {len(names or [])}"
            )
        blocks = heart_disease_owner_indices()
        return tuple(names), tuple(blocks[name] for name in names)
    if partitioning == "iid":
        parts = iid_partition(len(train), num_owners, seed)
    else:
        parts = dirichlet_partition(train.labels, num_owners, alpha, seed)
    width = len(str(num_owners - 1))
    return tuple(f"owner-{i:0{width}d}" for i in range(num_owners)), tuple(parts)


def _load_file(node_config: dict[str, Any]) -> OwnerData:
    path = Path(str(node_config["data-path"]))
    owner_id = str(node_config.get("owner-id", "")).strip()
    if not owner_id:
        raise OwnerDataError("node config sets data-path but no owner-id; add owner-id=\"<your institution>\"")
    try:
        with np.load(path) as arrays:
            features, labels = arrays["features"], arrays["labels"]
    except FileNotFoundError:
        raise OwnerDataError(f"data-path {path} does not exist") from None
    except (KeyError, ValueError, OSError) as err:
        raise OwnerDataError(f"data-path {path}: expected an .npz with arrays 'features' and 'labels' ({err})") from None
    num_classes = int(node_config.get("num-classes", int(labels.max()) + 1))
    return OwnerData(owner_id, ArrayDataset(features, labels, num_classes, name=path.stem))
