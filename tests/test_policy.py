"""An owner's policy: validated like an experiment config, read from the node only."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from privfl.privacy.policy import (
    OwnerPolicy, PolicyError, load_owner_policy, load_policy_file, write_policy_file,
)

BASE = {"owner-id": "st-mary", "epsilon-budget": 3.0, "delta": 1e-6, "data": "/d.csv", "ledger": "/l.db",
        "signing-key": "/k.key", "federation": "link.example.org:9092"}


def test_a_policy_file_names_relative_paths_from_its_own_folder(tmp_path):
    (tmp_path / "p.toml").write_text('owner-id = "st-mary"\nepsilon-budget = 3.0\ndelta = 1e-6\n'
                                     'data = "data/x.csv"\nledger = "ledger.db"\nsigning-key = "k.key"\n'
                                     'federation = "link.example.org:9092"\n'
                                     'allowed-purposes = ["sepsis model"]\n')
    policy = load_owner_policy({"policy": str(tmp_path / "p.toml")})
    assert policy.data == str(tmp_path / "data" / "x.csv") and policy.ledger == str(tmp_path / "ledger.db")
    assert policy.allowed_purposes == ("sepsis model",) and policy.dp_required  # DP required by default


def test_inline_node_config_takes_lists_as_comma_separated_strings():
    policy = load_owner_policy({**BASE, "allowed-purposes": "a, b", "privacy-units": "record,owner"})
    assert policy.allowed_purposes == ("a", "b") and policy.privacy_units == ("record", "owner")


@pytest.mark.parametrize("node_config, message", [
    ({**BASE, "epsilon-budget": None}, "no epsilon budget set"),
    ({k: v for k, v in BASE.items() if k != "epsilon-budget"}, "no epsilon budget set"),
    ({k: v for k, v in BASE.items() if k != "delta"}, "no delta set"),
    ({k: v for k, v in BASE.items() if k != "data"}, "no data set"),
    ({**BASE, "epsilon_budget": 3.0}, "unknown key 'epsilon_budget' (did you mean 'epsilon-budget'?)"),
    ({**BASE, "delta": 1.5}, "delta = 1.5: must be in (0, 1)"),
    ({**BASE, "privacy-units": "record,patient"}, "patient not among record, owner"),
    ({**BASE, "accountant": "gdp"}, "accountant = 'gdp': must be one of"),
    ({**BASE, "dp-required": "yes"}, "dp-required = 'yes' has type str; expected bool"),
    ({**BASE, "answer-evaluation": True}, "answer-evaluation = true needs evaluation-data"),
    ({**BASE, "owner-id": "../etc"}, "owner id '../etc' is not usable"),
    ({"policy": "/p.toml", "epsilon-budget": 3.0}, "not both"),
])
def test_an_invalid_policy_is_an_error_that_names_the_key(node_config, message):
    node_config = {k: v for k, v in node_config.items() if v is not None}
    with pytest.raises(PolicyError) as caught:
        load_owner_policy(node_config)
    assert message in str(caught.value)


def test_a_broken_policy_file_is_named(tmp_path):
    (tmp_path / "p.toml").write_text("epsilon-budget = = 3")
    with pytest.raises(PolicyError, match="not valid TOML"):
        load_policy_file(tmp_path / "p.toml")


@given(budget=st.floats(0.01, 100), delta=st.floats(1e-12, 0.1), purposes=st.lists(
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12).filter(
        lambda p: p.strip() and p != "*"), min_size=1, max_size=3), minimum=st.floats(0, 10), units=st.sampled_from([("record",), ("record", "owner")]))
def test_a_written_policy_reads_back_identical(tmp_path_factory, budget, delta, purposes, minimum, units):
    folder = tmp_path_factory.mktemp("p")
    policy = OwnerPolicy(owner_id="o-1", epsilon_budget=budget, delta=delta, allowed_purposes=tuple(purposes),
                         min_noise_multiplier=minimum, privacy_units=units, data=str(folder / "d.csv"),
                         ledger=str(folder / "l.db"), signing_key=str(folder / "k.key"))
    path = write_policy_file(policy, folder / "policy.toml", header="an owner's policy")
    assert load_policy_file(path) == policy
    assert path.stat().st_mode & 0o777 == 0o600
