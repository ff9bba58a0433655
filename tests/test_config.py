"""The experiment config: one validated object; bad input is refused with a clear message."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from privfl.cli.simulate import load_config, named_configs
from privfl.config import ConfigError, ExperimentConfig, parse_override

ROOT = Path(__file__).resolve().parent.parent


def test_the_flower_app_declares_exactly_the_config_keys_and_ships_no_code(tmp_path):
    from privfl.app_bundle import CLIENT_APP, SERVER_APP, export_app

    app = tomllib.loads((export_app(tmp_path / "app") / "pyproject.toml").read_text())
    assert app["tool"]["flwr"]["app"]["config"] == ExperimentConfig().to_mapping()
    assert app["tool"]["flwr"]["app"]["components"] == {"serverapp": SERVER_APP, "clientapp": CLIENT_APP}
    assert [p.name for p in (tmp_path / "app").iterdir()] == ["pyproject.toml"]  # the nodes run their own privfl


def test_the_flower_app_bundle_built_by_flower_holds_only_its_pyproject(tmp_path):
    """`flwr build` (what `flwr run` ships) packs no bench/, docs/, tests/, runs/ nor any code."""
    import subprocess
    import sys
    import zipfile

    from privfl.app_bundle import export_app

    app = export_app(tmp_path / "app")
    flwr = Path(sys.executable).parent / "flwr"
    done = subprocess.run([str(flwr), "build", "--app", str(app)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    (fab,) = tmp_path.glob("*.fab")
    assert sorted(zipfile.ZipFile(fab).namelist()) == [".info/CONTENT", "pyproject.toml"]


@pytest.mark.parametrize("name", ["quickstart", "quickstart-nonprivate", "heart-disease", "digits-dirichlet"])
def test_named_experiments_load(name):
    assert name in named_configs()
    config = load_config(name, [])
    assert config.experiment == name


def test_quickstart_is_private_with_a_small_delta():
    config = load_config("quickstart", [])
    assert config.dp and config.delta <= 1e-5 and config.epsilon_budget <= 8


def test_unknown_key_is_refused_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown key 'noise-multipler'.*did you mean 'noise-multiplier'"):
        ExperimentConfig.from_mapping({"noise-multipler": 1.0})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("noise-multiplier", -0.5, "noise-multiplier = -0.5: must be >= 0"),
        ("delta", 1.0, "delta = 1.0: must be in"),
        ("delta", 0.0, "delta = 0.0: must be in"),
        ("num-rounds", 0, "num-rounds = 0: must be > 0"),
        ("fraction-train", 1.5, "fraction-train = 1.5"),
        ("accountant", "gdp", "accountant = 'gdp': must be one of"),
        ("dataset", "mnist", "dataset = 'mnist': must be one of"),
        ("num-rounds", "ten", "expected int"),
        ("dp", 1, "expected bool"),
        ("delta", float("nan"), "expected float"),
    ],
)
def test_bad_values_are_refused(key, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ExperimentConfig.from_mapping({key: value})


def test_dp_without_noise_is_refused():
    with pytest.raises(ConfigError, match="no privacy guarantee"):
        ExperimentConfig.from_mapping({"dp": True, "noise-multiplier": 0.0})


def test_natural_partitioning_needs_a_natural_split():
    with pytest.raises(ConfigError, match="natural"):
        ExperimentConfig.from_mapping({"dataset": "digits", "partitioning": "natural"})


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        ExperimentConfig.from_toml(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("num-rounds = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        ExperimentConfig.from_toml(broken)


def test_unknown_experiment_name():
    with pytest.raises(ConfigError, match="no experiment named 'quickstrat'"):
        load_config("quickstrat", [])


@pytest.mark.parametrize(
    ("text", "expected"),
    [("num-rounds=5", ("num-rounds", 5)), ("delta=1e-6", ("delta", 1e-6)), ("dp=false", ("dp", False)),
     ("dataset=digits", ("dataset", "digits")), ("model='a.b:c'", ("model", "a.b:c"))],
)
def test_parse_override(text, expected):
    assert parse_override(text) == expected


def test_parse_override_needs_an_equals_sign():
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("num-rounds")


@given(
    rounds=st.integers(1, 1000),
    noise=st.floats(0.1, 100, allow_nan=False),  # the least noise any owner accepts (LEAST_NOISE)
    delta=st.floats(1e-12, 0.5, exclude_max=True),
    dp=st.booleans(),
)
def test_mapping_round_trip(rounds, noise, delta, dp):
    config = ExperimentConfig(num_rounds=rounds, noise_multiplier=noise, delta=delta, dp=dp)
    assert ExperimentConfig.from_mapping(config.to_mapping()) == config
