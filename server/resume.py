"""How a ServerApp run starts: a new experiment, or one resumed from its last checkpoint.

A resumed experiment is the same experiment (same id, folders, owners, data, model,
DP plan): only ``num-rounds`` may grow and ``round-timeout`` change.  Anything else
that differs from the run folder's ``config.json`` is refused, because the owners'
charges of the earlier rounds were made under that config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from privfl.config import ConfigError, ExperimentConfig
from privfl.server import run_dir as artefacts
from privfl.server.checkpoint import Checkpoint, check_federation_position, read_checkpoint
from privfl.server.history import RunHistory

MAY_CHANGE_ON_RESUME = {"resume", "num-rounds", "round-timeout", "coordinator-key-passphrase-env"}


@dataclass
class Start:
    config: ExperimentConfig
    where: artefacts.Layout
    completed: int = 0  # rounds already done
    weights: dict[str, torch.Tensor] | None = None
    history: RunHistory | None = None
    checkpoint: Checkpoint | None = None


def fresh_start(asked: ExperimentConfig) -> Start:
    config = artefacts.settle(asked)
    where = artefacts.prepare_run_dir(config)
    weights = _initial_model(config.initial_model) if config.initial_model else None
    return Start(config, where, weights=weights)


def resumed_start(asked: ExperimentConfig) -> Start:
    if not asked.run_dir:
        raise ConfigError("resume = true needs run-dir: the folder of the experiment to resume")
    run_dir = Path(asked.run_dir).resolve()
    try:
        recorded = json.loads((run_dir / artefacts.CONFIG).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{run_dir} holds no experiment to resume ({artefacts.CONFIG} is missing)") from None
    config = ExperimentConfig.from_mapping({**recorded, "resume": True, "num-rounds": asked.num_rounds,
                                            "round-timeout": asked.round_timeout,
                                            "coordinator-key-passphrase-env": asked.coordinator_key_passphrase_env},
                                           source=str(run_dir / artefacts.CONFIG))
    changed = sorted(k for k, v in asked.to_mapping().items()
                     if k not in MAY_CHANGE_ON_RESUME and v != recorded.get(k) and v != ExperimentConfig().to_mapping()[k])
    if changed:
        raise ConfigError(f"a resumed experiment keeps its settings; these differ from {run_dir / artefacts.CONFIG}: "
                          f"{', '.join(changed)}")
    where = artefacts.layout(config)
    checkpoint, weights = read_checkpoint(run_dir)
    if checkpoint.experiment_id != config.experiment_id:
        raise ConfigError(f"the checkpoint is of experiment {checkpoint.experiment_id}, not {config.experiment_id}")
    if config.num_rounds < checkpoint.round:
        raise ConfigError(f"num-rounds = {config.num_rounds}, but {checkpoint.round} rounds are already done")
    if config.dp or config.owner_dp:
        check_federation_position(where.federation_ledger, checkpoint)
    history = RunHistory.load(where.history, up_to_round=checkpoint.round)
    history.config = config.to_mapping()
    (run_dir / artefacts.CONFIG).write_text(json.dumps({**recorded, "num-rounds": config.num_rounds}, indent=2) + "\n",
                                            encoding="utf-8")
    return Start(config, where, checkpoint.round, weights, history, checkpoint)


def _initial_model(path: str) -> dict[str, torch.Tensor]:
    try:
        return torch.load(Path(path), weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"initial-model {path} does not exist") from None
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a file that is not a state dict
        raise ConfigError(f"initial-model {path} is not a saved model ({type(err).__name__}: {err})") from None
