"""Smoke tests of the benchmarks (bench/): each script's --quick mode runs and writes its JSON.

The full runs and their numbers are in docs/benchmarks.md; these only check that every
script still runs end to end on privfl's current code and writes the fields the doc's
tables are built from.  The Flower ones start real SuperLinks and Ray (about 50 s each).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import processes_mentioning

ROOT = Path(__file__).resolve().parent.parent


def _run(name: str, tmp_path: Path, *extra: str, timeout: int = 240) -> dict:
    out = tmp_path / f"{name}.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    process = subprocess.run([sys.executable, "-m", f"bench.{name}", "--quick", "--out", str(out), *extra],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["benchmark"] == name and data["quick"] is True
    assert data["machine"]["nproc"] >= 1 and data["machine"]["torch"]
    assert data["machine"]["accelerator"]["device"] in ("cpu", "cuda")
    assert data["results"], "no results"
    return data


def test_client_step_quick(tmp_path):
    data = _run("client_step", tmp_path)
    rows = {r["mode"]: r for r in data["results"]}
    assert {"nonprivate", "hooks", "ghost"} <= set(rows)
    for mode, row in rows.items():
        assert row["ok"], row.get("error")
        # A difference of two timings: finite, but on a loaded machine not always positive.
        assert math.isfinite(row["epoch_ms"]) and row["round_ms"] > 0 and row["max_rss_mib"] > 0
        assert row["device"] in ("cpu", "cuda")
        if rows["nonprivate"]["epoch_ms"] > 0:
            assert row["epoch_ratio"] == pytest.approx(row["epoch_ms"] / rows["nonprivate"]["epoch_ms"])
            assert isinstance(row["meets_1_5x"], bool)


def test_privacy_utility_quick(tmp_path):
    data = _run("privacy_utility", tmp_path, timeout=120)
    rows = {(r["setting"], str(r["target"])): r for r in data["results"]}
    private = rows[("digits-iid", "3.0")]
    assert private["path"] == "inprocess" and private["seeds"] >= 2 and private["planning"] == "per-owner"
    # Every owner plans its own sigma for the target with PLD: each ends within 2% below it, never above.
    assert 0.98 <= private["epsilon_ratio_min"] <= private["epsilon_ratio_max"] <= 1.0 + 1e-9
    assert private["epsilon_pld_max"] <= 3.0 + 1e-6
    assert private["epsilon_rdp_min"] >= private["epsilon_pld_max"] - 1e-6  # RDP is the looser bound
    assert private["accuracy_mean"] > 0.5  # chance is 0.1
    assert rows[("digits-iid", "non-private")]["accuracy_mean"] > private["accuracy_mean"] - 0.05
    assert rows[("digits/pooled", "non-private")]["accuracy_mean"] > 0.8
    for run in data["runs"]:
        assert "accuracy" in run and "seed" in run
        if run["target"] == 3.0 and run["setting"] == "digits-iid":
            assert set(run["epsilon_pld_by_owner"]) == set(run["sigma_by_owner"]) and len(run["sigma_by_owner"]) == 10


@pytest.mark.e2e
def test_overhead_quick(tmp_path):
    runs = tmp_path / "runs"
    data = _run("overhead", tmp_path, "--run-root", str(runs))
    row = data["results"][0]
    for key in ("central_wall_s", "privfl_wall_s", "plain_wall_s", "b_over_a_wall", "b_over_c_wall",
                "privfl_steady_s", "plain_steady_s", "inproc_round_s"):
        assert row[key] > 0, key
    assert row["privfl"]["status"] == row["plain"]["status"] == "finished"
    assert row["privfl"]["client_failures"] == 0 and row["privfl"]["client_updates"] == 3 * 10
    assert row["accuracy_privfl"] > 0.3 and row["accuracy_plain"] > 0.3  # both trained
    assert row["privfl_inproc"]["profile_s"]["train_locally"] > 0
    assert row["privfl_inproc"]["profile_run_train_round_callees_s"]
    assert processes_mentioning(str(runs)) == []  # SuperLinks, simulations and Ray are gone


@pytest.mark.e2e
def test_scale_quick(tmp_path):
    runs = tmp_path / "runs"
    data = _run("scale", tmp_path, "--run-root", str(runs))
    assert [r["owners"] for r in data["results"]] == [10, 50]
    for row in data["results"]:
        assert row["status"] == "finished"
        if row["framework"] == "privfl":
            assert row["client_failures"] == 0 and row["client_updates"] == row["rounds"] * row["owners"]
        assert row["peak_tree_pss_mib"] > 100 and row["peak_processes"] >= 3
        assert row["rounds_per_min_steady"] > 0 and row["wall_s"] > 0
    assert processes_mentioning(str(runs)) == []
