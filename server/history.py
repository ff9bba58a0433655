"""The run history: what happened each round, written to disk as it happens.

Two files, so that a round's cost does not grow with the rounds before it:

- ``history.jsonl``, appended as the run goes: one line per round each time the round's
  record is settled (after training, after evaluation); a later line of the same round
  supersedes an earlier one.  A crash loses at most the round in flight.
- ``history.json``, the whole history as one document, written when the run starts
  (``status = "running"``) and when it ends (``status = "finished"``), atomically
  (temp file + rename).  Reports and audits read it; :func:`load_history` replays the
  round log over it for a run that did not finish.

Per-owner privacy facts come from the owners' receipts and are kept per owner: they
are never averaged with other owners'.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # privfl.protocol imports flwr and torch (models): a report reading a history needs neither
    from privfl.protocol import PrivacyReceipt


@dataclass
class RoundRecord:
    round: int
    test_loss: float | None = None
    test_accuracy: float | None = None
    participants: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # owner -> reason
    failures: list[str] = field(default_factory=list)
    receipts: list[dict[str, Any]] = field(default_factory=list)
    aggregated: int = 0  # updates averaged into the global model
    rejected_updates: dict[str, str] = field(default_factory=dict)  # owner -> why its (charged) update was dropped
    # Evaluation at the owners: {"loss", "accuracy", "num_examples", "owners": {owner: {...}}}
    federated_evaluation: dict[str, Any] | None = None
    evaluation_refused: dict[str, str] = field(default_factory=dict)  # owner -> reason
    # Owner-level DP: {"population", "charged", "sampled", "aggregated", "clipping_norm", "noise_stddev", "secure"}
    owner_level: dict[str, Any] | None = None


@dataclass
class RunHistory:
    experiment: str
    config: dict[str, Any]
    experiment_id: str = ""
    rounds: list[RoundRecord] = field(default_factory=list)
    owners: dict[str, dict[str, Any]] = field(default_factory=dict)  # owner -> latest privacy state
    status: str = "running"  # "finished" once the last round is saved: readers know the run is complete
    stopped: str = ""  # why the run ended before its last round (every owner refused), "" when it ran them all

    @classmethod
    def load(cls, path: Path, *, up_to_round: int | None = None) -> RunHistory:
        """A saved history (to resume it), keeping the rounds up to ``up_to_round``."""
        data = load_history(path)
        known = {f.name for f in dataclasses.fields(RoundRecord)}
        rounds = [RoundRecord(**{k: v for k, v in r.items() if k in known}) for r in data.get("rounds", [])
                  if up_to_round is None or r["round"] <= up_to_round]
        from privfl.protocol import PrivacyReceipt  # resuming a run: the server has imported it already

        history = cls(experiment=data["experiment"], config=data["config"],
                      experiment_id=data.get("experiment_id", ""), status="running")
        for record in rounds:  # owners' tallies from the rounds kept, as they were recorded
            history.rounds.append(RoundRecord(record.round, record.test_loss, record.test_accuracy,
                                              aggregated=record.aggregated, failures=record.failures,
                                              rejected_updates=record.rejected_updates,
                                              evaluation_refused=record.evaluation_refused))
            for receipt in record.receipts:
                fields = {k: v for k, v in receipt.items() if k in PrivacyReceipt.__dataclass_fields__}
                epsilon = fields.get("epsilon")
                fields["epsilon"] = math.inf if epsilon == "inf" else (math.nan if epsilon is None else epsilon)
                history.record_receipt(record.round, PrivacyReceipt(**fields))
            for owner, figures in ((record.federated_evaluation or {}).get("owners") or {}).items():
                history.record_evaluation(record.round, owner, figures["loss"], figures["accuracy"],
                                          figures["num_examples"])
            if record.federated_evaluation and record.federated_evaluation.get("accuracy") is not None:
                history.record_federated_evaluation(record.round, record.federated_evaluation["loss"],
                                                    record.federated_evaluation["accuracy"])
        return history

    def round(self, number: int) -> RoundRecord:
        for record in self.rounds:
            if record.round == number:
                return record
        record = RoundRecord(number)
        self.rounds.append(record)
        return record

    def record_receipt(self, number: int, receipt: PrivacyReceipt) -> None:
        rec = self.round(number)
        rec.receipts.append(_finite(asdict(receipt)))
        owner = self.owners.setdefault(
            receipt.owner_id, {"rounds_trained": 0, "rounds_refused": 0, "epsilon": 0.0}
        )
        if receipt.privacy_unit == "owner":  # owner-level: its own epsilon, never mixed with DP-SGD's
            if receipt.signed:
                owner["owner_epsilon"] = receipt.epsilon
            key = "owner_rounds_charged" if receipt.status == "trained" else "owner_rounds_refused"
            owner[key] = owner.get(key, 0) + 1
            if receipt.status != "trained":
                rec.refused[receipt.owner_id] = receipt.reason
            return
        if receipt.signed:  # an unsigned refusal says nothing about the owner's spend
            owner.update(delta=receipt.delta, accountant=receipt.accountant)
            owner["epsilon"] = receipt.epsilon
        if receipt.status == "trained":
            rec.participants.append(receipt.owner_id)
            owner["rounds_trained"] += 1
        else:
            rec.refused[receipt.owner_id] = receipt.reason
            owner["rounds_refused"] += 1

    def record_participant(self, number: int, owner_id: str) -> None:
        """An owner whose update went into round ``number``'s aggregate (counted once per round).

        Record-level receipts count their owner already; an owner-level round without
        DP-SGD has no such receipt, and its owners trained all the same.
        """
        rec = self.round(number)
        if owner_id not in rec.participants:
            rec.participants.append(owner_id)
            self.owners.setdefault(owner_id, {"rounds_trained": 0, "rounds_refused": 0, "epsilon": 0.0})[
                "rounds_trained"] += 1

    def record_evaluation(self, number: int, owner_id: str, loss: float, accuracy: float,
                          examples: int | None) -> None:
        """One owner's answer; ``examples`` None: the owner did not disclose its count (the total is then unknown)."""
        evaluation = self._evaluation(number)
        evaluation["owners"][owner_id] = {"loss": loss, "accuracy": accuracy, "num_examples": examples}
        known = evaluation["num_examples"]
        evaluation["num_examples"] = None if known is None or examples is None else known + examples
        self.owners.setdefault(owner_id, {"rounds_trained": 0, "rounds_refused": 0, "epsilon": 0.0})["evaluation"] = \
            {"round": number, "loss": loss, "accuracy": accuracy, "num_examples": examples}

    def record_federated_evaluation(self, number: int, loss: float, accuracy: float) -> None:
        """The owners' figures averaged, weighted by their examples (FedAvg's rule)."""
        self._evaluation(number).update(loss=loss, accuracy=accuracy)

    def record_evaluation_refusal(self, number: int, owner_id: str, reason: str) -> None:
        self.round(number).evaluation_refused[owner_id] = reason

    def _evaluation(self, number: int) -> dict[str, Any]:
        rec = self.round(number)
        if rec.federated_evaluation is None:
            rec.federated_evaluation = {"loss": None, "accuracy": None, "num_examples": 0, "owners": {}}
        return rec.federated_evaluation

    def aggregated_rounds(self) -> int:
        return sum(1 for r in self.rounds if r.aggregated)

    def failures(self) -> int:
        return sum(len(r.failures) for r in self.rounds)

    def final_accuracy(self) -> float | None:
        """Central test accuracy of the final model, else its federated accuracy at the owners."""
        scored = [r.test_accuracy for r in self.rounds if r.test_accuracy is not None]
        if scored:
            return scored[-1]
        federated = [r.federated_evaluation["accuracy"] for r in self.rounds
                     if r.federated_evaluation and r.federated_evaluation.get("accuracy") is not None]
        return federated[-1] if federated else None

    def to_json(self) -> dict[str, Any]:
        return _finite({
            "experiment": self.experiment,
            "experiment_id": self.experiment_id,
            "status": self.status,
            "stopped": self.stopped,
            "aggregated_rounds": self.aggregated_rounds(),
            "failed_updates": self.failures(),
            "config": self.config,
            "final_test_accuracy": self.final_accuracy(),
            "owners": self.owners,
            "rounds": [asdict(r) for r in sorted(self.rounds, key=lambda r: r.round)],
        })

    def save(self, path: Path) -> None:
        """The whole history as one document (at the start and the end of a run), atomically."""
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    def log_round(self, path: Path, number: int) -> None:
        """Append round ``number``'s record as it stands to the round log (``history.jsonl``)."""
        line = json.dumps(_finite(asdict(self.round(number))), separators=(",", ":"))
        with open(round_log(path), "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


def round_log(history_file: Path) -> Path:
    """``history.jsonl`` beside ``history.json``."""
    return history_file.with_suffix(".jsonl")


def read_round_log(history_file: Path, offset: int = 0) -> tuple[dict[int, dict[str, Any]], int]:
    """The round records in the log from byte ``offset`` on (the last line of a round wins), and the new offset."""
    try:
        with open(round_log(history_file), encoding="utf-8") as handle:
            handle.seek(offset)
            text = handle.read()
    except FileNotFoundError:
        return {}, offset
    complete = text[: text.rfind("\n") + 1]  # a line being written is read next time
    rounds = {}
    for line in complete.splitlines():
        if line.strip():
            record = json.loads(line)
            rounds[record["round"]] = record
    return rounds, offset + len(complete.encode("utf-8"))


def run_status(history_file: Path) -> str | None:
    """The run's status as ``history.json`` states it now (None: not written yet, or being replaced): what a
    launcher polls while the run goes on, without replaying the round log as :func:`load_history` does."""
    try:
        data = json.loads(Path(history_file).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data.get("status") if isinstance(data, dict) else None


def load_history(history_file: Path) -> dict[str, Any]:
    """The run's history: ``history.json``, with the round log replayed over it if the run did not finish.

    The one history reader: the audit, the report and resuming all read a run's history here.
    """
    data = json.loads(Path(history_file).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("status") == "finished":
        return data
    logged, _ = read_round_log(Path(history_file))
    if logged:
        rounds = {r["round"]: r for r in data.get("rounds", [])}
        rounds.update(logged)
        data["rounds"] = [rounds[k] for k in sorted(rounds)]
    return data


def _finite(value: Any) -> Any:
    """JSON has no infinity: a non-private epsilon is written as the string "inf", an unknown one as null."""
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def epsilon_table(history: dict[str, Any], spend: dict[str, dict[str, Any]] | None = None) -> str:
    """A fixed-width per-owner table from a saved history (``history.json``).

    With ``spend`` (per owner: lifetime and this experiment's epsilon, recomputed from
    its ledger) the table shows both: an owner's budget is for its data's lifetime.
    Owner-level epsilon (DP-FedAvg) gets columns of its own: it is another guarantee.
    """
    owners = history["owners"]
    owner_level = any("owner_epsilon" in o for o in owners.values())
    header = f"{'owner':<14} {'lifetime eps':>12} {'this exp.':>9} {'budget':>7} "
    if owner_level:
        header += f"{'owner-level':>11} {'this exp.':>9} {'budget':>7} "
    lines = [header + f"{'delta':>9} {'accountant':>10} {'trained':>7} {'refused':>7}"]
    for owner_id in sorted(owners):
        o = owners[owner_id]
        known = spend.get(owner_id) if spend else None
        eps = o.get("epsilon")
        if eps == "inf":
            cells = ["non-DP", "-", "-"]
        elif known is not None and "lifetime" in known:
            cells = [f"{known['lifetime']:.3f}", f"{known['experiment']:.3f}", f"{known['budget']:g}"]
        elif isinstance(eps, (int, float)) and o.get("rounds_trained"):
            cells = [f"{eps:.3f}", "?", "?"]
        else:
            cells = ["-", "-", "-"]
        if owner_level:
            if known is not None and "owner_lifetime" in known:
                cells += [f"{known['owner_lifetime']:.3f}", f"{known['owner_experiment']:.3f}",
                          f"{known['owner_budget']:g}"]
            elif isinstance(o.get("owner_epsilon"), (int, float)):
                cells += [f"{o['owner_epsilon']:.3f}", "?", "?"]
            else:
                cells += ["-", "-", "-"]
        delta = (known or {}).get("delta") or o.get("delta")
        accountant = (known or {}).get("accountant") or o.get("accountant") or "-"
        widths = [12, 9, 7, 11, 9, 7] if owner_level else [12, 9, 7]
        lines.append(f"{owner_id:<14} " + " ".join(f"{c:>{w}}" for c, w in zip(cells, widths))
                     + f" {f'{delta:.1e}' if delta else '-':>9} {accountant:>10} {o['rounds_trained']:>7} "
                       f"{o['rounds_refused'] + o.get('owner_rounds_refused', 0):>7}")
    return "\n".join(lines)
