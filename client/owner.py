"""The owner a node serves: its policy, its data and its ledger, as the node itself decides.

A deployed node reads everything from its own node config (:func:`load_owner_policy`)
and never from the run config, which the coordinator writes.  A simulated node
(Flower gives it a ``partition-id``) is one partition of the simulated federation; its
policy is the file its enrolment wrote in the simulation's owners folder.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privfl.client.data import OwnerData, OwnerDataError, deployed_owner_data, simulated_owner
from privfl.client.owner_ledger import open_owner_ledger
from privfl.config import ConfigError, ExperimentConfig
from privfl.privacy.keys import KeyFileError
from privfl.privacy.ledger import LedgerError, OwnerLedger
from privfl.privacy.policy import POLICY_FILE, OwnerPolicy, PolicyError, load_owner_policy, load_policy_file

# What stops an owner from even signing a refusal: it has no usable policy or key.
SETUP_ERRORS = (PolicyError, KeyFileError, LedgerError, ConfigError, OSError, ValueError)


class OwnerSetupError(Exception):
    """The node cannot act as an owner (no valid policy, key or ledger); it refuses unsigned."""

    def __init__(self, reason: str, owner_id: str = "") -> None:
        super().__init__(reason)
        self.owner_id = owner_id


@dataclass(frozen=True, eq=False)
class Owner:
    policy: OwnerPolicy
    ledger: OwnerLedger
    simulated: bool
    _context: Any
    _data: list  # one-element cache: data is read on first use, after the policy and key

    @property
    def owner_id(self) -> str:
        return self.policy.owner_id

    def data(self) -> OwnerData:
        """The owner's records (raises OwnerDataError: the owner then refuses, signed)."""
        if not self._data:
            if self.simulated:
                node = self._context.node_config
                config = ExperimentConfig.from_mapping(self._context.run_config, source="run config")
                self._data.append(simulated_owner(config, int(node["partition-id"]), int(node["num-partitions"])))
            else:
                self._data.append(deployed_owner_data(self.policy))
        return self._data[0]


_SIMULATION_KEYS = {"partition-id", "num-partitions"}  # what Flower's simulation engine puts in a node config


def node_owner(context: Any, owners_dir: str) -> Owner:
    """The owner this node serves; raises OwnerSetupError when it cannot even sign a refusal."""
    node_config = dict(context.node_config)
    # Simulated only when Flower's simulation keys are all there is: a node config that also names a
    # policy (an institution that copied Flower's "partition-id=0 num-partitions=2" beside it) is a
    # deployed node, refused for the mix, never one that reads its policy from the coordinator's folder.
    simulated = "partition-id" in node_config and set(node_config) <= _SIMULATION_KEYS
    owner_id = ""
    try:
        if simulated:
            owner_id = _simulated_owner_id(context)
            if not owners_dir:
                raise PolicyError("a simulated owner needs the simulation's owners folder, and the request names none")
            policy = load_policy_file(Path(owners_dir) / owner_id / POLICY_FILE)
        else:
            policy = load_owner_policy(node_config)
        owner_id = policy.owner_id
        ledger = open_owner_ledger(policy, simulated=simulated)
    except SETUP_ERRORS as err:
        raise OwnerSetupError(str(err), owner_id) from None
    return Owner(policy, ledger, simulated, context, [])


def _simulated_owner_id(context: Any) -> str:
    items = tuple(sorted(dict(context.run_config).items()))
    try:
        config = _run_config(items)
    except TypeError:  # a value that cannot be a cache key: validate it afresh
        config = ExperimentConfig.from_mapping(context.run_config, source="run config")
    node = context.node_config
    try:
        return simulated_owner(config, int(node["partition-id"]), int(node["num-partitions"])).owner_id
    except OwnerDataError as err:
        raise PolicyError(str(err)) from None


@functools.lru_cache(maxsize=16)
def _run_config(items: tuple) -> ExperimentConfig:
    """The run config, validated once per distinct config in this process (it was 0.5 ms of every message)."""
    return ExperimentConfig.from_mapping(dict(items), source="run config")
