"""Checkpoints: after every round, what a resumed experiment needs to go on from there.

Flower does not resume: after a SuperLink restart the running ServerApp is gone and
the run ends ``finished:failed``.  privfl resumes the *experiment* in a new Flower run:
the ServerApp reads the last checkpoint of the run folder and goes on from the next
round, under the same experiment id, so every charge keeps its key (experiment, round).
An owner asked again for a round it already charged re-sends the update it charged for
(never a second one), and the coordinator, finding that receipt already kept and
anchored, does not record it twice.

A checkpoint is written after the round's receipts are durably committed:
``checkpoints/model.pt`` (the global model), then ``checkpoints/state.json`` (round,
strategy state, the federation ledger's anchor position, and the model file's sha256),
each replaced atomically, so a crash leaves the previous complete checkpoint or the
new one, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from privfl.privacy.ledger.chain import entry_hash
from privfl.privacy.ledger.store import LedgerStore

CHECKPOINTS = "checkpoints"
MODEL = "model.pt"
STATE = "state.json"


class CheckpointError(RuntimeError):
    """There is no usable checkpoint to resume from; the message says why."""


@dataclass
class Checkpoint:
    experiment_id: str
    round: int
    model_sha256: str
    rng_state: list = field(default_factory=list)
    refused_owners: dict[str, str] = field(default_factory=dict)  # owner -> why it will not train again
    not_evaluating: dict[str, str] = field(default_factory=dict)
    owner_dp: dict = field(default_factory=dict)  # owner-level DP's state (the adaptive clip)
    anchors: int = 0  # the federation ledger's anchor count when the round was settled
    anchor_head: str = ""  # sha256 hex of its last anchor


def write_checkpoint(run_dir: Path, state: Checkpoint, model_state: dict[str, torch.Tensor]) -> None:
    folder = run_dir / CHECKPOINTS
    folder.mkdir(exist_ok=True)
    model_path = folder / MODEL
    _atomic(model_path, lambda handle: torch.save(model_state, handle))
    state.model_sha256 = hashlib.sha256(model_path.read_bytes()).hexdigest()
    _atomic(folder / STATE, lambda handle: handle.write(json.dumps(asdict(state), indent=2).encode()))


def read_checkpoint(run_dir: Path) -> tuple[Checkpoint, dict[str, torch.Tensor]]:
    folder = run_dir / CHECKPOINTS
    try:
        data = json.loads((folder / STATE).read_text(encoding="utf-8"))
        state = Checkpoint(**data)
    except FileNotFoundError:
        raise CheckpointError(f"{run_dir} has no checkpoint ({CHECKPOINTS}/{STATE}): no round was completed, so "
                              "there is nothing to resume; start the experiment again") from None
    except (json.JSONDecodeError, TypeError) as err:
        raise CheckpointError(f"{folder / STATE} is not a privfl checkpoint ({err})") from None
    model_bytes = (folder / MODEL).read_bytes()
    if hashlib.sha256(model_bytes).hexdigest() != state.model_sha256:
        raise CheckpointError(f"{folder / MODEL} is not the model {folder / STATE} was written with "
                              "(sha256 differs): the checkpoint was altered")
    return state, torch.load(folder / MODEL, weights_only=True)


def federation_position(path: Path) -> tuple[int, str]:
    """(anchor count, last anchor's sha256 hex) of a federation ledger."""
    if not path.exists():
        return 0, ""
    store = LedgerStore.open_readonly(path)
    try:
        last = store.last_anchor()
        return (0, "") if last is None else (last.sequence, entry_hash(last.entry).hex())
    finally:
        store.close()


def check_federation_position(path: Path, state: Checkpoint) -> None:
    """The federation ledger must still hold the checkpoint's anchors (it was not rolled back)."""
    if not state.anchors:
        return
    store = LedgerStore.open_readonly(path)
    try:
        rows = [r for r in store.anchors() if r.sequence == state.anchors]
    finally:
        store.close()
    if not rows or entry_hash(rows[0].entry).hex() != state.anchor_head:
        raise CheckpointError(f"{path} no longer holds anchor {state.anchors} that the round-{state.round} "
                              "checkpoint recorded: the federation ledger was rolled back or replaced")


def _atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
