"""The privfl command as a user meets it: help that lists the subcommands, errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from privfl.privacy.accountants import get_accountant
from privfl.privacy.events import PoissonSubsampledGaussian


def _privfl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "privfl.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_the_subcommands():
    done = _privfl("--help")
    assert done.returncode == 0
    for command in ("simulate", "accountant", "ledger", "keys", "report"):
        assert command in done.stdout


def test_simulate_help_lists_experiments_and_keys():
    done = _privfl("simulate", "--help")
    assert done.returncode == 0
    assert "quickstart" in done.stdout and "noise-multiplier" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "noise-multipler=1"], "unknown key 'noise-multipler' (did you mean 'noise-multiplier'?)"),
        (["--set", "noise-multiplier=-1"], "noise-multiplier = -1.0: must be >= 0"),
        (["--set", "delta=1"], "delta = 1.0: must be in (0, 1)"),
        (["--set", "delta=0.01"], "owner owner-0: delta 0.01 is not below 1/n"),
        (["--set", "model='tests.test_models:batchnorm_model'"], "Opacus cannot make Sequential private"),
        (["--set", "model='no.such:thing'"], "cannot load model factory"),
        (["--set", "dataset='heart-disease'", "--set", "partitioning='natural'"], "natural owners"),
    ],
)
def test_bad_input_is_refused_before_anything_runs(args, message):
    done = _privfl("simulate", "quickstart", *args)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_unknown_experiment():
    done = _privfl("simulate", "nope")
    assert done.returncode == 2 and "no experiment named 'nope'" in done.stderr


def test_accountant_epsilon_and_plan_agree_with_the_library():
    done = _privfl("accountant", "epsilon", "--noise-multiplier", "2.3", "--sample-rate", "0.5",
                   "--steps", "40", "--delta", "1e-5")
    expected = get_accountant("pld").epsilon([PoissonSubsampledGaussian(2.3, 0.5, 40)], 1e-5)
    assert done.returncode == 0 and float(done.stdout) == pytest.approx(expected, rel=1e-5)
    plan = _privfl("accountant", "plan", "--epsilon", "3", "--sample-rate", "0.1", "--steps", "100",
                   "--delta", "1e-5")
    sigma = float(plan.stdout)
    assert get_accountant("pld").epsilon([PoissonSubsampledGaussian(sigma, 0.1, 100)], 1e-5) <= 3 + 1e-4


@pytest.mark.parametrize("args", [["--delta", "1"], ["--sample-rate", "0"], ["--steps", "-3"]])
def test_accountant_refuses_bad_numbers(args):
    base = {"--noise-multiplier": "1", "--sample-rate": "0.1", "--steps": "10", "--delta": "1e-5"}
    base.update(dict(zip(args[::2], args[1::2])))
    done = _privfl("accountant", "epsilon", *[x for kv in base.items() for x in kv])
    assert done.returncode == 2 and "Traceback" not in done.stderr
