"""The run history beside the ledgers: accuracy per round, this experiment, federated evaluation.

Why a module of its own: the history (``history.json``) is written by the server and
not signed, so nothing in it may change a privacy figure.  It only adds context: the
test accuracy after each round next to the owners' lifetime epsilon then, which
ledger run is "this experiment" (the ``experiment-id`` in its config: charges whose
``run_id`` equals it), and each owner's federated evaluation -- which is itself a
release the DP-SGD epsilon does not cover, and the report says so.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from privfl.privacy.report import evidence as ev
from privfl.privacy.report.model import (
    EvaluationPoint,
    EvaluationRound,
    FederatedEvaluation,
    HistoryRound,
    HistorySection,
    OwnerEvaluation,
    OwnerStatement,
)
from privfl.privacy.report.words import EVALUATION_WORDS

CONFIG_KEYS = ("experiment-id", "dataset", "model", "num-owners", "num-rounds", "dp", "noise-multiplier",
               "max-grad-norm", "batch-size", "local-epochs", "delta", "epsilon-budget", "accountant", "purpose",
               # what the release channels are derived from (privacy/report/channels.py)
               "owner-dp", "secure-aggregation", "federated-evaluation", "deployment")


def load_history(history: str | Path | Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, str]:
    """The parsed history and where it came from (``(None, "")`` when none is given).

    A file is read by the server's one history reader (:func:`privfl.server.history.load_history`),
    which replays the round log (``history.jsonl``) of a run that did not finish: the report
    of a crashed run sees every round the audit sees.
    """
    from privfl.server.history import load_history as read_run_history

    if history is None:
        return None, ""
    if isinstance(history, Mapping):
        return dict(history), "history (given as data)"
    path = Path(history)
    if not path.is_file():
        raise FileNotFoundError(f"no run history at {path}")
    try:
        data = read_run_history(path)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not a run history (invalid JSON: {err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("rounds"), list):
        raise ValueError(f"{path} is not a privfl run history (no 'rounds' list)")
    return data, str(path)


def experiment_id(history: Mapping[str, Any] | None) -> str | None:
    """privfl's experiment id from the history's config (``experiment-id``), if it has one."""
    if not history:
        return None
    config = history.get("config") or {}
    value = config.get("experiment-id") if isinstance(config, Mapping) else None
    return str(value) if isinstance(value, str) and value else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _count(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _match(history: Mapping[str, Any], owners: Sequence[OwnerStatement], exp_id: str | None) -> tuple[str | None, str]:
    """The ledger run that is this history's: its experiment id, else the run whose charges match its rounds."""
    runs = {run.run_id for o in owners for run in o.runs}
    if exp_id:
        if exp_id in runs:
            return exp_id, f"this experiment is ledger run {exp_id} (the history's experiment-id)"
        return None, (f"no ledger entry carries the history's experiment-id {exp_id}: epsilon is not shown beside "
                      "accuracy")
    wanted = {(p, r.get("round")) for r in history.get("rounds", []) for p in r.get("participants") or []}
    refused = {(p, r.get("round")) for r in history.get("rounds", []) for p in (r.get("refused") or {})}
    scores: dict[str, int] = {}
    for owner in owners:
        for row in owner.entries:
            key = (owner.owner_id, row.round)
            if (row.kind == "charge" and key in wanted) or (row.kind == "refusal" and key in refused):
                scores[row.run_id] = scores.get(row.run_id, 0) + 1
    if not scores:
        return None, "no ledger run matches the history's participants; epsilon is not shown beside accuracy"
    best = max(scores, key=lambda run: (scores[run], run))
    total = len(wanted) + len(refused)
    return best, f"history matched to ledger run {best}: {scores[best]} of its {total} releases and refusals found"


def history_section(history: Mapping[str, Any], source: str, owners: Sequence[OwnerStatement]) -> HistorySection:
    exp_id = experiment_id(history)
    run_id, note = _match(history, owners, exp_id)
    # Per owner: lifetime epsilon after each round of the matched run (carried forward).
    tracks: list[tuple[float | None, dict[int, float | None]]] = []
    if run_id:
        for owner in owners:
            start = next((run.epsilon_before for run in owner.runs if run.run_id == run_id), None)
            if start is None:
                continue
            by_round = {row.round: row.epsilon_cumulative for row in owner.entries
                        if row.run_id == run_id and row.kind == "charge"}
            tracks.append((start, by_round))
    current = [start for start, _ in tracks]
    rounds = []
    for record in sorted((r for r in history.get("rounds", []) if isinstance(r, Mapping)),
                         key=lambda r: r.get("round", 0) if isinstance(r.get("round", 0), int) else 0):
        number = record.get("round", 0)
        for i, (_, by_round) in enumerate(tracks):
            if number in by_round:
                current[i] = by_round[number]
        known = [c for c in current if c is not None]
        rounds.append(HistoryRound(
            round=number, test_accuracy=_number(record.get("test_accuracy")),
            test_loss=_number(record.get("test_loss")), participants=len(record.get("participants") or []),
            refused=len(record.get("refused") or {}),
            epsilon_max=max(known) if known else None,
            epsilon_median=statistics.median(known) if known else None,
            epsilon_min=min(known) if known else None))
    config = history.get("config") or {}
    return HistorySection(
        source=source, evidence=ev.RUN_HISTORY, experiment=history.get("experiment"), experiment_id=exp_id,
        status=history.get("status"), matched_run_id=run_id, note=note,
        final_test_accuracy=_number(history.get("final_test_accuracy")),
        config={k: config.get(k) for k in CONFIG_KEYS if k in config} if isinstance(config, Mapping) else {},
        rounds=rounds, federated_evaluation=federated_evaluation(history, {o.owner_id for o in owners}))


def _point(number: int, values: Any) -> EvaluationPoint | None:
    if not isinstance(values, Mapping):
        return None
    return EvaluationPoint(number, _number(values.get("loss")), _number(values.get("accuracy")),
                           _count(values.get("num_examples")))


def federated_evaluation(history: Mapping[str, Any], owners: set[str] | None = None) -> FederatedEvaluation | None:
    """Per round: the evaluation aggregated over ``owners`` (None: as the history states it, over all)."""
    rounds: list[EvaluationRound] = []
    for record in history.get("rounds", []):
        if not isinstance(record, Mapping) or not isinstance(record.get("federated_evaluation"), Mapping):
            continue
        number = record.get("round", 0)
        evaluation = record["federated_evaluation"]
        per_owner = evaluation.get("owners") if isinstance(evaluation.get("owners"), Mapping) else {}
        points = [p for o, values in per_owner.items() if owners is None or o in owners
                  for p in [_point(number, values)] if p is not None]
        accuracies = [p.accuracy for p in points if p.accuracy is not None]
        if owners is None or set(per_owner) <= owners:
            loss, accuracy = _number(evaluation.get("loss")), _number(evaluation.get("accuracy"))
            examples = _count(evaluation.get("num_examples"))
        else:  # a narrower scope: re-aggregate (weighted by examples) over the owners in it
            weights = [(p, p.num_examples or 0) for p in points]
            total = sum(w for _, w in weights)
            loss = sum(p.loss * w for p, w in weights if p.loss is not None) / total if total else None
            accuracy = sum(p.accuracy * w for p, w in weights if p.accuracy is not None) / total if total else None
            examples = total or None
        rounds.append(EvaluationRound(number, loss, accuracy, examples, len(points),
                                      min(accuracies) if accuracies else None, max(accuracies) if accuracies else None))
    if not rounds:
        return None
    rounds.sort(key=lambda r: r.round)
    return FederatedEvaluation(evidence=ev.RUN_HISTORY, note=EVALUATION_WORDS, latest_round=rounds[-1].round,
                               rounds=rounds)


def owner_evaluations(history: Mapping[str, Any]) -> dict[str, OwnerEvaluation]:
    """Each owner's federated evaluation over the rounds it was evaluated in."""
    series: dict[str, list[EvaluationPoint]] = {}
    for record in history.get("rounds", []):
        if not isinstance(record, Mapping) or not isinstance(record.get("federated_evaluation"), Mapping):
            continue
        per_owner = record["federated_evaluation"].get("owners")
        if not isinstance(per_owner, Mapping):
            continue
        for owner_id, values in per_owner.items():
            point = _point(record.get("round", 0), values)
            if point is not None:
                series.setdefault(str(owner_id), []).append(point)
    result = {}
    for owner_id, points in series.items():
        points.sort(key=lambda p: p.round)
        result[owner_id] = OwnerEvaluation(latest=points[-1], rounds=points)
    return result


__all__ = ["experiment_id", "federated_evaluation", "history_section", "load_history", "owner_evaluations"]
