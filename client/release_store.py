"""The updates an owner has been charged for, kept until they are surely released.

A charge is committed before its update leaves (charge before release).  If the
client dies between the two, the round is retried; training again would release a
*second* noisy update under one charge, leaking more than the ledger says.  So the
update is saved before the charge, and a retried round re-sends exactly the update
the ledger entry names by hash.  Only the latest round is kept.

The save is not fsynced: the round's one durable write is the ledger's commit.  If a
crash loses the saved update while its charge survives, the retried round finds the
charge, not the update, and refuses to release a second one (safe: the charge
counts, nothing more leaves); only that owner's round is lost.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from privfl.client.training import LocalUpdate
from privfl.protocol import update_digest


class ReleaseStore:
    def __init__(self, ledger_path: Path) -> None:
        self.folder = ledger_path.with_name(ledger_path.name + ".releases")

    def _path(self, run_id: str, server_round: int) -> Path:
        return self.folder / f"{run_id.replace('/', '--')}-{server_round}.pt"

    def save(self, run_id: str, server_round: int, update: LocalUpdate) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self._path(run_id, server_round)
        tmp = final.with_suffix(".tmp")
        with open(tmp, "wb") as handle:
            torch.save({"state_dict": update.state_dict, "num_examples": update.num_examples,
                        "mean_loss": update.mean_loss, "metrics": update.metrics}, handle)
        os.replace(tmp, final)
        # Only the latest charged round can still be retried: earlier ones were released
        # (the server moved on), so their copies are no longer needed.
        for older in self.folder.glob("*.pt"):
            if older != final:
                older.unlink(missing_ok=True)

    def load(self, run_id: str, server_round: int, expected_hash: bytes | None = None) -> LocalUpdate | None:
        """The saved update, if it is there (and is the one whose hash the ledger holds, when it names one)."""
        path = self._path(run_id, server_round)
        if not path.exists():
            return None
        saved = torch.load(path, weights_only=True)
        if expected_hash is not None and update_digest(saved["state_dict"]) != expected_hash:
            return None
        return LocalUpdate(saved["state_dict"], saved["num_examples"], saved["mean_loss"], privacy_event=None,
                           metrics=saved.get("metrics"))
