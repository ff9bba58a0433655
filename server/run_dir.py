"""The run directory: every artefact of one run under one folder."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from privfl.config import ExperimentConfig

HISTORY = "history.json"
MODEL = "model.pt"
CONFIG = "config.json"
LEDGERS = "ledgers"  # <owner>.db per simulated owner, and the federation ledger
FEDERATION_LEDGER = "federation.db"
KEYS = "keys"  # simulated owners' key pairs; the server reads the .pub files


def default_run_dir(config: ExperimentConfig, base: Path | None = None) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return (base or Path.cwd() / "runs") / f"{config.experiment}-{stamp}"


def prepare_run_dir(config: ExperimentConfig) -> Path:
    """Create the run directory (refusing to reuse one that already holds a run)."""
    path = Path(config.run_dir) if config.run_dir else default_run_dir(config)
    path = path.resolve()
    if (path / HISTORY).exists():
        raise FileExistsError(f"{path} already holds a run ({HISTORY}); choose another run-dir")
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG).write_text(json.dumps(config.to_mapping(), indent=2) + "\n", encoding="utf-8")
    return path
