"""The experiment configuration: one validated object, the single home of every run setting.

Flower hands the ServerApp and every ClientApp a flat ``run_config`` mapping with
dashed keys (``noise-multiplier = 1.0``).  This module turns such a mapping, or a TOML
file of the same shape, into an :class:`ExperimentConfig` and refuses anything it
cannot vouch for (:mod:`privfl.settings`).  Every other module receives the validated
object, so no setting is parsed or defaulted twice.

What the configuration is *not*: an owner's policy.  In a deployment the run config is
written by the coordinator, so a deployed owner takes nothing that protects its data
from it (budget, delta, accountant, DP required, least noise, purposes, device: see
:mod:`privfl.privacy.policy`).  Simulated owners have no institution behind them; their
policies are derived from this config in one place,
:func:`privfl.privacy.policy.simulated_owner_policy`.

The defaults below are the ``quickstart`` experiment.  The Flower app that ``flwr run``
ships declares the same keys; it is generated from this class
(:mod:`privfl.app_bundle`), so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privfl import settings
from privfl.privacy.accountants import ACCOUNTANT_NAMES
from privfl.privacy.events import LEAST_NOISE, below_least_noise
from privfl.settings import SettingsError, fraction, non_negative, one_of, positive, probability_delta, setting

BUNDLED_DATASETS = ("digits", "heart-disease")
DATASETS = (*BUNDLED_DATASETS, "folder", "none")
PARTITIONINGS = ("auto", "iid", "dirichlet", "natural")
GRAD_SAMPLE_MODES = ("auto", "hooks", "functorch", "ghost")
DEVICES = ("auto", "cpu", "cuda")
FEDERATED_EVALUATION = ("last", "every", "off")


class ConfigError(SettingsError):
    """A configuration value is missing, unknown, mistyped or out of range."""


def _momentum(value: float) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1) (momentum 1 or more never settles)"


def _model_name(value: str) -> str | None:
    from privfl.models import MODEL_NAMES  # late import: models pulls in torch

    if value in MODEL_NAMES or ":" in value:
        return None
    return f"must be one of {', '.join(MODEL_NAMES)} or 'package.module:factory'"


def _experiment_id(value: str) -> str | None:
    """An experiment id keys every owner's charges (empty: one is made from the experiment's name)."""
    from privfl.protocol import experiment_id_problem

    return experiment_id_problem(value) if value else None


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one federated run needs; field ``foo_bar`` is run-config key ``foo-bar``."""

    experiment: str = setting("quickstart", "name of the experiment; used in the run directory name and in the "
                              "experiment id (letters, digits, '.', '_', '-')", _experiment_id)
    experiment_id: str = setting(
        "", "privfl's id of this experiment: owners key their charges by it and a resumed experiment keeps it "
        "(empty: <experiment>-<UTC time>-<random>)", _experiment_id)
    dataset: str = setting(
        "digits", "task data: digits | heart-disease (bundled) | folder (data-dir) | none (the owners bring "
        "their data; set num-features and num-classes)", one_of(DATASETS))
    data_dir: str = setting("", "dataset = folder: one file per owner <owner>.csv|.parquet|.npz, optional test.*")
    label_column: str = setting("label", "dataset = folder: the label column of every file")
    num_features: int = setting(0, "model inputs (0: from the data set; required when dataset = none)", non_negative)
    num_classes: int = setting(0, "classes (0: from the data set; required when dataset = none)", non_negative)
    model: str = setting("logreg", "model: mlp | cnn | logreg, or 'package.module:factory'", _model_name)
    num_owners: int = setting(
        0, "simulated owners (0: one per natural owner of the data, e.g. one per file of a folder; 10 for "
        "data sets without natural owners)", non_negative)
    partitioning: str = setting(
        "auto", "how simulated owners split the data: iid | dirichlet | natural | auto (natural where the data "
        "has owners, else iid)", one_of(PARTITIONINGS))
    dirichlet_alpha: float = setting(0.5, "label skew for dirichlet partitioning (smaller = more skewed)", positive)
    seed: int = setting(0, "seed for data split, partitioning and model initialisation", non_negative)
    num_rounds: int = setting(20, "federated rounds", positive)
    fraction_train: float = setting(1.0, "fraction of owners with budget left sampled per round", fraction)
    min_owners: int = setting(2, "owners that must be connected before round 1 (deployment)", positive)
    round_timeout: float = setting(600.0, "seconds the server waits for the owners' replies in a round", positive)
    local_epochs: int = setting(1, "local epochs per round", positive)
    batch_size: int = setting(72, "expected local batch size (Poisson sampling under DP)", positive)
    learning_rate: float = setting(5.0, "local SGD learning rate", positive)
    momentum: float = setting(0.0, "local SGD momentum", _momentum)
    dp: bool = setting(True, "ask the owners for DP-SGD (Opacus); an owner whose policy requires DP refuses "
                             "non-private requests")
    noise_multiplier: float = setting(2.3, "DP-SGD noise std / clipping norm (ignored with target-epsilon)",
                                      non_negative)
    target_epsilon: float = setting(
        0.0, "> 0: each owner plans its own noise so this experiment costs it this epsilon over num-rounds rounds "
        "(or what its remaining budget allows, if less); 0: every owner uses noise-multiplier", non_negative)
    max_grad_norm: float = setting(1.0, "DP-SGD per-sample gradient clipping norm", positive)
    grad_sample_mode: str = setting(
        "auto", "per-sample gradient mode: auto (a model made only of linear layers: privfl's per-layer DP-SGD, "
        "the same sampling, clipping and noise as Opacus in one pass per batch; Opacus hooks otherwise: the faster "
        "one as measured, docs/benchmarks.md) | hooks | functorch | ghost", one_of(GRAD_SAMPLE_MODES))
    # -- owner-level DP (DP-FedAvg at the coordinator; the privacy unit is the owner) -----------------
    owner_dp: bool = setting(
        False, "owner-level DP: sample owners, clip each owner's update, add Gaussian noise to their sum; every "
        "owner that could be drawn is charged each round (with dp = true as well: both units, each accounted)")
    owner_sampling: str = setting("poisson", "how owners are drawn each round: poisson (each with owner-sample-rate) "
                                  "| fixed (owners-per-round of them)", one_of(("poisson", "fixed")))
    owner_sample_rate: float = setting(0.1, "owner-sampling = poisson: each owner's chance to be drawn", fraction)
    owners_per_round: int = setting(0, "owner-sampling = fixed: owners drawn per round (without replacement)",
                                    non_negative)
    owner_noise_multiplier: float = setting(1.0, "owner-level noise std / clipping norm (the accounted one)",
                                            positive)
    owner_clipping_norm: float = setting(1.0, "L2 clip of each owner's update (initial value when adaptive)",
                                         positive)
    adaptive_clipping: bool = setting(False, "move the clip towards target-quantile of the update norms (Andrew "
                                      "et al. 2021); its noisy count is folded into the accounted noise")
    target_quantile: float = setting(0.5, "adaptive clipping: the update-norm quantile the clip tracks", fraction)
    clip_learning_rate: float = setting(0.2, "adaptive clipping: geometric step of the clip", positive)
    clipped_count_stddev: float = setting(
        0.0, "adaptive clipping: noise on the count of unclipped updates (0: expected cohort / 20)", non_negative)
    secure_aggregation: bool = setting(
        False, "owner-level rounds: sum the clipped updates with SecAgg+ (Flower's), so the coordinator never sees "
        "one in the clear; owners clip their own updates")
    secagg_shares: int = setting(0, "SecAgg+: shares of each owner's key (0: the cohort size)", non_negative)
    secagg_threshold: int = setting(0, "SecAgg+: shares needed to reconstruct a dropped owner's key (0: just over "
                                    "half of the shares)", non_negative)
    owner_epsilon_budget: float = setting(10.0, "simulated owners: lifetime owner-level epsilon budget", positive)
    purpose: str = setting(
        "privfl simulation", "why the owners' data is processed; an owner refuses a purpose its policy does not "
        "allow; recorded in every ledger entry")
    federated_evaluation: str = setting(
        "last", "evaluate the global model at the owners (on their own data): last round | every round | off",
        one_of(FEDERATED_EVALUATION))
    resume: bool = setting(
        False, "continue the experiment in run-dir from its last checkpoint, in a new Flower run, under its "
        "experiment id (its other settings must stay as they were; num-rounds may grow)")
    initial_model: str = setting("", "start from these weights (a model.pt or checkpoints/model.pt of another run)")
    deployment: bool = setting(
        False, "the owners are real institutions (their own policies, data and ledgers); false: privfl enrols "
        "simulated owners in the federation folder")
    # -- the simulated owners' policies (a deployed owner's come from its node) --------
    epsilon_budget: float = setting(8.0, "simulated owners: lifetime epsilon budget of each owner", positive)
    delta: float = setting(1e-5, "simulated owners: delta of each owner's (epsilon, delta) guarantee",
                           probability_delta)
    accountant: str = setting("pld", "simulated owners: accountant that plans and enforces their budgets: "
                              "pld (tightest) | rdp | prv",
                              one_of(ACCOUNTANT_NAMES))
    device: str = setting("auto", "simulated owners and the server: auto (cuda when available) | cpu | cuda",
                          one_of(DEVICES))
    # -- where things live ------------------------------------------------------------
    run_dir: str = setting("", "run directory; empty means ./runs/<experiment>-<timestamp>")
    federation_dir: str = setting(
        "", "simulation: what outlives a run, owners/<owner>/ (policy, ledger, signing key) and coordinator/; "
        "reuse it to compose the owners' lifetime spend (empty: a fresh <run-dir>.federation)")
    coordinator_dir: str = setting(
        "", "the coordinator's folder: its signing key, the owners' registered public keys (owner-keys/) and "
        "the registry of each owner's last accepted ledger head (empty: <federation-dir>/coordinator)")
    coordinator_key_passphrase_env: str = setting(
        "", "name of the environment variable holding the passphrase of the coordinator's signing key")

    def __post_init__(self) -> None:
        settings.validate(self)
        if self.dp and self.noise_multiplier == 0 and not self.target_epsilon:
            raise ConfigError("noise-multiplier = 0 with dp = true gives no privacy guarantee; set it > 0")
        for key, on, noise in (("noise-multiplier", self.dp and not self.target_epsilon, self.noise_multiplier),
                               ("owner-noise-multiplier", self.owner_dp, self.owner_noise_multiplier)):
            if on and below_least_noise(noise):
                raise ConfigError(f"{key} = {noise:g} is below {LEAST_NOISE:g}, the least noise any owner accepts "
                                  "(every owner would refuse every round); raise it")
        if self.partitioning == "natural" and self.dataset not in ("heart-disease", "folder"):
            raise ConfigError(
                "partitioning = 'natural' needs a dataset with a natural split "
                "(heart-disease: one owner per hospital; folder: one owner per file); use iid or dirichlet for digits"
            )
        if self.dataset == "folder":
            if not self.data_dir:
                raise ConfigError("dataset = 'folder' needs data-dir = \"PATH\": a folder of <owner>.csv|.parquet|"
                                  ".npz files (see docs/data.md)")
            if self.partitioning not in ("auto", "natural"):
                raise ConfigError("dataset = 'folder' has one owner per file: set partitioning = 'natural' (or auto)")
        if self.dataset == "none" and not (self.num_features and self.num_classes):
            raise ConfigError("dataset = 'none' (the owners bring their data): set num-features and num-classes, "
                              "the model's inputs and classes")
        if self.owner_dp and self.owner_sampling == "fixed" and self.owners_per_round < 1:
            raise ConfigError("owner-sampling = 'fixed' needs owners-per-round >= 1")
        if self.owner_dp and self.target_quantile >= 1:
            raise ConfigError("target-quantile must be in (0, 1)")
        if self.secure_aggregation and not self.owner_dp:
            raise ConfigError("secure-aggregation sums owner-level updates: set owner-dp = true")
        if self.dataset == "digits" and self.scheme == "natural":
            raise ConfigError("digits has no natural owners")

    # ---- derived ---------------------------------------------------------------------

    @property
    def scheme(self) -> str:
        """The partitioning actually used ('auto' resolved)."""
        if self.partitioning != "auto":
            return self.partitioning
        return "natural" if self.dataset in ("heart-disease", "folder") else "iid"

    # ---- conversions -----------------------------------------------------------------

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], *, source: str = "config") -> ExperimentConfig:
        """Build from dashed keys; keys not given take their defaults."""
        return settings.load_settings(cls, mapping, source=source, error=ConfigError)

    @classmethod
    def from_toml(cls, path: Path, overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML: {err}") from None
        source = f"{path} with overrides {dict(overrides)}" if overrides else str(path)
        merged = {**data, **(overrides or {})}
        written = data.get("data-dir")
        if isinstance(written, str) and written and merged.get("data-dir") == written \
                and not Path(written).is_absolute():
            merged["data-dir"] = str((path.parent / written).resolve())  # relative to the config file
        return cls.from_mapping(merged, source=source)

    def to_mapping(self) -> dict[str, Any]:
        """Dashed keys, ready for Flower's run config or a TOML file."""
        return settings.to_mapping(self)

    def replace(self, **changes: Any) -> ExperimentConfig:
        return dataclasses.replace(self, **changes)


key_of = settings.key_of


def describe_keys() -> list[tuple[str, Any, str]]:
    """(key, default, help) for every setting, for ``--help`` and docs."""
    return settings.describe(ExperimentConfig)


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` from the command line, reading the value as TOML (1e-5, true, "x")."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, value = key.strip(), value.strip()
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value  # a bare word such as `dataset=digits` is a string
    return key, parsed
