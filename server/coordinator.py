"""The coordinator's own key and ledgers: what it signs, and where its anchors persist.

The coordinator signs its chain of anchors (the federation ledger of each experiment
and the registry across experiments) with an Ed25519 key kept in its folder (mode
0600, optionally encrypted: ``coordinator-key-passphrase-env`` names the environment
variable holding the passphrase).  A simulation creates the key on first use; a
deployment brings its own (``privfl deploy init``) and refuses to start without it,
since a new key would orphan every anchor signed so far.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privfl.config import ConfigError, ExperimentConfig
from privfl.privacy.keys import generate_key, load_private_key, save_private_key, save_public_key
from privfl.privacy.ledger import FederationLedger
from privfl.privacy.ledger.registry import CoordinatorRegistry
from privfl.server.run_dir import Layout


@dataclass
class CoordinatorLedgers:
    key: Ed25519PrivateKey
    federation: FederationLedger
    registry: CoordinatorRegistry


def coordinator_key(config: ExperimentConfig, where: Layout) -> Ed25519PrivateKey:
    path = where.coordinator_key
    passphrase = None
    if config.coordinator_key_passphrase_env:
        passphrase = os.environ.get(config.coordinator_key_passphrase_env)
        if passphrase is None:
            raise ConfigError(f"coordinator-key-passphrase-env names {config.coordinator_key_passphrase_env}, "
                              "which is not set")
    if not path.exists():
        if config.deployment:
            raise ConfigError(f"no coordinator key at {path}: a deployment keeps one key for all its anchors "
                              "(create it with `privfl deploy init`, or point coordinator-dir at its folder)")
        key = generate_key()
        save_private_key(key, path, passphrase)
        save_public_key(key, where.coordinator_public_key)
        return key
    return load_private_key(path, passphrase)


def open_coordinator_ledgers(config: ExperimentConfig, where: Layout, stack: ExitStack) -> CoordinatorLedgers:
    """The key, the experiment's federation ledger and the registry, closed when ``stack`` closes."""
    key = coordinator_key(config, where)
    federation = stack.enter_context(FederationLedger.open(where.federation_ledger, key.public_key()))
    registry = stack.enter_context(CoordinatorRegistry.open(where.registry, key))
    return CoordinatorLedgers(key, federation, registry)
