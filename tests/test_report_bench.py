"""bench/report_bench.py runs end to end (small sizes) and writes its results file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_report_bench_quick_runs(tmp_path):
    out = tmp_path / "report_bench.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    done = subprocess.run([sys.executable, "-m", "bench.report_bench", "--quick", "--owners", "12", "--rounds", "6",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["benchmark"] == "report_bench" and data["quick"] is True
    assert data["settings"]["owners"] == 12 and data["settings"]["rounds"] == 6
    phases = [r for r in data["results"] if "build_s" in r]
    commands = [r for r in data["results"] if "cli_s" in r]
    assert phases and commands
    assert all(r["intact"] and r["owners"] == 12 and r["build_s"] > 0 and r["html_s"] > 0 for r in phases)
    assert {r["format"] for r in commands} == {"html", "json"}
    assert all(r["cli_s"] > 0 and r["target"] in ("met", "MISSED") and r["target_s"] == 5.0 for r in commands)
    assert "target 5 s" in done.stdout
