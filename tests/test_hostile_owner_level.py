"""Owner-level rounds against a hostile coordinator (issue 19, items 2, 3, 4 and 8).

The coordinator is played in this process with full control of what it sends: crafted
RoundRequests and Messages go to privfl's own ClientApp round function, which keeps a
real ledger (SQLite, signed) for a deployed owner whose policy is its own.  Every attack
below was accepted by privfl before these fixes; each test says what it used to get.
"""

from __future__ import annotations

import ast
import math
import shutil
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest

from privfl.privacy.policy import load_policy_file
from flwr.app import ConfigRecord

from privfl import protocol
from privfl.client.owner_ledger import close_owner_ledgers
from privfl.client.round import run_train_round
from privfl.config import ExperimentConfig
from privfl.privacy.accountants import ACCOUNTANT_NAMES, get_accountant
from privfl.privacy.events import NonPrivateRelease, PoissonSubsampledGaussian
from privfl.privacy.keys import load_private_key, load_public_key
from privfl.privacy.ledger import CHARGE, REFUSAL, ChargeConflict, Entry, OwnerLedger, verify
from privfl.privacy.ledger.entry import decode_entry
from privfl.protocol import OwnerRound
from privfl.settings import SettingsError
from tests.owner_helpers import (
    CONFIG, ask_owner, both_units_owner, deployed_context, deployed_owner, message, owner_round_terms, request,
    signed_entry,
)

pytestmark = pytest.mark.usefixtures("flower_task_identity", "fresh_owner_ledgers")

ROOT = Path(__file__).resolve().parents[1]
EXP = "exp-1"


_terms, _owner, _entry = owner_round_terms, both_units_owner, signed_entry
_ask = partial(ask_owner, unit="owner")  # one request of the coordinator to st-mary's node


def _refused(reply, *words: str) -> Entry:
    entry = _entry(reply)
    assert entry.kind == REFUSAL and protocol.ARRAYS not in reply, entry  # signed, and nothing released
    for word in words:
        assert word in entry.refusal_reason, entry.refusal_reason
    return entry


def _ledger(policy_file: Path) -> OwnerLedger:
    return OwnerLedger.open_readonly(policy_file.parent / "ledger.db")


def _verified(policy_file: Path) -> bool:
    return verify(policy_file.parent / "ledger.db", load_public_key(policy_file.parent / "signing.pub")).ok


# --------------------------------------------------------------------------- item 2: the owner's policy


def test_an_owner_level_round_without_dp_sgd_is_refused_when_the_owner_requires_dp(tmp_path):
    """dp = false in an owner-level request used to be charged and then trained without DP-SGD, under
    dp-required = true: the coordinator, which adds the owner-level noise, saw the update un-noised."""
    policy = _owner(tmp_path)  # dp-required = true (the default)
    _refused(_ask(policy, stage=protocol.OWNER_CHARGE_STAGE, terms=_terms(), dp=False), "dp-required = true")
    with _ledger(policy) as ledger:
        assert ledger.events("owner") == []
    # Charged with DP-SGD announced, then asked to release without it: refused all the same.
    assert _entry(_ask(policy, 2, stage=protocol.OWNER_CHARGE_STAGE, terms=_terms())).kind == CHARGE
    _refused(_ask(policy, 2, terms=_terms(), dp=False), "dp-required = true", "owner-level")
    with _ledger(policy) as ledger:
        assert ledger.events("record") == []


def test_an_owner_level_round_with_dp_sgd_is_released_when_the_owner_requires_dp(tmp_path):
    """The other side of the rule: with DP-SGD the owner-level round goes ahead, charged at both units."""
    policy = _owner(tmp_path)
    assert _entry(_ask(policy, stage=protocol.OWNER_CHARGE_STAGE, terms=_terms())).kind == CHARGE
    reply = _ask(policy, terms=_terms())
    assert protocol.ARRAYS in reply and _entry(reply).privacy_unit == "record"
    with _ledger(policy) as ledger:
        assert len(ledger.events("owner")) == len(ledger.events("record")) == 1


@pytest.mark.parametrize("claimed, required", [(True, False), (True, True)])
def test_a_plain_message_that_claims_secure_aggregation_releases_nothing(tmp_path, claimed, required):
    """The round says secure = true but arrives as a plain train message: the update used to leave in the
    clear. The owner's own process now checks that it runs inside SecAgg+'s masked-vectors stage."""
    policy = _owner(tmp_path, dp_required=False, require_secure_aggregation=required)
    terms = _terms(secure=claimed)
    assert _entry(_ask(policy, stage=protocol.OWNER_CHARGE_STAGE, terms=terms, dp=False)).kind == CHARGE
    _refused(_ask(policy, terms=terms, dp=False), "plain train message", "in the clear")
    with _ledger(policy) as ledger:  # nothing was released, so no release was recorded either
        assert ledger.events("record") == []


def test_a_secure_claim_inside_the_content_cannot_stand_in_for_the_masking(tmp_path):
    """A forged privfl SecAgg+ record in a plain message changes nothing: the mark is process-local."""
    policy = _owner(tmp_path, dp_required=False, require_secure_aggregation=True)
    terms = _terms(secure=True)
    _ask(policy, stage=protocol.OWNER_CHARGE_STAGE, terms=terms, dp=False)
    req = replace(request(CONFIG, 1, privacy_unit="owner", dp=False), owner_round=terms)
    msg = message(req)
    msg.content["privfl-secagg"] = ConfigRecord({"has-update": True})  # protocol.SECAGG_RECORD, as sent
    _refused(run_train_round(msg, deployed_context({"policy": str(policy)})), "plain train message")


def test_an_owner_bounds_the_sampling_amplification_it_credits(tmp_path):
    """Poisson q = 0.001 made the charged event tiny, and nothing bounded it; by default (min-owner-sample-rate
    = 1) the owner credits no amplification it cannot check, and a policy may lower the bound."""
    strict = _owner(tmp_path)
    _refused(_ask(strict, stage=protocol.OWNER_CHARGE_STAGE, terms=_terms(sample_rate=0.001)),
             "min-owner-sample-rate")
    _refused(_ask(strict, 2, stage=protocol.OWNER_CHARGE_STAGE,
                  terms=_terms(sampling="fixed", sample_size=1, population=10_000)), "min-owner-sample-rate")
    with _ledger(strict) as ledger:
        assert ledger.events("owner") == []
    lenient = deployed_owner(tmp_path / "leeds", owner_id="leeds", privacy_units=("record", "owner"),
                             owner_epsilon_budget=50.0, min_owner_sample_rate=0.01)
    assert _entry(_ask(lenient, stage=protocol.OWNER_CHARGE_STAGE, terms=_terms(sample_rate=0.01))).kind == CHARGE


@pytest.mark.parametrize("terms, words", [
    (_terms(clipping_norm=math.nan), "owner-clipping-norm = nan"),  # refused by the request check, first
    (_terms(clipping_norm=math.inf), "owner-clipping-norm = inf"),
    (_terms(sampling="fixed", sample_size=5, population=0), "cannot be accounted"),
    (_terms(sampling="stratified"), "cannot be accounted"),
    (_terms(sample_rate=math.nan), "owner-sample-rate = nan"),
])
def test_owner_level_terms_that_cannot_be_run_get_a_signed_refusal(tmp_path, terms, words):
    """These used to raise inside the owner's round (no signed answer) or charge an invalid entry."""
    policy = _owner(tmp_path)
    _refused(_ask(policy, stage=protocol.OWNER_CHARGE_STAGE, terms=terms), words)


def test_policy_refuses_a_sampling_bound_outside_zero_one(tmp_path):
    with pytest.raises(SettingsError, match="min-owner-sample-rate"):
        _owner(tmp_path, min_owner_sample_rate=1.5)


# --------------------------------------------------------------------------- item 3: charge keys by unit


def test_an_experiment_id_that_could_collide_is_refused_by_the_owner_and_the_config(tmp_path):
    """A record-level round of experiment 'X/owner' used to be charged under the key of X's owner-level round."""
    policy = _owner(tmp_path)
    reply = _ask(policy, unit="record", experiment_id=f"{EXP}/owner")
    assert protocol.ARRAYS not in reply and "experiment id" in reply[protocol.PRIVACY][protocol.UNSIGNED_REFUSAL]
    with _ledger(policy) as ledger:
        assert len(ledger) == 0
    with pytest.raises(SettingsError, match="experiment-id"):
        ExperimentConfig(experiment_id="X/owner")
    with pytest.raises(SettingsError, match="experiment"):
        ExperimentConfig(experiment="a/b")


def test_a_record_level_charge_under_the_owner_key_is_never_taken_for_the_owner_level_charge(tmp_path):
    """A ledger that already holds a record-level charge keyed '<X>/owner' (written before ids were checked):
    the owner-level release of X used to find it and release with no DP-SGD and no owner-level charge."""
    policy = _owner(tmp_path, dp_required=False)
    key = OwnerRound.charge_key(EXP)
    with OwnerLedger.open(policy.parent / "ledger.db", "st-mary", load_private_key(policy.parent / "signing.key")) \
            as ledger:
        ledger.charge(key, 1, PoissonSubsampledGaussian(1.0, 0.1, 10), clipping_norm=1.0, delta=1e-5,
                      epsilon_budget=50.0, accountant="pld", privacy_unit="record",
                      federation=load_policy_file(policy).federation)
    close_owner_ledgers()
    _refused(_ask(policy, terms=_terms(), dp=False), "not charged for owner-level round 1")
    _refused(_ask(policy, stage=protocol.OWNER_CHARGE_STAGE, terms=_terms(), dp=False), "record level")
    with _ledger(policy) as ledger:
        assert ledger.events("owner") == [] and ledger.charge_for(key, 1, unit="owner") is None
        assert ledger.charge_for(key, 1, unit="record") is not None


def test_the_ledger_refuses_to_charge_one_key_at_two_units(tmp_path):
    policy = _owner(tmp_path)
    with OwnerLedger.open(policy.parent / "ledger.db", "st-mary", load_private_key(policy.parent / "signing.key")) \
            as ledger:
        event = PoissonSubsampledGaussian(1.0, 0.5, 1)
        terms = dict(clipping_norm=1.0, delta=1e-5, epsilon_budget=50.0, accountant="pld")
        ledger.charge("k", 1, event, privacy_unit="record", **terms)
        with pytest.raises(ChargeConflict, match="record level"):
            ledger.charge("k", 1, event, privacy_unit="owner", **terms)


# --------------------------------------------------------------------------- item 4: one charge, one release


def test_a_charged_owner_level_release_whose_saved_update_is_gone_is_not_released_again(tmp_path):
    """The saved update of a released owner-level round lost: asking again used to retrain and release a
    different update under the same charge. The release is now bound to its hash in the ledger."""
    policy = _owner(tmp_path, dp_required=False)
    _ask(policy, stage=protocol.OWNER_CHARGE_STAGE, terms=_terms(), dp=False)
    first = _ask(policy, terms=_terms(), dp=False)
    digest = protocol.update_digest(first[protocol.ARRAYS].to_torch_state_dict())
    again = _ask(policy, terms=_terms(), dp=False)  # a retry: the very same update
    assert protocol.update_digest(again[protocol.ARRAYS].to_torch_state_dict()) == digest
    shutil.rmtree(policy.parent / "ledger.db.releases")
    _refused(_ask(policy, terms=_terms(), dp=False), "already released", "no second one")
    with _ledger(policy) as ledger:
        bound = ledger.charge_for(EXP, 1, unit="record")
        assert bound.update_hash == digest and isinstance(bound.event, NonPrivateRelease)
        assert len(ledger.events("owner")) == 1 and len(ledger.events("record")) == 1
    assert _verified(policy)


# --------------------------------------------------------------------------- item 8: a release without DP


def test_a_release_without_dp_is_charged_before_it_leaves_and_makes_epsilon_infinite(tmp_path):
    """dp-required = false: a non-private release used to leave no ledger entry, and the owner's lifetime
    epsilon stayed finite."""
    policy = _owner(tmp_path, dp_required=False)
    reply = _ask(policy, unit="record", dp=False)
    receipt = reply[protocol.PRIVACY]
    assert receipt[protocol.NON_PRIVATE] is True and protocol.ARRAYS in reply
    entry = Entry.from_signed(receipt[protocol.SIGNED_ENTRY])
    assert entry.kind == CHARGE and isinstance(entry.event, NonPrivateRelease) and entry.privacy_unit == "record"
    assert entry.update_hash == protocol.update_digest(reply[protocol.ARRAYS].to_torch_state_dict())
    assert math.isinf(entry.cumulative_epsilon)
    with _ledger(policy) as ledger:
        assert [e.sequence for e in ledger.entries()] == [entry.sequence]
        assert math.isinf(ledger.spent_epsilon("pld")) and math.isinf(ledger.spent_epsilon("rdp"))
    assert _verified(policy)  # the stored infinity is what the verifier recomputes
    # From then on no DP release fits the budget: the owner's data has no finite guarantee left.
    _refused(_ask(policy, 2, unit="record"), "budget")


def test_the_owner_report_states_infinite_lifetime_epsilon_after_a_release_without_dp(tmp_path):
    from privfl.privacy.report.build import build_report
    from privfl.privacy.report.json_report import render_json

    policy = _owner(tmp_path, dp_required=False)
    _ask(policy, unit="record")  # one DP-SGD round: a finite epsilon
    with _ledger(policy) as ledger:
        finite = ledger.spent_epsilon("pld")
    assert math.isfinite(finite)
    _ask(policy, 2, unit="record", dp=False)
    close_owner_ledgers()
    report = build_report(policy.parent / "ledger.db", keys=policy.parent / "signing.pub")
    owner = report.owner("st-mary")
    assert report.intact, report.problems
    assert owner.epsilon_spent is not None and math.isinf(owner.epsilon_spent)
    assert "Infinity" in render_json(report) or "inf" in render_json(report).lower()


@pytest.mark.parametrize("accountant", ACCOUNTANT_NAMES)
def test_every_accountant_states_infinity_for_a_non_private_release(accountant):
    spent = [PoissonSubsampledGaussian(1.0, 0.1, 100)]
    acct = get_accountant(accountant)
    assert math.isfinite(acct.epsilon(spent, 1e-5))
    assert math.isinf(acct.epsilon([*spent, NonPrivateRelease()], 1e-5))
    composition = acct.composition()
    for event in (*spent, NonPrivateRelease(2)):
        composition.add(event)
    assert math.isinf(composition.epsilon(1e-5))


def test_a_non_private_release_is_its_own_mechanism_in_the_ledger_format():
    from privfl.privacy.ledger.entry import encode_entry

    raw = encode_entry(sequence=1, previous_hash=bytes(32), run_id="r", round=1, owner_id="o", kind=CHARGE,
                       event=NonPrivateRelease(3), clipping_norm=0.0, privacy_unit="record", delta=1e-5,
                       accountant="pld", cumulative_epsilon=math.inf, epsilon_budget=1.0, purpose="",
                       update_hash=b"", refusal_reason="")
    entry = decode_entry(raw)
    assert entry.event == NonPrivateRelease(3) and entry.mechanism == "non_private_release"
    assert math.isinf(entry.cumulative_epsilon)


# --------------------------------------------------------------------------- structure


def _imports(where: str) -> set[str]:
    names: set[str] = set()
    for path in [ROOT / where] if where.endswith(".py") else (ROOT / where).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
    return names


def test_client_and_server_do_not_import_each_others_rooms():
    """The owner-level mechanism is in privacy/, the SecAgg+ contract in privfl/protocol.py."""
    assert not {m for m in _imports("client") if m.startswith("privfl.server")}
    assert not {m for m in _imports("server") if m.startswith("privfl.client")}
    assert not {m for m in _imports("privfl/protocol.py") if m.startswith(("privfl.server", "privfl.client"))}


# --------------------------------------------------------------------------- the honest path, end to end


def test_a_securely_aggregated_owner_level_round_passes_the_owners_own_masking_check(tmp_path):
    """privfl's ServerApp and ClientApp in this process, SecAgg+ through Flower's own stages: every owner sees
    its release masked (its own check passes), is charged at the owner level and records its release without
    DP-SGD as a NonPrivateRelease, which the coordinator's audit then verifies (bridged in round 2)."""
    import json

    from bench.inprocess_grid import run_apps
    from privfl.client.app import app as client_app
    from privfl.privacy.audit import audit_run
    from privfl.server.app import app as server_app
    from privfl.server.run_dir import settle

    owners, rounds = 3, 2
    config = settle(ExperimentConfig(num_owners=owners, num_rounds=rounds, run_dir=str(tmp_path / "run"),
                                     federated_evaluation="off", dp=False, owner_dp=True, owner_sample_rate=1.0,
                                     secure_aggregation=True, owner_noise_multiplier=1.2, owner_clipping_norm=1.0,
                                     owner_epsilon_budget=50.0, batch_size=32))
    run_apps(server_app, client_app, owners, config.to_mapping())
    close_owner_ledgers()
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    trained = [r for r in history["rounds"] if r["round"]]
    assert all(r["owner_level"]["secure"] and r["owner_level"]["aggregated"] == owners for r in trained), trained
    with OwnerLedger.open_readonly(Path(config.federation_dir) / "owners" / "owner-1" / "ledger.db") as ledger:
        assert len(ledger.events("owner")) == rounds
        assert ledger.events("record") == [NonPrivateRelease()] * rounds
    assert audit_run(tmp_path / "run").ok
