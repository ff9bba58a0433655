"""Enrolling simulated owners: what an institution does once before it joins a federation.

An institution writes its policy, creates its ledger signing key (kept at home, mode
0600) and sends the public half to the coordinator, which registers it.  A simulated
owner gets the same, in its folder of the simulation's federation folder
(``owners/<owner>/``), with its policy derived from the experiment config
(:func:`privfl.privacy.policy.simulated_owner_policy`).

Enrolment creates the owner's ledger (its node never does) with the node's record of
its head.  It is idempotent: an owner already enrolled keeps its policy, key and ledger
(a reused federation folder composes the owner's lifetime spend), and its registered
public key must still be the key it signs with.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from privfl.config import ExperimentConfig
from privfl.privacy.keys import (
    KeyFileError, fingerprint, generate_key, load_private_key, load_public_key, save_private_key, save_public_key,
)
from privfl.privacy.ledger.node_head import enrol_owner_ledger
from privfl.privacy.policy import (
    POLICY_FILE, OwnerPolicy, load_policy_file, simulated_owner_policy, write_policy_file,
)
from privfl.server.run_dir import Layout

POLICY_HEADER = """Policy of a simulated owner, written from the experiment config when the owner was enrolled.
It is the owner's own from now on: later experiments on this federation folder use it as it stands.
Keys: `privfl policy --help`; the policy of a real institution: docs/deployment.md."""


def enroll_simulated_owners(config: ExperimentConfig, where: Layout, owner_ids: Iterable[str]) -> list[OwnerPolicy]:
    """Give every owner a policy, a signing key and a registered public key; returns the policies."""
    where.owner_keys_dir.mkdir(parents=True, exist_ok=True)
    return [_enroll(config, where, owner_id) for owner_id in owner_ids]


def enrolment_refusal(where: Layout) -> str | None:
    """Why the simulated owners of a reused federation folder cannot be enrolled (None: they can).

    An owner that the coordinator knows (a registered key, an anchored head) and whose ledger is missing or is
    another owner's is never given a fresh ledger (a fresh lifetime budget): the one audit of the folder
    (:func:`privfl.privacy.audit.audit_federation`) names it, and the simulation does not start.  Problems that
    name no owner (a first run that stopped before the registry was written) do not stop enrolment.
    """
    if not where.owner_keys_dir.is_dir() and not where.registry.exists():
        return None  # a new federation folder: nothing enrolled yet (a lost owner-keys folder is not one)
    from privfl.privacy.audit import audit_federation

    audit = audit_federation(where.federation_dir, coordinator_dir=where.coordinator_dir, verify_ledgers=False)
    if not audit.owners_not_intact:
        return None
    problems = "\n".join(f"problem: {p}" for p in audit.all_problems())
    return (f"{audit.verdict_line()}\n{problems}\nno run was started: a simulated owner whose ledger is missing or "
            "replaced is never given a fresh one (that would be a fresh lifetime budget); put its ledger back, or "
            "rebuild it with `privfl ledger recover` (docs/ledger.md)")


def _enroll(config: ExperimentConfig, where: Layout, owner_id: str) -> OwnerPolicy:
    folder = where.owner_dir(owner_id)
    policy_file = folder / POLICY_FILE
    if not policy_file.exists():
        write_policy_file(simulated_owner_policy(config, owner_id, folder), policy_file, header=POLICY_HEADER)
    policy = load_policy_file(policy_file)
    key_path = Path(policy.signing_key)
    if not key_path.exists() and key_path.parent == folder:  # a new simulated owner creates its key
        key = generate_key()
        save_private_key(key, key_path)
        save_public_key(key, key_path.with_suffix(".pub"))
    signing = load_private_key(policy.signing_key, policy.passphrase())
    registered = where.owner_keys_dir / f"{owner_id}.pub"
    if not registered.exists():
        save_public_key(signing, registered)
    elif fingerprint(load_public_key(registered)) != fingerprint(signing):
        raise KeyFileError(f"owner {owner_id}: the coordinator has key {fingerprint(load_public_key(registered))[:16]}"
                           f"... registered, but the owner signs with {fingerprint(signing)[:16]}...; an owner's key "
                           "changes only through a key rotation (docs/deployment.md)")
    enrol_owner_ledger(policy.ledger, owner_id, signing, policy.signing_key)  # the only place a simulated one starts
    return policy
