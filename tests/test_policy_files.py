"""The owner's policy and keys as files: who may read or write them, what 'any purpose' means, hostile strings.

- a policy file that another account can write is refused (the owner's protection would be
  whoever-can-write-it's to decide), and so is a private key that others can read, as ssh
  refuses them; the error says the chmod to run;
- 'any purpose' is written ``allowed-purposes = ["*"]``: an empty list (or ``""``) is a
  policy error, not a wildcard;
- ``privfl deploy init`` writes policy and experiment files that parse back to exactly what
  was given, whatever the purpose holds (quotes, backslashes, newlines, control characters,
  emoji), and an owner id with a trailing newline is refused.
"""

from __future__ import annotations

import os
import stat
import tomllib

import pytest

from privfl import settings
from privfl.deploy.create import CoordinatorOptions, PolicyDefaults, init_deployment
from privfl.deploy.credentials import app_signing_key_pair, load_app_signing_key
from privfl.privacy.keys import KeyFileError, check_owner_id, generate_key, load_private_key, save_private_key
from privfl.privacy.policy import OwnerPolicy, PolicyError, load_owner_policy, load_policy_file, write_policy_file

BASE = {"owner-id": "st-mary", "epsilon-budget": 4.0, "delta": 1e-6, "data": "train.npz", "ledger": "l.db",
        "signing-key": "signing.key", "federation": "link.example.org:9092"}


def _policy_file(tmp_path, text: str, mode: int = 0o600):
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)
    return path


def _base_toml(**extra) -> str:
    return settings.toml_dumps({**BASE, **extra})


# -- permissions -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666, 0o660])
def test_a_policy_that_others_can_write_is_refused_with_the_chmod_to_run(tmp_path, mode):
    path = _policy_file(tmp_path, _base_toml(), mode)
    with pytest.raises(PolicyError, match=r"writable by others.*chmod go-w") as err:
        load_policy_file(path)
    assert str(path) in str(err.value) and f"{mode:04o}" in str(err.value)
    with pytest.raises(PolicyError, match="writable by others"):  # the SuperNode's way in, too
        load_owner_policy({"policy": str(path)})


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o400])
def test_a_policy_only_its_owner_can_write_is_read(tmp_path, mode):
    assert load_policy_file(_policy_file(tmp_path, _base_toml(), mode)).owner_id == "st-mary"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_a_private_key_others_can_read_is_refused_as_ssh_does(tmp_path, mode):
    path = save_private_key(generate_key(), tmp_path / "signing.key")
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match=r"accessible by others.*chmod 600"):
        load_private_key(path)
    os.chmod(path, 0o600)
    load_private_key(path)


def test_an_app_signing_key_others_can_read_is_refused(tmp_path):
    app_signing_key_pair(tmp_path / "app.key", tmp_path / "app.pub", "test")
    load_app_signing_key(tmp_path / "app.key")
    os.chmod(tmp_path / "app.key", 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_app_signing_key(tmp_path / "app.key")


def test_writing_a_policy_over_a_file_others_could_write_makes_it_0600(tmp_path):
    path = _policy_file(tmp_path, "# an old file\n", 0o666)
    os.chmod(path, 0o666)  # whatever the umask
    write_policy_file(OwnerPolicy(**{k.replace("-", "_"): v for k, v in BASE.items()}), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_policy_file(path).owner_id == "st-mary"


def test_deploy_init_writes_secrets_that_the_checks_accept(tmp_path):
    """What privfl writes itself passes its own checks: keys 0600, policies not writable by others."""
    init_deployment(tmp_path / "d", ["st-mary"], options=CoordinatorOptions(signed_apps=False))
    owner = tmp_path / "d" / "institutions" / "st-mary"
    for secret in (owner / "signing.key", owner / "supernode-auth.key", tmp_path / "d" / "coordinator" /
                   "coordinator.key"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    assert stat.S_IMODE((owner / "policy.toml").stat().st_mode) & 0o077 == 0
    policy = load_policy_file(owner / "policy.toml")
    load_private_key(policy.signing_key)


# -- purposes ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ['""', "[]", '[""]', '["  "]', '" , "'])
def test_an_empty_purpose_list_is_a_policy_error_not_any_purpose(tmp_path, value):
    path = _policy_file(tmp_path, _base_toml() + f"allowed-purposes = {value}\n")
    with pytest.raises(PolicyError, match=r"allowed-purposes.*no purpose.*\[\"\*\"\]"):
        load_policy_file(path)


def test_any_purpose_is_written_as_a_star_and_only_alone(tmp_path):
    anything = load_policy_file(_policy_file(tmp_path, _base_toml() + 'allowed-purposes = ["*"]\n'))
    assert anything.allows_purpose("whatever the coordinator says")
    named = anything.replace(allowed_purposes=("sepsis model",))
    assert named.allows_purpose("sepsis model") and not named.allows_purpose("marketing")
    assert not named.allows_purpose("*")  # a coordinator asking for purpose '*' gets no wildcard
    with pytest.raises(Exception, match="cannot be combined"):
        OwnerPolicy(**{k.replace("-", "_"): v for k, v in BASE.items()}, allowed_purposes=("*", "marketing"))


# -- hostile strings ---------------------------------------------------------------------

HOSTILE = ['sepsis "risk" model', "back\\slash \\n not a newline", "two\nlines", "tab\tand\rcarriage",
           "emoji 🩺🧬 and é ß 漢字", "nul\x00 and del\x7f", "line separator \u2028 here", '"""', "'''", "#",
           "\\u0041", "]\n[table]\nx = 1"]


@pytest.mark.parametrize("text", HOSTILE)
def test_toml_strings_read_back_exactly(text):
    mapping = {"purpose": text, "allowed-purposes": [text, "other"]}
    assert tomllib.loads(settings.toml_dumps(mapping)) == mapping


def test_a_lone_surrogate_is_refused_not_written_as_broken_toml():
    with pytest.raises(settings.SettingsError, match="not valid Unicode"):
        settings.toml_value("bytes \udcff that were not UTF-8")


@pytest.mark.parametrize("purpose", HOSTILE)
def test_deploy_init_writes_policy_and_experiment_files_that_parse(tmp_path, purpose):
    init_deployment(tmp_path / "d", ["st-mary", "st-john"],
                    options=CoordinatorOptions(signed_apps=False, purpose=purpose))
    for owner in ("st-mary", "st-john"):
        policy = load_policy_file(tmp_path / "d" / "institutions" / owner / "policy.toml")
        assert policy.allowed_purposes == (purpose,) and policy.allows_purpose(purpose)
    experiment = tomllib.loads((tmp_path / "d" / "coordinator" / "experiment.toml").read_text(encoding="utf-8"))
    assert experiment["purpose"] == purpose
    tomllib.loads((tmp_path / "d" / "coordinator" / "flwr-home" / "config.toml").read_text(encoding="utf-8"))


def test_write_policy_file_round_trips_hostile_purposes(tmp_path):
    policy = OwnerPolicy(**{k.replace("-", "_"): v for k, v in BASE.items()}, allowed_purposes=tuple(HOSTILE))
    path = write_policy_file(policy, tmp_path / "p" / "policy.toml", header="a header\nwith two lines")
    assert load_policy_file(path).allowed_purposes == tuple(HOSTILE)


# -- owner ids ---------------------------------------------------------------------------


@pytest.mark.parametrize("owner", ["st-mary\n", "st-mary\r\n", "\nst-mary", "st mary", "", "st-mary\x00"])
def test_an_owner_id_with_a_trailing_newline_or_other_junk_is_refused(owner):
    with pytest.raises(ValueError, match="not usable"):
        check_owner_id(owner)
    with pytest.raises(PolicyError):
        load_owner_policy({**BASE, "owner-id": owner})


def test_policy_defaults_still_write_the_purpose_given(tmp_path):
    init_deployment(tmp_path / "d", ["st-mary"], options=CoordinatorOptions(signed_apps=False),
                    policy=PolicyDefaults(purpose="🩺 study"))
    assert load_policy_file(tmp_path / "d" / "institutions" / "st-mary" / "policy.toml").allowed_purposes == \
        ("🩺 study",)
