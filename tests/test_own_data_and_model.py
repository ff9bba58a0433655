"""A team's own data (a folder of per-owner CSV files) and own model (an import path), with no edit to privfl.

Runs the README's example (examples/tabular) through privfl's pre-flight checks and its
ServerApp and ClientApp in this process, and checks the model checks made before a run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

from bench.inprocess_grid import run_apps
from privfl.cli.simulate import importable, load_config
from privfl.client.app import app as client_app
from privfl.client.owner_ledger import close_owner_ledgers
from privfl.config import ConfigError
from privfl.models import ModelSpec
from privfl.server.app import app as server_app
from privfl.server.run_dir import settle
from privfl.simulations.preflight import preflight
from privfl.task import ModelMismatchError, check_model

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tabular"


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    data = tmp_path_factory.mktemp("tabular") / "data"
    subprocess.run([sys.executable, str(EXAMPLE / "make_data.py"), str(data)], check=True, capture_output=True)
    importable(EXAMPLE)
    config = load_config(str(EXAMPLE / "experiment.toml"), [f"data-dir={json.dumps(str(data))}"])
    return config, data


def test_the_example_folder_passes_the_checks_made_before_a_run(example):
    config, data = example
    assert sorted(p.stem for p in data.glob("*.csv")) == ["north-clinic", "riverside", "st-mary", "test"]
    preflight(config)  # the model imports, fits 30 features and 2 classes, and Opacus can train it


def test_a_simulation_on_the_folder_with_the_users_model_trains_and_evaluates_at_the_owners(example, tmp_path):
    config, _ = example
    config = settle(config.replace(num_rounds=2, run_dir=str(tmp_path / "run")))
    run_apps(server_app, client_app, 3, config.to_mapping())
    close_owner_ledgers()
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["aggregated_rounds"] == 2 and sorted(history["owners"]) == ["north-clinic", "riverside", "st-mary"]
    assert history["final_test_accuracy"] > 0.6  # test.csv is the central test set
    last = history["rounds"][-1]["federated_evaluation"]
    # the owners keep their record counts private (public-record-count defaults to false)
    assert sorted(last["owners"]) == ["north-clinic", "riverside", "st-mary"] and last["num_examples"] is None


def _wide(in_features: int, num_classes: int) -> nn.Module:
    return nn.Linear(in_features, num_classes + 1)


def _batchnorm(in_features: int, num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Linear(in_features, 8), nn.BatchNorm1d(8), nn.Linear(8, num_classes))


@pytest.mark.parametrize("factory, message", [
    ("tests.test_own_data_and_model:_wide", "outputs shape [3] per example; the data has 2 classes"),
    ("tests.test_own_data_and_model:_batchnorm", "Opacus cannot make"),
    ("tests.nowhere:make", "cannot be built"),
])
def test_a_model_that_does_not_fit_the_data_is_refused_before_the_run(factory, message):
    with pytest.raises((ModelMismatchError, ValueError)) as caught:
        check_model(ModelSpec(factory, 30, 2), private=True)
    assert message in str(caught.value)


def test_a_model_refusing_the_datas_width_is_refused():
    with pytest.raises(ModelMismatchError, match="cannot be built for 12 inputs.*not a square"):
        check_model(ModelSpec("cnn", 12, 2), private=True)  # 12 features are no square image


def test_preflight_names_the_model_that_does_not_fit(example):
    config, _ = example
    with pytest.raises(ConfigError, match="model = 'tests.test_own_data_and_model:_wide'"):
        preflight(config.replace(model="tests.test_own_data_and_model:_wide"))
