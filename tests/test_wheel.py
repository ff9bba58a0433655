"""privfl installs as a wheel and runs from there: no checkout, no pyproject.toml beside the package.

The wheel is built from this checkout and installed into a fresh virtual environment in a
temporary folder.  Its dependencies (torch, Flower, Opacus, ...) are taken from the test
environment through a path entry rather than downloaded again; privfl itself comes from the
wheel alone (the checkout's editable install is not on that path).  From an unrelated
folder it then runs a 2-round simulation with its report, and the report command.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    work = tmp_path_factory.mktemp("wheel")
    # Built from a copy of the source: setuptools builds in the tree it is given (build/), and a stale build/
    # of an earlier checkout state would put files into the wheel that the source no longer has.
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "runs", "*.egg-info", "__pycache__", ".hypothesis", ".pytest_cache"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(work / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (work / "dist").glob("privfl-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # Whatever is importable counts as installed for pip: a checkout on PYTHONPATH (its privfl.egg-info, the
    # same version) would make it skip the wheel, so pip runs without it and installs regardless.
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--ignore-installed",
                           str(wheel)], capture_output=True, text=True, timeout=300, env=_env(venv))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (site / "privfl" / "__init__.py").is_file(), done.stdout + done.stderr  # really installed here
    # Only now the test environment's packages (for torch, Flower, ...): had pip seen them, it would have taken
    # the checkout's editable privfl of the same version for installed and skipped the wheel.
    (site / "privfl-test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _console_scripts(venv, "flwr")  # Flower's commands, run by this venv's interpreter (as an install would)
    return wheel, venv


def _console_scripts(venv: Path, distribution: str) -> None:
    """Write ``distribution``'s console scripts into ``venv``, as pip would had it installed the package there."""
    from importlib.metadata import distribution as find

    for entry in find(distribution).entry_points:
        if entry.group != "console_scripts":
            continue
        module, _, attribute = entry.value.partition(":")
        script = venv / "bin" / entry.name
        script.write_text(f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom {module} import {attribute.split('.')[0]}\n"
                          f"sys.exit({attribute}())\n")
        script.chmod(0o755)


def _env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    return env


def test_the_wheel_holds_the_package_and_its_data_and_nothing_else(installed):
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("privfl/simulations/configs/quickstart.toml", "privfl/privacy/report/templates/report.html.j2",
                   "privfl/privacy/report/report-schema.json", "privfl/protos/ledger.proto",
                   "privfl/simulations/data/heart_disease/processed.cleveland.data", "privfl/deploy/create.py"):
        assert needed in names, needed
    assert not [n for n in names if n.startswith(("tests/", "bench/", "docs/", "runs/", "examples/"))]


def test_an_installed_privfl_runs_a_simulation_and_a_report_from_anywhere(installed, tmp_path):
    _, venv = installed
    env = _env(venv)
    found = subprocess.run([str(venv / "bin" / "python"), "-c", "import privfl; print(privfl.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    assert found.returncode == 0, found.stdout + found.stderr
    assert str(venv) in found.stdout and str(ROOT) not in found.stdout  # the wheel's privfl, not the checkout's
    run = subprocess.run([str(venv / "bin" / "privfl"), "simulate", "quickstart", "--set", "num-owners=3",
                          "--set", "num-rounds=2", "--run-dir", str(tmp_path / "run")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "privacy ledgers:     INTACT: run " in run.stdout  # the one audit's verdict line
    assert (tmp_path / "run" / "report.html").is_file()
    report = subprocess.run([str(venv / "bin" / "privfl"), "report", str(tmp_path / "run"), "--format", "json",
                             "--out", str(tmp_path / "again.json")], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=300)
    assert report.returncode == 0, report.stdout + report.stderr
    assert (tmp_path / "again.json").stat().st_size > 1000
