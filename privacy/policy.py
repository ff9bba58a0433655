"""An owner's policy: the institution's own rules for its data, read and enforced at its node.

DESIGN principle 1: the data owner is the authority on its own privacy spend, and
nothing the coordinator sends can lower an owner's protection.  The run config is the
coordinator's; the policy is the owner's.  So every value that protects the owner's
data (budget, delta, the accountant that enforces it, whether DP is required, the
least noise, the largest per-round epsilon, the purposes and privacy units it
accepts, whether it answers evaluation requests, its device) comes from here, never
from the run config, and a request below it is refused with a signed refusal.

Where a deployed owner's policy comes from: its SuperNode's node config, either
``--node-config 'policy="/secure/privfl/policy.toml"'`` (a TOML file; relative paths in
it are relative to the file) or the same keys inline in the node config.  A policy is
validated like an experiment config: an unknown key is an error with a suggestion, a
wrong type or range names the key, and a missing budget or delta is an error too: a
deployed owner with no budget refuses every round, it never falls back to a default.

Simulated owners have no institution behind them: their policies are derived from the
experiment config by :func:`simulated_owner_policy`, the one place that does so.
"""

from __future__ import annotations

import dataclasses
import math
import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privfl import settings
from privfl.privacy.accountants import ACCOUNTANT_NAMES
from privfl.privacy.budget import PrivacyBudget
from privfl.privacy.files import replaceable_by_others
from privfl.privacy.keys import check_owner_id
from privfl.settings import SettingsError, each_one_of, non_negative, one_of, probability_delta, setting

if TYPE_CHECKING:
    from privfl.config import ExperimentConfig

POLICY_KEY = "policy"  # node-config key naming the policy file
RECORD, OWNER = "record", "owner"
PRIVACY_UNITS = (RECORD, OWNER)
DEVICES = ("auto", "cpu", "cuda")
PATH_KEYS = ("data", "evaluation_data", "ledger", "signing_key")
ANY_PURPOSE = "*"  # allowed-purposes = ["*"]: the owner allows any purpose, explicitly

# A simulated owner's data is the experimenter's own: it evaluates as often as the experiments ask.
SIMULATED_MAX_EVALUATIONS = 1_000_000

# File names inside a simulated (or `privfl deploy`-made) owner folder.
POLICY_FILE = "policy.toml"
LEDGER_FILE = "ledger.db"
SIGNING_KEY_FILE = "signing.key"


class PolicyError(SettingsError):
    """The owner's policy is missing, invalid, or incomplete; the owner refuses every round."""


def _owner_id(value: str) -> str | None:
    try:
        check_owner_id(value)
    except ValueError as err:
        return str(err)
    return None


def _purposes(values: tuple) -> str | None:
    """Any purpose only when the owner wrote '*': an empty list is a mistake, not a wildcard."""
    if not values or any(not v.strip() for v in values):
        return ("lists no purpose (or an empty one): name the purposes this data may be used for, e.g. "
                f'allowed-purposes = ["sepsis risk model"], or allow any purpose explicitly with ["{ANY_PURPOSE}"]')
    if ANY_PURPOSE in values and len(values) > 1:
        return f"'{ANY_PURPOSE}' (any purpose) cannot be combined with named purposes: keep one or the other"
    return None


def _positive_finite(value: float) -> str | None:
    return None if math.isfinite(value) and value > 0 else "must be finite and > 0"


def _rate_bound(value: float) -> str | None:
    return None if 0 <= value <= 1 else "must be in [0, 1]"


@dataclass(frozen=True)
class OwnerPolicy:
    """One institution's rules for its own data; field ``foo_bar`` is policy key ``foo-bar``."""

    owner_id: str = setting(None, "the institution's owner id (letters, digits, '.', '_', '-')", _owner_id,
                            kind=str, required="no owner-id set: add owner-id = \"<your institution>\"")
    epsilon_budget: float = setting(
        None, "lifetime epsilon budget of this data: every release of every run composes into it",
        _positive_finite, kind=float,
        required="no epsilon budget set: add epsilon-budget = <the lifetime epsilon you allow for this data> "
                 "to the owner policy; the owner refuses every round until it has one")
    delta: float = setting(
        None, "delta of the (epsilon, delta) guarantee; must be well below 1/n of the records", probability_delta,
        kind=float, required="no delta set: add delta = <well below 1/n of your records, e.g. 1e-6> to the owner "
                             "policy; the owner refuses every round until it has one")
    owner_epsilon_budget: float = setting(
        None, "lifetime epsilon budget for owner-level releases (privacy unit 'owner'); needed to accept them",
        _positive_finite, kind=float)
    accountant: str = setting("pld", "the accountant the budget is enforced with: pld (tightest) | rdp | prv",
                              one_of(ACCOUNTANT_NAMES))
    dp_required: bool = setting(True, "refuse any request to train without differential privacy")
    min_noise_multiplier: float = setting(
        0.0, "the least DP-SGD noise multiplier accepted (0: any > 0; the budget still applies)", non_negative)
    max_round_epsilon: float = setting(
        0.0, "the largest epsilon one round may cost on its own (0: no limit beyond the budget)", non_negative)
    allowed_purposes: tuple = setting(
        (ANY_PURPOSE,), "purposes this data may be processed for ('*' alone: any purpose; every entry records the "
        "purpose)", _purposes, kind=tuple)
    privacy_units: tuple = setting(
        (RECORD,), "privacy units accepted: record (DP-SGD protects one record) and/or owner (DP over whole "
        "contributions)", each_one_of(PRIVACY_UNITS), kind=tuple)
    allowed_models: tuple = setting(
        ("mlp", "cnn", "logreg"), "models the coordinator may ask this node to build and train: built-in names and "
        "'package.module:factory' paths installed here ('*': any); an import path runs code at this node",
        kind=tuple)
    require_secure_aggregation: bool = setting(
        False, "accept owner-level rounds only when updates are summed by secure aggregation (the coordinator "
        "never sees this owner's update in the clear)")
    min_owner_sample_rate: float = setting(
        1.0, "the least owner sampling rate (Poisson q, or m/N) whose amplification this owner credits in an "
        "owner-level round; the coordinator draws the sample and this owner cannot check it (1: credit none, "
        "0: believe any rate the coordinator states)", _rate_bound)
    federation: str = setting(
        "", "the federation this node serves (`privfl deploy` writes the SuperLink's HOST:PORT): every ledger entry "
        "records it and an experiment id at this owner belongs to the federation of its first entry, so a "
        "coordinator naming another federation's experiment gets nothing of it; give each federation's SuperNode "
        "its own policy file with its own federation (needed at a deployed node)", kind=str)
    answer_evaluation: bool = setting(
        False, "evaluate the global model on evaluation-data when the coordinator asks; the answers (loss, "
        "accuracy) are released WITHOUT differential privacy: no epsilon covers them, only max-evaluations "
        "bounds them")
    max_evaluations: int = setting(
        1, "the most distinct models this owner evaluates over its data's lifetime, all experiments together "
        "(counted at the node, next to the ledger; re-evaluating the same model is free): with a model of its "
        "choosing, each answer tells the coordinator about the evaluation data (e.g. its label shares)",
        non_negative)
    public_record_count: bool = setting(
        False, "the exact number of training and evaluation records may be sent to the coordinator (FedAvg "
        "weights updates by it); false: an update carries batches per epoch x batch size, which its DP event "
        "already discloses (sample rate 1/batches), and an evaluation answer carries 1")
    data: str = setting("", "the training data: a .csv, .parquet or .npz file (schema: docs/data.md)")
    evaluation_data: str = setting("", "held-out data (same schema) for evaluation requests")
    label_column: str = setting("label", "the label column of the data files")
    ledger: str = setting("", "the owner's privacy ledger (SQLite); it outlives runs")
    signing_key: str = setting("", "the owner's Ed25519 private key (PEM, mode 0600) that signs its ledger")
    key_passphrase_env: str = setting("", "name of the environment variable holding the key's passphrase")
    device: str = setting("auto", "training device: auto (cuda when available) | cpu | cuda", one_of(DEVICES))

    def __post_init__(self) -> None:
        settings.validate(self)

    @property
    def budget(self) -> PrivacyBudget:
        return PrivacyBudget(epsilon=self.epsilon_budget, delta=self.delta)

    def budget_of(self, unit: str) -> PrivacyBudget:
        """The lifetime budget of one privacy unit (record-level DP-SGD, or owner-level DP)."""
        if unit == OWNER:
            if self.owner_epsilon_budget is None:
                raise PolicyError(f"owner {self.owner_id}: no owner-level epsilon budget set (owner-epsilon-budget)")
            return PrivacyBudget(epsilon=self.owner_epsilon_budget, delta=self.delta)
        return self.budget

    def require_deployed(self) -> OwnerPolicy:
        """A deployed owner names its own files; a simulated one is given them."""
        for key in ("data", "ledger", "signing_key", "federation"):
            if not getattr(self, key):
                raise PolicyError(f"owner {self.owner_id}: no {settings.key_of(key)} set in the owner policy "
                                  f"(see `privfl deploy init` or docs/deployment.md)")
        if self.answer_evaluation and not self.evaluation_data:
            raise PolicyError(f"owner {self.owner_id}: answer-evaluation = true needs evaluation-data = \"PATH\"")
        return self

    def allows_purpose(self, purpose: str) -> bool:
        """The one home of the purpose rule: '*' allows any purpose, otherwise the purpose must be listed."""
        return self.allowed_purposes == (ANY_PURPOSE,) or purpose in self.allowed_purposes

    def passphrase(self) -> str | None:
        if not self.key_passphrase_env:
            return None
        value = os.environ.get(self.key_passphrase_env)
        if value is None:
            raise PolicyError(f"key-passphrase-env names {self.key_passphrase_env}, which is not set in the "
                              "SuperNode's environment")
        return value

    def to_mapping(self) -> dict[str, Any]:
        return settings.to_mapping(self)

    def replace(self, **changes: Any) -> OwnerPolicy:
        return dataclasses.replace(self, **changes)


def describe_policy_keys() -> list[tuple[str, Any, str]]:
    return settings.describe(OwnerPolicy)


def load_policy_file(path: str | Path) -> OwnerPolicy:
    """Read a policy TOML file; relative paths in it are relative to the file's folder."""
    path = Path(path)
    try:
        check_policy_file_mode(path)
        text = path.read_text(encoding="utf-8")
        cached = _PARSED.get((str(path.absolute()), text))
        if cached is not None:  # the same file with the same bytes: the same policy (the mode checked above)
            return cached
        data = tomllib.loads(text)
    except FileNotFoundError:
        raise PolicyError(f"owner policy file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise PolicyError(f"owner policy file {path} cannot be read: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise PolicyError(f"owner policy file {path}: not valid TOML: {err}") from None
    policy = _resolve_paths(settings.load_settings(OwnerPolicy, data, source=str(path), error=PolicyError), path.parent)
    if len(_PARSED) >= 4096:
        _PARSED.clear()
    _PARSED[(str(path.absolute()), text)] = policy
    return policy


# Policies parsed in this process, by file and exact text: a node reads its owner's policy for
# every message (an edit takes effect at once), and parsing and validating the TOML was about
# a third of a millisecond of each (docs/benchmarks.md, section 4); reading the bytes is not.
_PARSED: dict[tuple[str, str], OwnerPolicy] = {}


def check_policy_file_mode(path: Path) -> None:
    """Refuse a policy that another account could rewrite (group- or world-writable), as ssh refuses its config.

    Whoever can write the policy can raise the budget or drop DP; the error says the chmod to run.
    As ssh does, the file must also belong to this account or root (its owner can chmod it at will),
    and its folder (the link's target's) must not let others replace it: a 0600 policy in a folder
    anyone can write (without the sticky bit) is swapped for another file by a rename.
    """
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o022:
        raise PolicyError(f"owner policy file {path} is writable by others (mode {mode:04o}): whoever can write it "
                          f"decides this owner's protection; run  chmod go-w {path}")
    problem = replaceable_by_others(path)
    if problem:
        raise PolicyError(f"owner policy file: {problem}; whoever can replace it decides this owner's protection")


def load_owner_policy(node_config: Mapping[str, Any]) -> OwnerPolicy:
    """The deployed owner's policy from its node config (a ``policy`` file, or the keys inline)."""
    if POLICY_KEY in node_config:
        others = sorted(k for k in node_config if k != POLICY_KEY)
        if others:
            raise PolicyError(f"node config: set either policy = \"FILE\" or the policy keys inline, not both "
                              f"(also given: {', '.join(others)})")
        return load_policy_file(str(node_config[POLICY_KEY])).require_deployed()
    if not node_config:
        raise PolicyError("the SuperNode has no owner policy: start it with --node-config "
                          "'policy=\"/path/to/policy.toml\"' (see `privfl deploy init`)")
    policy = settings.load_settings(OwnerPolicy, node_config, source="node config", error=PolicyError)
    return _resolve_paths(policy, Path.cwd()).require_deployed()


def write_policy_file(policy: OwnerPolicy, path: str | Path, *, header: str = "") -> Path:
    """Write ``policy`` as TOML (mode 0600: it names the owner's key and files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {line}".rstrip() for line in header.splitlines()] if header else []
    lines += [f"{key} = {settings.toml_value(value)}" for key, value in policy.to_mapping().items()
              if value is not None]  # an unset optional key is left out (TOML has no null)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT: set it, or a 0666 one stays refused
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def _resolve_paths(policy: OwnerPolicy, base: Path) -> OwnerPolicy:
    changes = {key: str((base / value).resolve()) for key in PATH_KEYS
               if (value := getattr(policy, key)) and not Path(value).is_absolute()}
    return policy.replace(**changes) if changes else policy


def simulated_owner_policy(config: ExperimentConfig, owner_id: str, owner_dir: Path) -> OwnerPolicy:
    """The policy of a simulated owner, derived from the experiment config (the one place that does so).

    A simulated owner has no institution behind it, so the experimenter's config
    stands for the institution's decisions; its files live in ``owner_dir``.
    """
    return OwnerPolicy(
        owner_id=owner_id, epsilon_budget=config.epsilon_budget, delta=config.delta,
        accountant=config.accountant, dp_required=config.dp, allowed_purposes=(ANY_PURPOSE,),
        privacy_units=(RECORD, OWNER) if config.owner_dp else (RECORD,), allowed_models=("*",),
        owner_epsilon_budget=config.owner_epsilon_budget if config.owner_dp else None,
        min_owner_sample_rate=0.0,  # the experimenter draws the owners: its stated rate is the one used
        answer_evaluation=True, max_evaluations=SIMULATED_MAX_EVALUATIONS, ledger=str(owner_dir / LEDGER_FILE),
        signing_key=str(owner_dir / SIGNING_KEY_FILE), device=config.device,
    )
