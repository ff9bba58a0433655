"""Where things live: a run's artefacts, and the folders that outlive runs.

- the run directory: everything one run produced and a report is built from
  (history, model, checkpoints, config, the federation ledger, the report); it holds
  no private key;
- the coordinator folder: the coordinator's signing key, the owners' registered public
  keys and the registry of each owner's last accepted ledger head; it outlives runs,
  so a rolled-back owner ledger is caught in any later run;
- simulations only, the owners folder: one folder per simulated owner with its policy,
  ledger and signing key (what an institution keeps on its own premises).

A simulation's federation folder holds the last two (``owners/`` and
``coordinator/``); reusing it composes the owners' spend across experiments.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from privfl.config import ExperimentConfig

HISTORY = "history.json"
MODEL = "model.pt"
CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
LEDGERS = "ledgers"
FEDERATION_LEDGER = "federation.db"

FEDERATION_SUFFIX = ".federation"
OWNERS = "owners"
COORDINATOR = "coordinator"
OWNER_KEYS = "owner-keys"  # <owner>.pub, the owners' registered ledger keys
COORDINATOR_KEY = "coordinator.key"
COORDINATOR_PUBLIC_KEY = "coordinator.pub"
REGISTRY = "registry.db"  # the last ledger head the coordinator accepted per owner


@dataclass(frozen=True)
class Layout:
    run_dir: Path
    federation_dir: Path
    coordinator_dir: Path

    @property
    def owners_dir(self) -> Path:
        return self.federation_dir / OWNERS

    def owner_dir(self, owner_id: str) -> Path:
        return self.owners_dir / owner_id

    @property
    def owner_keys_dir(self) -> Path:
        return self.coordinator_dir / OWNER_KEYS

    @property
    def coordinator_key(self) -> Path:
        return self.coordinator_dir / COORDINATOR_KEY

    @property
    def coordinator_public_key(self) -> Path:
        return self.coordinator_dir / COORDINATOR_PUBLIC_KEY

    @property
    def registry(self) -> Path:
        return self.coordinator_dir / REGISTRY

    @property
    def federation_ledger(self) -> Path:
        return self.run_dir / LEDGERS / FEDERATION_LEDGER

    @property
    def history(self) -> Path:
        return self.run_dir / HISTORY


def default_run_dir(config: ExperimentConfig, base: Path | None = None) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return (base or Path.cwd() / "runs") / f"{config.experiment}-{stamp}"


def new_experiment_id(config: ExperimentConfig) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{config.experiment}-{stamp}-{secrets.token_hex(3)}"


def settle(config: ExperimentConfig) -> ExperimentConfig:
    """Fill in what an empty setting means (run dir, experiment id, folders), once, as absolute paths."""
    run_dir = Path(config.run_dir).resolve() if config.run_dir else default_run_dir(config)
    federation = Path(config.federation_dir).resolve() if config.federation_dir \
        else run_dir.with_name(run_dir.name + FEDERATION_SUFFIX)
    coordinator = Path(config.coordinator_dir).resolve() if config.coordinator_dir else federation / COORDINATOR
    data_dir = str(Path(config.data_dir).resolve()) if config.data_dir else ""
    return config.replace(run_dir=str(run_dir), federation_dir=str(federation), coordinator_dir=str(coordinator),
                          data_dir=data_dir, experiment_id=config.experiment_id or new_experiment_id(config))


def layout(config: ExperimentConfig) -> Layout:
    """The folders of a settled config (:func:`settle`)."""
    return Layout(Path(config.run_dir), Path(config.federation_dir), Path(config.coordinator_dir))


def prepare_run_dir(config: ExperimentConfig) -> Layout:
    """Create the run directory (refusing to reuse one that already holds a run) and record the config."""
    where = layout(config)
    if where.history.exists():
        raise FileExistsError(f"{where.run_dir} already holds a run ({HISTORY}); choose another run-dir")
    (where.run_dir / LEDGERS).mkdir(parents=True, exist_ok=True)
    (where.run_dir / CONFIG).write_text(json.dumps(config.to_mapping(), indent=2) + "\n", encoding="utf-8")
    return where


RUNS = "runs"  # a deployment's coordinator folder keeps its runs in runs/<name>


def is_run_folder(path: str | Path) -> bool:
    """A run folder of today's layout: it holds the run's history."""
    return (Path(path) / HISTORY).is_file()


def is_federation_folder(path: str | Path) -> bool:
    """A simulation's federation folder (``coordinator/``, ``owners/``), not a run folder."""
    path = Path(path)
    return not is_run_folder(path) and ((path / COORDINATOR).is_dir() or (path / OWNERS).is_dir())


def locate(run_dir: str | Path, *, federation_dir: str | Path | None = None,
           coordinator_dir: str | Path | None = None) -> Layout:
    """The folders of a run found from the run folder itself (and what the user named), never from its config.json.

    Why: whoever can write the run folder can edit config.json, and the coordinator's
    key and registry are the trust root every audit checks the ledgers against; so
    they come from where the user points (``federation_dir``, ``coordinator_dir``) or,
    by default, from where privfl puts them beside the run: the simulation's
    ``<run-dir>.federation/`` folder next to the run, else the deployment's coordinator
    folder that holds ``runs/<name>``.  A copied run (with its federation folder) is
    judged by its own files.
    """
    run_dir = Path(run_dir)
    federation = Path(federation_dir) if federation_dir else run_dir.with_name(run_dir.name + FEDERATION_SUFFIX)
    if coordinator_dir:
        coordinator = Path(coordinator_dir)
    elif federation_dir or federation.is_dir():
        coordinator = federation / COORDINATOR
    elif run_dir.resolve().parent.name == RUNS and (run_dir.resolve().parent.parent / COORDINATOR_PUBLIC_KEY).is_file():
        coordinator = run_dir.resolve().parent.parent
    else:
        coordinator = federation / COORDINATOR  # not there: the audit says the trust root is missing
    return Layout(run_dir, federation, coordinator)
