"""The experiment configuration: one validated object, the single home of every setting.

Flower hands the ServerApp and every ClientApp a flat ``run_config`` mapping with
dashed keys (``noise-multiplier = 1.0``).  This module turns such a mapping, or a TOML
file of the same shape, into an :class:`ExperimentConfig` and refuses anything it
cannot vouch for: an unknown key (with a suggestion), a value of the wrong type, or a
value outside its range.  Every other module receives the validated object, so no
setting is parsed or defaulted twice.

The defaults below are the ``quickstart`` experiment.  ``pyproject.toml`` repeats
them under ``[tool.flwr.app.config]`` because Flower only accepts run-config keys
declared there; a test keeps the two identical.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from privfl.privacy.accountants import ACCOUNTANT_NAMES

DATASETS = ("digits", "heart-disease")
PARTITIONINGS = ("iid", "dirichlet", "natural")
GRAD_SAMPLE_MODES = ("hooks", "functorch", "ghost")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A configuration value is missing, unknown, mistyped or out of range."""


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _fraction(value: float) -> str | None:
    return None if 0 < value <= 1 else "must be in (0, 1]"


def _delta(value: float) -> str | None:
    # delta is the probability that the epsilon guarantee fails outright; at 1 or
    # above there is no guarantee, and it should sit well below 1/n of the records.
    return None if 0 < value < 1 else "must be in (0, 1), and should be well below 1/n"


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def _model_name(value: str) -> str | None:
    from privfl.models import MODEL_NAMES  # late import: models pulls in torch

    if value in MODEL_NAMES or ":" in value:
        return None
    return f"must be one of {', '.join(MODEL_NAMES)} or 'package.module:factory'"


def _setting(default: Any, help: str, check: Callable[[Any], str | None] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "check": check})


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one federated run needs; field ``foo_bar`` is run-config key ``foo-bar``."""

    experiment: str = _setting("quickstart", "name of the experiment; used in the run directory name")
    dataset: str = _setting("digits", "task data: digits | heart-disease", _one_of(DATASETS))
    model: str = _setting("logreg", "model: mlp | cnn | logreg, or 'package.module:factory'", _model_name)
    num_owners: int = _setting(10, "number of simulated owners (privfl simulate starts this many SuperNodes)", _positive)
    partitioning: str = _setting(
        "iid", "how data is split across owners: iid | dirichlet | natural", _one_of(PARTITIONINGS)
    )
    dirichlet_alpha: float = _setting(0.5, "label skew for dirichlet partitioning (smaller = more skewed)", _positive)
    seed: int = _setting(0, "seed for data split, partitioning and model initialisation", _non_negative)
    num_rounds: int = _setting(20, "federated rounds", _positive)
    fraction_train: float = _setting(1.0, "fraction of owners with budget left sampled per round", _fraction)
    local_epochs: int = _setting(1, "local epochs per round", _positive)
    batch_size: int = _setting(72, "expected local batch size (Poisson sampling under DP)", _positive)
    learning_rate: float = _setting(5.0, "local SGD learning rate", _positive)
    momentum: float = _setting(0.0, "local SGD momentum", _non_negative)
    dp: bool = _setting(True, "train with DP-SGD (Opacus) at every client")
    noise_multiplier: float = _setting(2.3, "DP-SGD noise std / clipping norm", _non_negative)
    max_grad_norm: float = _setting(1.0, "DP-SGD per-sample gradient clipping norm", _positive)
    delta: float = _setting(1e-5, "delta of each owner's (epsilon, delta) guarantee", _delta)
    epsilon_budget: float = _setting(8.0, "lifetime epsilon budget of each owner", _positive)
    accountant: str = _setting("rdp", "accountant that composes DP-SGD steps: rdp | prv", _one_of(ACCOUNTANT_NAMES))
    grad_sample_mode: str = _setting(
        "hooks", "Opacus per-sample gradient mode: hooks | functorch | ghost", _one_of(GRAD_SAMPLE_MODES)
    )
    device: str = _setting("auto", "training device: auto (cuda when available) | cpu | cuda", _one_of(DEVICES))
    purpose: str = _setting(
        "privfl simulation", "why the owners' data is processed; recorded in every ledger entry"
    )
    run_dir: str = _setting("", "run directory; empty means ./runs/<experiment>-<timestamp>")
    owner_keys_dir: str = _setting(
        "", "folder of the owners' registered public keys (<owner>.pub); empty means <run-dir>/keys"
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            check = f.metadata.get("check")
            message = check(getattr(self, f.name)) if check else None
            if message:
                raise ConfigError(f"{key_of(f.name)} = {getattr(self, f.name)!r}: {message}")
        if self.dp and self.noise_multiplier == 0:
            raise ConfigError("noise-multiplier = 0 with dp = true gives no privacy guarantee; set it > 0")
        if self.partitioning == "natural" and self.dataset != "heart-disease":
            raise ConfigError(
                "partitioning = 'natural' needs a dataset with a natural split "
                "(heart-disease: one owner per hospital); use iid or dirichlet for digits"
            )

    # ---- conversions -------------------------------------------------------------

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], *, source: str = "config") -> ExperimentConfig:
        """Build from dashed keys; keys not given take their defaults."""
        known = {key_of(f.name): f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in mapping.items():
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
                raise ConfigError(
                    f"{source}: unknown key '{key}'{suggestion}; known keys: {', '.join(known)}"
                )
            f = known[key]
            values[f.name] = _coerce(key, raw, type(f.default), source)
        try:
            return cls(**values)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None

    @classmethod
    def from_toml(cls, path: Path, overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML: {err}") from None
        source = f"{path} with overrides {dict(overrides)}" if overrides else str(path)
        return cls.from_mapping({**data, **(overrides or {})}, source=source)

    def to_mapping(self) -> dict[str, Any]:
        """Dashed keys, ready for Flower's run config or a TOML file."""
        return {key_of(f.name): getattr(self, f.name) for f in fields(self)}

    def replace(self, **changes: Any) -> ExperimentConfig:
        return dataclasses.replace(self, **changes)


def key_of(field_name: str) -> str:
    return field_name.replace("_", "-")


def describe_keys() -> list[tuple[str, Any, str]]:
    """(key, default, help) for every setting, for ``--help`` and docs."""
    return [(key_of(f.name), f.default, f.metadata["help"]) for f in fields(ExperimentConfig)]


def _coerce(key: str, raw: Any, expected: type, source: str) -> Any:
    """Accept a value only when it means what the setting expects (no silent casts)."""
    if expected is bool:
        if isinstance(raw, bool):
            return raw
    elif expected is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
    elif expected is float:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool) and math.isfinite(raw):
            return float(raw)
    elif expected is str:
        if isinstance(raw, str):
            return raw
    raise ConfigError(
        f"{source}: {key} = {raw!r} has type {type(raw).__name__}; expected {expected.__name__}"
    )


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
