"""privfl's ServerApp: FedAvg over the owners that agree to train, evaluated at the owners.

Thin on purpose: configuration, the task, strategy, receipts, evaluation and history
each live in their own module; this one wires them for one run.
"""

from __future__ import annotations

from contextlib import ExitStack

import torch
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from privfl.config import ExperimentConfig
from privfl.devices import resolve_device
from privfl.logs import get_logger
from privfl.models import ModelSpec
from privfl.protocol import RoundRequest, TrainingPlan
from privfl.server import run_dir as artefacts
from privfl.server.coordinator import open_coordinator_ledgers
from privfl.server.evaluation import make_evaluate_fn
from privfl.server.history import RunHistory
from privfl.server.receipts import ReceiptCheck
from privfl.server.strategy import BudgetAwareFedAvg
from privfl.server.task import federation_task
from privfl.task import check_model

log = get_logger("server")

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = artefacts.settle(ExperimentConfig.from_mapping(context.run_config, source="run config"))
    where = artefacts.prepare_run_dir(config)
    log.info("privfl experiment %s, run directory: %s", config.experiment_id, where.run_dir)

    task = federation_task(config, where)
    spec = ModelSpec(config.model, task.num_features, task.num_classes)
    model = check_model(spec, private=config.dp, seed=config.seed)  # fail here, once, not in every owner

    history = RunHistory(experiment=config.experiment, config=config.to_mapping(), experiment_id=config.experiment_id)

    def on_evaluation(server_round: int, loss: float, accuracy: float) -> None:
        record = history.round(server_round)
        record.test_loss, record.test_accuracy = loss, accuracy
        history.save(where.history)  # evaluation closes a round: persist it now

    def on_round_end(server_round: int, arrays: ArrayRecord) -> None:
        history.round(server_round)
        history.save(where.history)

    plan = TrainingPlan.from_config(config)
    stack = ExitStack()
    # A non-private run releases no DP events, so it keeps no federation ledger and anchors nothing.
    ledgers = open_coordinator_ledgers(config, where, stack) if config.dp else None
    receipts = ReceiptCheck(ledgers and ledgers.federation, ledgers and ledgers.registry, where.owner_keys_dir,
                            plan, experiment_id=config.experiment_id, coordinator_key=ledgers and ledgers.key)

    def request(server_round: int) -> RoundRequest:
        return RoundRequest(experiment_id=config.experiment_id, server_round=server_round, purpose=config.purpose,
                            privacy_unit="record", model=spec, plan=plan, owners_dir=str(where.owners_dir))

    strategy = BudgetAwareFedAvg(
        request=request, fraction_train=config.fraction_train, history=history, receipts=receipts,
        # A simulation registers all its nodes at once; in a deployment, owners that
        # connect later join later rounds.
        min_owners=config.min_owners if config.deployment else min(config.min_owners, len(task.owner_ids) or 1),
        seed=config.seed, on_round_end=on_round_end,
        evaluate_rounds=lambda r: config.federated_evaluation == "every" or
        (config.federated_evaluation == "last" and r == config.num_rounds),
    )
    strategy.timeout = config.round_timeout
    evaluate_fn = make_evaluate_fn(spec, task.test, resolve_device(config.device), on_evaluation) \
        if task.test is not None else None
    with stack:
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                                num_rounds=config.num_rounds, timeout=config.round_timeout, evaluate_fn=evaluate_fn)
    final = result.arrays if len(result.arrays) else ArrayRecord(model.state_dict())  # no round trained
    torch.save(final.to_torch_state_dict(), where.run_dir / artefacts.MODEL)
    history.status = "finished"
    history.save(where.history)
    log.info("privfl run finished: %d of %d rounds aggregated, accuracy %s, artefacts in %s",
             history.aggregated_rounds(), config.num_rounds, history.final_accuracy(), where.run_dir)
