"""Checks made before a simulation starts, so a bad config fails in a second with a clear
message instead of minutes later inside a Flower process."""

from __future__ import annotations

from privfl.config import ConfigError, ExperimentConfig
from privfl.models import ModelSpec
from privfl.privacy.budget import delta_problem
from privfl.simulations.federation import simulated_federation
from privfl.task import ModelMismatchError, ModelNotPrivatizableError, check_model


def preflight(config: ExperimentConfig) -> None:
    """Raise ConfigError for a config the run would fail on: data, model, owners, delta."""
    if config.deployment or config.dataset == "none":
        raise ConfigError("privfl simulate runs simulated owners on a data set (digits, heart-disease or folder); "
                          "for real institutions see docs/deployment.md")
    federation = simulated_federation(config)  # raises ConfigError for a bad split or data folder
    spec = ModelSpec(config.model, federation.num_features, federation.num_classes)
    try:
        check_model(spec, private=config.dp, seed=config.seed)
    except (ModelMismatchError, ModelNotPrivatizableError) as err:
        raise ConfigError(f"model = {config.model!r}: {err}") from None
    if config.owner_dp:
        _check_owner_level(config, len(federation.owner_ids))
    for owner_id, train in zip(federation.owner_ids, federation.train):
        if len(train) == 0:
            raise ConfigError(f"owner {owner_id} would hold no records; use fewer owners")
        problem = delta_problem(config.delta, len(train)) if config.dp else None
        if problem:
            raise ConfigError(f"owner {owner_id}: {problem}")


def _check_owner_level(config: ExperimentConfig, owners: int) -> None:
    """The owner-level mechanism and secure aggregation must be possible for this population."""
    from privfl.server.owner_dp import OwnerDpConfigError
    from privfl.server.owner_level import owner_level_dp, secagg_parameters
    from privfl.server.secure_aggregation import SecAggConfigError, check_secagg

    dp = owner_level_dp(config)
    try:
        dp.check(owners)
    except OwnerDpConfigError as err:
        raise ConfigError(f"owner-level DP: {err}") from None
    if config.secure_aggregation:
        cohort = config.owners_per_round if config.owner_sampling == "fixed" \
            else max(1, round(config.owner_sample_rate * owners))
        shares, threshold = secagg_parameters(config, cohort)
        try:
            check_secagg(min(shares, cohort), threshold, cohort)
        except SecAggConfigError as err:
            raise ConfigError(f"secure aggregation with about {cohort} owners per round: {err}") from None
    if config.owner_sampling == "fixed" and config.accountant == "pld":
        raise ConfigError("owner-sampling = 'fixed' is accounted with RDP (PLD does not compose sampling without "
                          "replacement): set accountant = \"rdp\" or owner-sampling = \"poisson\"")
