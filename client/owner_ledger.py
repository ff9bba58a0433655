"""Where an owner's ledger and signing key live, and opening them.

The owner's ledger is the record that counts (DESIGN principle 1).  In a deployment
the institution names its files in the SuperNode's node config::

    --node-config 'owner-id="st-mary" ledger-path="/secure/privfl/st-mary.db"
                   signing-key="/secure/privfl/st-mary.key" key-passphrase-env="ST_MARY_KEY_PASS"'

Simulated owners have no institution behind them: they keep their ledgers and keys
in the simulation's run directory (``ledgers/<owner>.db``, ``keys/<owner>.key``), in
the folders the simulation's server names, and a missing key is generated there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privfl.privacy.keys import generate_owner_keys, load_private_key, owner_key_paths
from privfl.privacy.ledger import OwnerLedger


class OwnerLedgerConfigError(ValueError):
    """The node config does not say where the owner's ledger or key is."""


@dataclass(frozen=True)
class LedgerLocation:
    ledger: Path
    private_key: Path
    passphrase: str | None = None
    simulated: bool = False


def locate(owner_id: str, node_config: dict[str, Any], asked: Any) -> LedgerLocation:
    """The owner's own files (deployment) or the simulation's folders (simulation)."""
    if "ledger-path" in node_config or "signing-key" in node_config:
        missing = [k for k in ("ledger-path", "signing-key") if k not in node_config]
        if missing:
            raise OwnerLedgerConfigError(f"node config sets one of ledger-path/signing-key but lacks {missing[0]}")
        passphrase = None
        if "key-passphrase-env" in node_config:
            variable = str(node_config["key-passphrase-env"])
            passphrase = os.environ.get(variable)
            if passphrase is None:
                raise OwnerLedgerConfigError(f"key-passphrase-env names {variable}, which is not set")
        return LedgerLocation(Path(str(node_config["ledger-path"])), Path(str(node_config["signing-key"])), passphrase)
    if "partition-id" not in node_config:
        raise OwnerLedgerConfigError(
            "a deployed owner needs its own ledger: add ledger-path=\"...\" and signing-key=\"...\" to --node-config "
            "(create the key with `privfl keys generate`)"
        )
    ledger_dir, keys_dir = Path(str(asked["ledger-dir"])), Path(str(asked["keys-dir"]))
    return LedgerLocation(ledger_dir / f"{owner_id}.db", owner_key_paths(keys_dir, owner_id)[0], simulated=True)


_OPEN: dict[tuple[str, Path, Path], OwnerLedger] = {}


def open_owner_ledger(owner_id: str, location: LedgerLocation) -> OwnerLedger:
    """The owner's ledger, kept open for the life of this process.

    A node process serves many rounds; reopening the ledger each round costs a schema
    check and a WAL checkpoint (an fsync) on every close.  Keeping it open is safe:
    every append takes SQLite's write lock and re-reads the chain head, so other
    processes appending to the same file are seen.
    """
    key = (owner_id, location.ledger.resolve(), location.private_key.resolve())
    if key not in _OPEN:
        _OPEN[key] = _open(owner_id, location)
    return _OPEN[key]


def _open(owner_id: str, location: LedgerLocation) -> OwnerLedger:
    if location.simulated and not location.private_key.exists():
        location.private_key.parent.mkdir(parents=True, exist_ok=True)
        try:
            generate_owner_keys(location.private_key.parent, owner_id)
        except FileExistsError:
            pass  # generated meanwhile by this owner's previous round
    location.ledger.parent.mkdir(parents=True, exist_ok=True)
    key = load_private_key(location.private_key, location.passphrase)
    return OwnerLedger.open(location.ledger, owner_id, key)


def close_owner_ledgers() -> None:
    """Close every ledger this process holds open (as a process exit or restart would)."""
    while _OPEN:
        _OPEN.popitem()[1].close()
