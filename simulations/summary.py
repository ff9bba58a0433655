"""The closing summary of ``privfl simulate``: where the run is, how good, at what privacy cost."""

from __future__ import annotations

from collections.abc import Sequence

from privfl.server.history import epsilon_table
from privfl.simulations.launcher import SimulationResult


def print_summary(runs: Sequence[SimulationResult]) -> None:
    for result in runs:
        history = result.history
        config = history["config"]
        guarantee = (
            f"DP-SGD, record-level (epsilon, delta) per owner, {config['accountant']} accountant"
            if config["dp"] else "no differential privacy"
        )
        print()
        print(f"== {history['experiment']}: {guarantee}")
        print(f"run directory:       {result.run_dir}")
        print(f"final test accuracy: {history['final_test_accuracy']:.4f}")
        failures = sum(len(r.get("failures", [])) for r in history["rounds"])
        if failures:
            trained = sum(len(r.get("participants", [])) for r in history["rounds"])
            print(f"WARNING: {failures} client update(s) failed or were rejected ({trained} accepted); "
                  f"see 'failures' in {result.run_dir / 'history.json'}")
        print("per-owner privacy spent:")
        print(epsilon_table(history))
        if result.ledgers:
            broken = [r for r in result.ledgers if not r.ok]
            owners = sum(1 for r in result.ledgers if not r.path.endswith("federation.db"))
            verdict = "all verified intact" if not broken else f"{len(broken)} NOT INTACT"
            print(f"privacy ledgers:     {owners} owner ledgers + the federation ledger in "
                  f"{result.run_dir / 'ledgers'}: {verdict}")
            for report in broken:
                print(report.summary())
        if result.reports:
            html = next((p for p in result.reports if p.suffix == ".html"), result.reports[0])
            others = ", ".join(p.suffix.lstrip(".") for p in result.reports if p != html)
            print(f"privacy report:      {html}" + (f" (also {others})" if others else ""))
    if len(runs) == 2:
        private, baseline = (r.history["final_test_accuracy"] for r in runs)
        print(f"\naccuracy: {runs[0].history['experiment']} {private:.4f}, "
              f"{runs[1].history['experiment']} {baseline:.4f} (difference {baseline - private:+.4f})")
