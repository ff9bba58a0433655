"""What the server knows of the task before round 1: the model's shape, a test set, the owners.

In a simulation the server can see the simulated federation's data (it enrols the
simulated owners, takes the model's shape from the data and evaluates on the central
test split when there is one).  In a deployment the coordinator holds no data: the
run config states the model's inputs and classes (``num-features``, ``num-classes``)
and evaluation happens at the owners.
"""

from __future__ import annotations

from dataclasses import dataclass

from privfl.config import BUNDLED_DATASETS, ConfigError, ExperimentConfig
from privfl.server.run_dir import Layout
from privfl.simulations.datasets import ArrayDataset


@dataclass(frozen=True, eq=False)
class FederationTask:
    num_features: int
    num_classes: int
    test: ArrayDataset | None
    owner_ids: tuple[str, ...]  # simulated owners; empty in a deployment


def federation_task(config: ExperimentConfig, where: Layout) -> FederationTask:
    if config.dataset not in (*BUNDLED_DATASETS, "folder"):
        return FederationTask(config.num_features, config.num_classes, None, ())
    from privfl.simulations.federation import simulated_federation

    federation = simulated_federation(config)
    for key, stated, actual in (("num-features", config.num_features, federation.num_features),
                                ("num-classes", config.num_classes, federation.num_classes)):
        if stated and stated != actual:
            raise ConfigError(f"{key} = {stated}, but the data has {actual}")
    if not config.deployment:
        from privfl.privacy.files import deferred_sync
        from privfl.simulations.owners import enroll_simulated_owners

        with deferred_sync():  # one sync for the whole enrolment; no owner trains before it returns
            enroll_simulated_owners(config, where, federation.owner_ids)
    return FederationTask(federation.num_features, federation.num_classes, federation.test,
                          () if config.deployment else federation.owner_ids)
