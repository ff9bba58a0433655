"""privfl's ServerApp: FedAvg over the owners that agree to train, evaluated at the owners.

Thin on purpose: configuration, the task, strategy, receipts, evaluation, history and
checkpoints each live in their own module; this one wires them for one run.
"""

from __future__ import annotations

import dataclasses
from contextlib import ExitStack

import torch
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from privfl.config import ConfigError, ExperimentConfig
from privfl.devices import resolve_device
from privfl.logs import get_logger
from privfl.models import ModelSpec
from privfl.protocol import RoundRequest, TrainingPlan
from privfl.server import run_dir as artefacts
from privfl.server.checkpoint import Checkpoint, federation_position, write_checkpoint
from privfl.server.coordinator import open_coordinator_ledgers
from privfl.server.evaluation import make_evaluate_fn
from privfl.server.history import RunHistory
from privfl.server.receipts import ReceiptCheck
from privfl.server.resume import Start, fresh_start, resumed_start
from privfl.server.owner_level import OwnerLevelFedAvg
from privfl.server.strategy import BudgetAwareFedAvg, EveryOwnerRefused
from privfl.server.task import federation_task
from privfl.task import check_model

log = get_logger("server")

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    asked = ExperimentConfig.from_mapping(context.run_config, source="run config")
    start: Start = resumed_start(asked) if asked.resume else fresh_start(asked)
    config, where = start.config, start.where
    log.info("privfl experiment %s, run directory: %s%s", config.experiment_id, where.run_dir,
             f" (resumed after round {start.completed})" if start.completed else "")

    task = federation_task(config, where)
    spec = ModelSpec(config.model, task.num_features, task.num_classes)
    model = check_model(spec, private=config.dp, seed=config.seed)  # fail here, once, not in every owner
    if start.weights is not None:
        try:
            model.load_state_dict(start.weights)
        except (RuntimeError, KeyError) as err:
            raise ConfigError(f"the starting weights do not fit model {config.model!r}: "
                              f"{str(err).splitlines()[0]}") from None

    history = start.history or RunHistory(experiment=config.experiment, config=config.to_mapping(),
                                          experiment_id=config.experiment_id)
    history.save(where.history)  # status "running"; rounds go to history.jsonl as they settle
    plan = TrainingPlan.from_config(config)
    stack = ExitStack()
    # A simulation without DP releases no DP events, so it keeps no federation ledger and anchors nothing;
    # deployed owners sign whatever they answer (a refusal of a non-private request too), so a deployment always does.
    private = config.dp or config.owner_dp or config.deployment
    ledgers = open_coordinator_ledgers(config, where, stack) if private else None
    receipts = ReceiptCheck(ledgers and ledgers.federation, ledgers and ledgers.registry, where.owner_keys_dir,
                            plan, experiment_id=config.experiment_id, coordinator_key=ledgers and ledgers.key)

    def request(server_round: int) -> RoundRequest:
        return RoundRequest(experiment_id=config.experiment_id, server_round=server_round, purpose=config.purpose,
                            privacy_unit="record", model=spec, plan=plan, owners_dir=str(where.owners_dir))

    def on_evaluation(server_round: int, loss: float, accuracy: float) -> None:
        number = server_round + strategy.round_offset
        record = history.round(number)
        record.test_loss, record.test_accuracy = loss, accuracy
        history.log_round(where.history, number)  # evaluation closes a round: log it now

    def on_round_end(server_round: int, arrays: ArrayRecord) -> None:
        """The round's receipts are committed: checkpoint it, so the experiment can resume after it."""
        anchors, head = federation_position(where.federation_ledger) if private else (0, "")
        write_checkpoint(where.run_dir, Checkpoint(config.experiment_id, server_round, "", anchors=anchors,
                                                   anchor_head=head, **strategy.state()),
                         arrays.to_torch_state_dict())
        history.log_round(where.history, server_round)

    kind = OwnerLevelFedAvg if config.owner_dp else BudgetAwareFedAvg
    extra = {"config": config} if config.owner_dp else {}
    strategy = kind(
        **extra, request=request, fraction_train=config.fraction_train, history=history, receipts=receipts,
        # A simulation registers all its nodes at once; in a deployment, owners that
        # connect later join later rounds.
        min_owners=config.min_owners if config.deployment else min(config.min_owners, len(task.owner_ids) or 1),
        seed=config.seed, on_round_end=on_round_end,
        on_evaluated=lambda number: history.log_round(where.history, number),
        evaluate_rounds=lambda r: config.federated_evaluation == "every" or
        (config.federated_evaluation == "last" and r == config.num_rounds),
    )
    strategy.timeout = config.round_timeout
    if start.checkpoint is not None:
        strategy.restore(start.completed, dataclasses.asdict(start.checkpoint))
    evaluate_fn = make_evaluate_fn(spec, task.test, resolve_device(config.device), on_evaluation) \
        if task.test is not None else None
    with stack:
        try:
            result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                                    num_rounds=config.num_rounds - start.completed, timeout=config.round_timeout,
                                    evaluate_fn=evaluate_fn)
            arrays = result.arrays
        except EveryOwnerRefused as stop:  # no later round can train: end now, saying why
            log.warning("privfl run stops: %s", stop)
            history.stopped = str(stop)
            arrays = strategy._global if strategy._global is not None else ArrayRecord()
    final = arrays if len(arrays) else ArrayRecord(model.state_dict())  # no round trained
    torch.save(final.to_torch_state_dict(), where.run_dir / artefacts.MODEL)
    history.status = "finished"
    history.save(where.history)
    log.info("privfl run finished: %d of %d rounds aggregated, accuracy %s, artefacts in %s",
             history.aggregated_rounds(), config.num_rounds, history.final_accuracy(), where.run_dir)
