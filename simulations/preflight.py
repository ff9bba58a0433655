"""Checks made before a simulation starts, so a bad config fails in a second with a clear
message instead of minutes later inside a Flower process."""

from __future__ import annotations

from privfl.client.data import OwnerDataError, simulated_owner
from privfl.config import ConfigError, ExperimentConfig
from privfl.models import ModelNotPrivatizableError, ensure_privatizable
from privfl.simulations.datasets import load_dataset


def preflight(config: ExperimentConfig) -> None:
    """Raise ConfigError for a config the run would fail on: model, partitions, delta."""
    _, test = load_dataset(config.dataset, config.seed)
    try:
        from privfl.models import ModelSpec

        model = ModelSpec(config.model, test.num_features, test.num_classes).build(seed=config.seed)
        if config.dp:
            ensure_privatizable(model)
    except ModelNotPrivatizableError as err:
        raise ConfigError(f"model = {config.model!r}: {err}") from None
    except (ValueError, TypeError) as err:
        raise ConfigError(f"model = {config.model!r}: {err}") from None
    for partition in range(config.num_owners):
        try:
            owner = simulated_owner(config, partition, config.num_owners)
        except (OwnerDataError, ValueError) as err:
            raise ConfigError(f"cannot give {config.num_owners} owners their data: {err}") from None
        if len(owner.train) == 0:
            raise ConfigError(f"owner {owner.owner_id} would hold no records; use fewer owners")
        if config.dp and config.delta >= 1.0 / len(owner.train):
            raise ConfigError(
                f"delta = {config.delta:g} is not below 1/n for owner {owner.owner_id} "
                f"(n = {len(owner.train)}); set delta below {1.0 / len(owner.train):.2g}"
            )
