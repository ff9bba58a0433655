"""Custody of an owner's ledger against a hostile coordinator and against accidents (issue 19, items 7 and 9).

Real owner rounds (privfl's ClientApp round with Flower's Message and Context), real
SQLite ledgers, real Ed25519 keys, and the coordinator's real receipt check, federation
ledgers and registry.  A coordinator here is what privfl's ServerApp keeps: a key, a
registry across experiments, a federation ledger per experiment; a hostile one sends
whatever anchor it likes.

- item 7: a missing or moved ledger is never a fresh lifetime budget: the node never
  creates a ledger and checks it against its own head record, whatever anchor the
  coordinator sends; a lost ledger is rebuilt from the coordinators' copies, verified.
- item 9: a coordinator receives in full only the entries of its own experiment;
  every other entry reaches it as hashes, and its chain check still holds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from flwr.app import Message, MessageType, RecordDict

from privfl import protocol
from privfl.cli import main as privfl
from privfl.client.owner_ledger import close_owner_ledgers
from privfl.client.round import run_train_round
from privfl.privacy.keys import generate_key, load_public_key, save_public_key
from privfl.privacy.ledger import CHARGE, Entry, FederationLedger, OwnerLedger, ReceiptRejected, verify
from privfl.privacy.ledger.anchor import AGGREGATED
from privfl.privacy.ledger.registry import CoordinatorRegistry
from privfl.privacy.policy import load_policy_file, write_policy_file
from privfl.protocol import TrainingPlan
from privfl.server.receipts import ReceiptCheck
from tests.owner_helpers import CONFIG, deployed_context, deployed_owner, message, request

pytestmark = pytest.mark.usefixtures("flower_task_identity", "fresh_owner_ledgers")

OWNER = "st-mary"
PLAN = TrainingPlan.from_config(CONFIG)


class Coordinator:
    """A coordinator as privfl's ServerApp keeps it: its key, its registry, one federation ledger per experiment."""

    def __init__(self, folder: Path, owner_public_key: Path) -> None:
        self.folder = folder
        self.key = generate_key()
        self.public = folder / "coordinator.pub"
        self.keys_dir = folder / "owner-keys"
        self.keys_dir.mkdir(parents=True)
        save_public_key(self.key, self.public)
        shutil.copy(owner_public_key, self.keys_dir / f"{OWNER}.pub")  # the owner registered its key
        self.registry_path = folder / "registry.db"

    def federation_path(self, experiment: str) -> Path:
        return self.folder / "runs" / experiment / "ledgers" / "federation.db"

    def round(self, policy: Path, experiment: str, server_round: int, *, anchor="registry", commit: bool = True):
        """Ask the owner for a round; verify, keep and anchor its receipt. ``anchor=None``: a hostile anchor 0."""
        with CoordinatorRegistry.open(self.registry_path, self.key) as registry, \
                FederationLedger.open(self.federation_path(experiment), self.key.public_key()) as federation:
            check = ReceiptCheck(federation, registry, self.keys_dir, PLAN, experiment_id=experiment,
                                 coordinator_key=self.key)
            head = registry.head(OWNER) if anchor == "registry" else anchor
            asked = request(CONFIG, server_round, experiment_id=experiment).for_owner(head)
            reply = run_train_round(message(asked), deployed_context({"policy": str(policy)}))
            if protocol.UNSIGNED_REFUSAL in reply[protocol.PRIVACY]:
                return reply, None
            accepted = check.accept(_as_reply(reply), server_round)
            if commit:
                check.commit(server_round, [(accepted, AGGREGATED)])
            return reply, accepted


def _as_reply(content: RecordDict) -> Message:
    asked = Message(content=RecordDict(), dst_node_id=3, message_type=MessageType.TRAIN)
    return Message(content=content, reply_to=asked)


def _entry(reply) -> Entry:
    return Entry.from_signed(reply[protocol.PRIVACY][protocol.SIGNED_ENTRY])


def _unsigned(reply) -> str:
    """The reason of an unsigned refusal; nothing was released."""
    assert protocol.ARRAYS not in reply and protocol.SIGNED_ENTRY not in reply[protocol.PRIVACY], reply
    return str(reply[protocol.PRIVACY][protocol.UNSIGNED_REFUSAL])


@pytest.fixture
def owner(tmp_path) -> Path:
    return deployed_owner(tmp_path / OWNER, OWNER, epsilon_budget=50.0)


@pytest.fixture
def coordinator_a(tmp_path, owner) -> Coordinator:
    return Coordinator(tmp_path / "coordinator-a", owner.parent / "signing.pub")


@pytest.fixture
def coordinator_b(tmp_path, owner) -> Coordinator:
    return Coordinator(tmp_path / "coordinator-b", owner.parent / "signing.pub")


# -- item 7: a missing or moved ledger is never a fresh budget --------------------------------------------------


@pytest.mark.parametrize("restarted", [True, False], ids=["restarted-node", "running-node"])
def test_a_deleted_ledger_is_refused_and_never_recreated(owner, coordinator_a, restarted):
    ledger = owner.parent / "ledger.db"
    assert _entry(coordinator_a.round(owner, "a-1", 1)[0]).kind == CHARGE
    if restarted:
        close_owner_ledgers()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{ledger}{suffix}").unlink(missing_ok=True)
    reason = _unsigned(coordinator_a.round(owner, "a-1", 2)[0])
    assert f"no ledger at {ledger}" in reason and "this node's record says its ledger held 1 entries" in reason
    assert not ledger.exists()  # no fresh ledger, so no fresh lifetime budget


def test_a_moved_ledger_path_is_refused_until_the_policy_names_the_real_ledger(owner, coordinator_a):
    assert _entry(coordinator_a.round(owner, "a-1", 1)[0]).sequence == 1
    close_owner_ledgers()
    policy = load_policy_file(owner)
    typo = owner.parent / "ledgers" / "ledger.db"  # a typo, or the folder was moved
    write_policy_file(policy.replace(ledger=str(typo)), owner)
    assert "no ledger at" in _unsigned(coordinator_a.round(owner, "a-1", 2)[0])
    assert not typo.exists() and not typo.parent.exists()
    typo.parent.mkdir()
    shutil.move(policy.ledger, typo)  # the administrator moves the real ledger where the policy points
    reply, accepted = coordinator_a.round(owner, "a-1", 2)
    assert _entry(reply).sequence == 2 and accepted is not None  # the same ledger goes on, budget and all


def test_an_anchor_0_from_a_hostile_coordinator_does_not_let_an_older_copy_train(owner, coordinator_a, tmp_path):
    ledger = owner.parent / "ledger.db"
    coordinator_a.round(owner, "a-1", 1)
    close_owner_ledgers()
    older = tmp_path / "older.db"
    shutil.copy(ledger, older)
    coordinator_a.round(owner, "a-1", 2)
    close_owner_ledgers()
    shutil.copy(older, ledger)  # an older copy restored: entry 2's charge is gone from it
    hostile = Coordinator(tmp_path / "hostile", owner.parent / "signing.pub")
    reason = _unsigned(hostile.round(owner, "h-1", 1, anchor=None)[0])  # anchor 0: "never saw this owner"
    assert "ends at entry 1, but this node last wrote entry 2" in reason
    with OwnerLedger.open_readonly(ledger) as held:
        assert len(held) == 1  # nothing was charged on the stale copy


def test_a_ledger_without_a_head_record_is_recorded_and_then_held_to_it(owner, coordinator_a):
    record = owner.parent / "signing.key.ledger-head"
    record.unlink()  # a ledger from before the record existed
    coordinator_a.round(owner, "a-1", 1)
    close_owner_ledgers()
    assert record.is_file()
    record.write_text(record.read_text().replace('"sequence": 1', '"sequence": 0'))  # an edited record
    assert "not signed by this owner's key" in _unsigned(coordinator_a.round(owner, "a-1", 2)[0])


def test_enrolment_creates_the_ledger_and_never_replaces_a_lost_one(tmp_path):
    from privfl.privacy.ledger import MissingLedger
    from tests.owner_helpers import simulated_world

    config, where = simulated_world(tmp_path)
    ledger = where.owner_dir("owner-1") / "ledger.db"
    assert ledger.is_file() and (where.owner_dir("owner-1") / "signing.key.ledger-head").is_file()
    ledger.unlink()
    with pytest.raises(MissingLedger, match="never replaced by a fresh one"):
        simulated_world(tmp_path)


def test_privfl_deploy_creates_the_institution_ledger(tmp_path):
    from privfl.deploy.create import create_institution

    create_institution(tmp_path / "st-mary", OWNER, superlink="127.0.0.1:9092")
    assert (tmp_path / "st-mary" / "ledger.db").is_file()
    assert (tmp_path / "st-mary" / "signing.key.ledger-head").is_file()
    with OwnerLedger.open_readonly(tmp_path / "st-mary" / "ledger.db") as ledger:
        assert ledger.owner_id == OWNER and len(ledger) == 0


# -- item 7: recovering a lost ledger from the coordinators' copies ----------------------------------------------


def _two_federations(owner, coordinator_a, coordinator_b) -> None:
    coordinator_a.round(owner, "a-1", 1)  # entry 1
    coordinator_a.round(owner, "a-1", 2)  # entry 2
    coordinator_b.round(owner, "b-1", 1)  # entry 3: another federation
    coordinator_a.round(owner, "a-2", 1)  # entry 4: A's anchor is entry 2; entry 3 reaches A as hashes
    close_owner_ledgers()


def _recover(tmp_path, out, *coordinators, copies=None, public_key=None) -> int:
    args = ["ledger", "recover", str(out), "--owner", OWNER,
            "--public-key", str(public_key or tmp_path / OWNER / "signing.pub")]
    for path in copies if copies is not None else [c.folder / "runs" for c in coordinators]:
        args += ["--from", str(path)]
    for coordinator in coordinators:
        args += ["--registry", str(coordinator.registry_path), "--coordinator-key", str(coordinator.public)]
    return privfl(args)


def test_recover_rebuilds_a_lost_ledger_from_every_federations_copies(owner, coordinator_a, coordinator_b,
                                                                       tmp_path, capsys):
    _two_federations(owner, coordinator_a, coordinator_b)
    ledger = owner.parent / "ledger.db"
    with OwnerLedger.open_readonly(ledger) as held:
        entries = [e.signed_bytes() for e in held.entries()]
    ledger.unlink()  # the disk died

    assert _recover(tmp_path, ledger, coordinator_a) != 0  # A alone holds only hashes of B's entry 3
    assert "entries 3 of st-mary are in none of these copies" in capsys.readouterr().err
    assert not ledger.exists()

    assert _recover(tmp_path, ledger, coordinator_a, coordinator_b) == 0
    assert "wrote" in capsys.readouterr().out
    with OwnerLedger.open_readonly(ledger) as rebuilt:
        assert [e.signed_bytes() for e in rebuilt.entries()] == entries  # byte for byte, nothing lost
    assert verify(ledger, load_public_key(tmp_path / OWNER / "signing.pub")).ok
    reply, accepted = coordinator_a.round(owner, "a-2", 2)  # the node's head record accepts it: training goes on
    assert _entry(reply).sequence == 5 and accepted is not None


def test_recover_refuses_what_does_not_verify_and_never_overwrites(owner, coordinator_a, coordinator_b, tmp_path,
                                                                   capsys):
    _two_federations(owner, coordinator_a, coordinator_b)
    ledger = owner.parent / "ledger.db"
    out = tmp_path / "rebuilt.db"
    # An older history: the copies of A's first experiment and B's, but A's registry anchored entry 4.
    older = [coordinator_a.federation_path("a-1"), coordinator_b.folder / "runs"]
    assert _recover(tmp_path, out, coordinator_a, coordinator_b, copies=older) != 0
    assert "entries 4 of st-mary are in none of these copies" in capsys.readouterr().err
    # Copies checked against someone else's key: refused.
    stranger = tmp_path / "stranger.pub"
    save_public_key(generate_key(), stranger)
    assert _recover(tmp_path, out, coordinator_a, coordinator_b, public_key=stranger) != 0
    assert "is not the owner's" in capsys.readouterr().err
    # A registry under another coordinator key: refused.
    coordinator_b.public, saved = coordinator_a.public, coordinator_b.public
    assert _recover(tmp_path, out, coordinator_a, coordinator_b) != 0
    assert "is not intact" in capsys.readouterr().err
    coordinator_b.public = saved
    assert not out.exists()
    before = ledger.read_bytes()
    assert _recover(tmp_path, ledger, coordinator_a, coordinator_b) != 0  # the ledger is still there
    assert "never overwrites" in capsys.readouterr().err and ledger.read_bytes() == before


def test_recover_has_help():
    with pytest.raises(SystemExit) as stopped:
        privfl(["ledger", "recover", "--help"])
    assert stopped.value.code == 0


# -- item 9: the bridge tells a coordinator only what concerns it -------------------------------------------------


def test_a_hostile_anchor_0_gets_other_federations_entries_only_as_hashes(owner, coordinator_a, tmp_path):
    coordinator_a.round(owner, "a-1", 1)
    coordinator_a.round(owner, "a-1", 2)
    hostile = Coordinator(tmp_path / "hostile", owner.parent / "signing.pub")
    reply, accepted = hostile.round(owner, "h-1", 1, anchor=None)
    receipt = reply[protocol.PRIVACY]
    full = [Entry.from_signed(b) for b in receipt.get(protocol.BRIDGE, [])]
    assert all(e.run_id == "h-1" for e in full), [e.run_id for e in full]  # nothing of A's experiment
    assert not any(b"a-1" in raw or CONFIG.purpose.encode() in raw for raw in receipt.get(protocol.BRIDGE, []))
    elided = receipt[protocol.BRIDGE_ELIDED]
    assert len(elided) == 2 and not any(b"a-1" in raw for raw in elided)
    assert accepted is not None and accepted.checked.entry.sequence == 3  # its chain check still links 1..3
    with FederationLedger.open_readonly(hostile.federation_path("h-1")) as kept:
        assert [e.run_id for e in kept.entries(OWNER)] == ["h-1"]


def test_a_second_federation_s_entries_never_land_in_the_first_one_s_ledgers(owner, coordinator_a, coordinator_b):
    _two_federations(owner, coordinator_a, coordinator_b)
    for experiment in ("a-1", "a-2"):
        with FederationLedger.open_readonly(coordinator_a.federation_path(experiment)) as kept:
            assert "b-1" not in {e.run_id for e in kept.entries(OWNER)}
    with CoordinatorRegistry.open_readonly(coordinator_a.registry_path) as registry:
        assert registry.head(OWNER)[0] == 4  # A anchored entry 4, linked through B's entry 3 by its hashes


def test_the_coordinator_still_rejects_a_bridge_whose_hashes_do_not_link(owner, coordinator_a, coordinator_b):
    coordinator_a.round(owner, "a-1", 1)
    coordinator_b.round(owner, "b-1", 1)  # entry 2: reaches A as hashes
    reply, _ = coordinator_a.round(owner, "a-1", 2, commit=False)
    receipt = reply[protocol.PRIVACY]
    (raw,) = receipt[protocol.BRIDGE_ELIDED]
    with CoordinatorRegistry.open_readonly(coordinator_a.registry_path) as registry:
        anchored = registry.head(OWNER)
    with FederationLedger.open(coordinator_a.federation_path("a-1")) as federation:
        signed = receipt[protocol.SIGNED_ENTRY]
        assert federation.check_received(signed, anchored=anchored, elided=[raw]).entry.sequence == 3
        forged_hash = raw[:40] + bytes(32)  # entry 2 claims another hash: entry 3 no longer links to it
        with pytest.raises(ReceiptRejected, match="not a chain at entry 3"):
            federation.check_received(signed, anchored=anchored, elided=[forged_hash])
        forged_link = raw[:8] + bytes(32) + raw[40:]  # entry 2 no longer continues A's anchored entry 1
        with pytest.raises(ReceiptRejected, match="do not continue the head"):
            federation.check_received(signed, anchored=anchored, elided=[forged_link])
        with pytest.raises(ReceiptRejected, match="is not a chain|do not continue"):
            federation.check_received(signed, anchored=anchored)  # the elided entry left out: a gap
