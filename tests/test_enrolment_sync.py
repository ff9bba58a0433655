"""A simulation enrols its owners with one sync for all of them, and every ledger written afterwards is durable.

Enrolment writes about 15 fsynced files an owner (policy, keys, empty ledger, head record), most
of a large simulation's time before round 0 under load; nothing is released before it ends, so
one ``os.sync()`` at its end gives the same durability to everything a round relies on.
"""

from __future__ import annotations

import os
from pathlib import Path

from privfl.config import ExperimentConfig
from privfl.privacy.files import deferred_sync, sync_each_write
from privfl.privacy.ledger import OwnerLedger
from privfl.privacy.ledger.node_head import node_head_path, read_node_head
from privfl.privacy.keys import load_private_key
from privfl.server.run_dir import Layout
from privfl.simulations.owners import enroll_simulated_owners


def _count(monkeypatch, name: str) -> list:
    calls, real = [], getattr(os, name)
    monkeypatch.setattr(os, name, lambda *args: calls.append(args) or real(*args))
    return calls


def test_enrolment_inside_deferred_sync_makes_no_fsync_and_one_sync(tmp_path, monkeypatch):
    where = Layout(tmp_path / "run", tmp_path / "fed", tmp_path / "fed" / "coordinator")
    fsyncs, syncs = _count(monkeypatch, "fsync"), _count(monkeypatch, "sync")
    with deferred_sync():
        policies = enroll_simulated_owners(ExperimentConfig(), where, ["owner-0", "owner-1", "owner-2"])
        assert not sync_each_write() and syncs == []
    assert fsyncs == [] and len(syncs) == 1 and sync_each_write()
    for policy in policies:  # enrolled whole: a ledger and a valid head record beside the key
        key = load_private_key(policy.signing_key)
        assert read_node_head(node_head_path(policy.signing_key), key.public_key()).sequence == 0
        with OwnerLedger.open(policy.ledger, policy.owner_id, key, create=False) as ledger:
            assert ledger._store.pragma("synchronous") == 2  # FULL again once enrolment is over


def test_enrolment_outside_deferred_sync_is_durable_file_by_file(tmp_path, monkeypatch):
    """The same code at an institution (``privfl deploy``) or in a test: each file fsynced as it is written."""
    where = Layout(tmp_path / "run", tmp_path / "fed", tmp_path / "fed" / "coordinator")
    fsyncs = _count(monkeypatch, "fsync")
    enroll_simulated_owners(ExperimentConfig(), where, ["owner-0"])
    assert len(fsyncs) >= 4


def test_a_failed_enrolment_still_syncs_what_it_wrote(tmp_path, monkeypatch):
    syncs = _count(monkeypatch, "sync")
    try:
        with deferred_sync():
            Path(tmp_path / "x").write_text("written")
            raise RuntimeError("enrolment failed")
    except RuntimeError:
        pass
    assert len(syncs) == 1 and sync_each_write()
