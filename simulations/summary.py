"""The closing summary of ``privfl simulate``: where the run is, how good, at what privacy cost,
and whether anything went wrong (which decides the exit code)."""

from __future__ import annotations

from collections.abc import Sequence

from privfl.server.history import epsilon_table
from privfl.server.run_dir import HISTORY
from privfl.simulations.launcher import SimulationResult


def run_problems(result: SimulationResult, *, max_failed_updates: int = 0) -> list[str]:
    """What makes a run a failure: a ledger not intact, nothing aggregated, failed client updates."""
    history = result.history
    problems = [result.audit.verdict_line()] if result.audit is not None and not result.audit.ok else []
    problems += [f"ledgers not intact: {p}" for p in result.audit.all_problems()] if result.audit is not None else []
    if history.get("status") != "finished":
        problems.append(f"the run did not finish (status {history.get('status')!r})")
    if not history.get("aggregated_rounds"):
        problems.append("no update was aggregated in any round: the model is the initial one")
    failed = history.get("failed_updates", 0)
    if failed > max_failed_updates:
        problems.append(f"{failed} client update(s) failed or were rejected (tolerated: {max_failed_updates}); "
                        f"see 'failures' in {result.run_dir / HISTORY}")
    return problems


def print_summary(runs: Sequence[SimulationResult], *, max_failed_updates: int = 0) -> list[str]:
    """Print each run's summary; returns every run's problems (empty: all well)."""
    all_problems = []
    for result in runs:
        history = result.history
        config = history["config"]
        units = [*(["DP-SGD, record-level"] if config["dp"] else []),
                 *([f"DP-FedAvg, owner-level{' with SecAgg+' if config.get('secure-aggregation') else ''}"]
                   if config.get("owner-dp") else [])]
        guarantee = (f"{' + '.join(units)} (epsilon, delta) per owner, {config['accountant']} accountant"
                     if units else "no differential privacy")
        print()
        print(f"== {history['experiment']}: {guarantee}")
        print(f"experiment id:       {history.get('experiment_id', '')}")
        print(f"run directory:       {result.run_dir}")
        if history.get("stopped"):
            print(f"run stopped early:   {history['stopped']}")
        accuracy = history.get("final_test_accuracy")
        print(f"final test accuracy: {accuracy:.4f}" if accuracy is not None else "final test accuracy: none")
        _print_federated_evaluation(history)
        print("per-owner privacy spent:")
        print(epsilon_table(history, result.audit.epsilon if result.audit is not None else None))
        if result.audit is not None:
            audit = result.audit
            print(f"privacy ledgers:     {audit.verdict_line()}")
            for note in audit.unaggregated:
                print(f"note: {note}")
        if result.reports:
            html = next((p for p in result.reports if p.suffix == ".html"), result.reports[0])
            others = ", ".join(p.suffix.lstrip(".") for p in result.reports if p != html)
            print(f"privacy report:      {html}" + (f" (also {others})" if others else ""))
        problems = run_problems(result, max_failed_updates=max_failed_updates)
        for problem in problems:
            print(f"PROBLEM: {problem}")
        all_problems.extend(problems)
    if len(runs) == 2:
        private, baseline = (r.history["final_test_accuracy"] for r in runs)
        if private is not None and baseline is not None:
            print(f"\naccuracy: {runs[0].history['experiment']} {private:.4f}, "
                  f"{runs[1].history['experiment']} {baseline:.4f} (difference {baseline - private:+.4f})")
    return all_problems


def _print_federated_evaluation(history: dict) -> None:
    evaluated = [r for r in history["rounds"] if (r.get("federated_evaluation") or {}).get("accuracy") is not None]
    if not evaluated:
        return
    last = evaluated[-1]["federated_evaluation"]
    examples = last["num_examples"]
    weighting = "weighted by examples" if examples is not None else "each owner alike: counts not public"
    print(f"accuracy at the owners (round {evaluated[-1]['round']}, {weighting}): {last['accuracy']:.4f} "
          f"over {len(last['owners'])} owners" + (f" ({examples} examples)" if examples is not None else ""))
