"""Flat rows of a ledger for people and spreadsheets: ``privfl ledger show/export``.

Every field of every entry, plus the signed form (entry bytes in base64, signature
in hex), so an exported file is itself evidence a third party can re-verify.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from privfl.privacy.events import Gaussian, PoissonSubsampledGaussian
from privfl.privacy.ledger.entry import Entry, decode_entry
from privfl.privacy.ledger.store import LedgerStore

COLUMNS = (
    "owner_id", "sequence", "kind", "run_id", "round", "mechanism", "noise_multiplier", "sample_rate", "steps",
    "clipping_norm", "privacy_unit", "delta", "accountant", "cumulative_epsilon", "epsilon_budget", "purpose",
    "timestamp", "update_hash", "refusal_reason", "previous_hash", "entry_hash", "key_fingerprint",
    "signature", "entry_base64", "federation",  # new columns are appended: scripts index the old ones
)


def read_ledger(path: str | Path) -> tuple[dict[str, str], list[Entry]]:
    """(metadata, entries in chain order) of a ledger file, opened read-only. Does not verify."""
    store = LedgerStore.open_readonly(path)
    try:
        return store.meta(), [decode_entry(r.entry, r.signature, r.key_fingerprint) for r in store.rows()]
    finally:
        store.close()


def entry_row(entry: Entry) -> dict[str, Any]:
    event = entry.event
    noise = rate = steps = None
    if isinstance(event, PoissonSubsampledGaussian):
        noise, rate, steps = event.noise_multiplier, event.sample_rate, event.steps
    elif isinstance(event, Gaussian):
        noise = event.noise_multiplier
    timestamp = datetime.fromtimestamp(entry.timestamp_unix_nanos / 1e9, tz=timezone.utc)
    return {
        "owner_id": entry.owner_id,
        "sequence": entry.sequence,
        "kind": entry.kind,
        "run_id": entry.run_id,
        "round": entry.round,
        "mechanism": entry.mechanism,
        "noise_multiplier": noise,
        "sample_rate": rate,
        "steps": steps,
        "clipping_norm": entry.clipping_norm,
        "privacy_unit": entry.privacy_unit,
        "delta": entry.delta,
        "accountant": entry.accountant,
        "cumulative_epsilon": entry.cumulative_epsilon,
        "epsilon_budget": entry.epsilon_budget,
        "purpose": entry.purpose,
        "timestamp": timestamp.isoformat(timespec="microseconds"),
        "update_hash": entry.update_hash.hex(),
        "refusal_reason": entry.refusal_reason,
        "previous_hash": entry.previous_hash.hex(),
        "entry_hash": entry.hash.hex(),
        "key_fingerprint": entry.key_fingerprint,
        "signature": entry.signature.hex(),
        "entry_base64": base64.b64encode(entry.entry_bytes).decode(),
        "federation": entry.federation,
    }


def to_json(meta: dict[str, str], entries: list[Entry]) -> str:
    document = {"ledger": {k: meta[k] for k in sorted(meta)}, "entries": [entry_row(e) for e in entries]}
    return json.dumps(document, indent=2, allow_nan=True) + "\n"


def to_csv(entries: list[Entry]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for entry in entries:
        writer.writerow({k: ("" if v is None else v) for k, v in entry_row(entry).items()})
    return buffer.getvalue()


def to_table(entries: list[Entry]) -> str:
    """A fixed-width table for a terminal."""
    header = ("owner", "seq", "kind", "run", "round", "event", "unit", "eps", "budget", "delta", "acct",
              "time (UTC)", "purpose / reason")
    rows = []
    for e in entries:
        event = e.event
        if isinstance(event, PoissonSubsampledGaussian):
            what = f"sigma={event.noise_multiplier:g} q={event.sample_rate:.4g} steps={event.steps}"
        elif isinstance(event, Gaussian):
            what = f"gaussian sigma={event.noise_multiplier:g}"
        else:
            what = e.mechanism or "-"
        when = datetime.fromtimestamp(e.timestamp_unix_nanos / 1e9, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        rows.append((e.owner_id, str(e.sequence), e.kind, e.run_id, str(e.round), what, e.privacy_unit,
                     f"{e.cumulative_epsilon:.4g}", f"{e.epsilon_budget:g}", f"{e.delta:g}", e.accountant, when,
                     e.refusal_reason or e.purpose))
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines) + "\n"
