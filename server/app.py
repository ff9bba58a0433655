"""privfl's ServerApp: budget-aware FedAvg over the owners, evaluated every round.

Thin on purpose: configuration, strategy, evaluation and history each live in their
own module; this one wires them for one run.
"""

from __future__ import annotations

from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from privfl.logs import get_logger
from privfl.client.training import TrainingPlan
from privfl.config import ExperimentConfig
from privfl.devices import resolve_device
from privfl.models import ModelSpec, ensure_privatizable
from privfl.privacy.ledger import FederationLedger
from privfl.server import run_dir as artefacts
from privfl.server.evaluation import make_evaluate_fn
from privfl.server.history import RunHistory
from privfl.server.receipts import ReceiptCheck
from privfl.server.strategy import BudgetAwareFedAvg
from privfl.simulations.datasets import load_dataset

log = get_logger("server")

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = ExperimentConfig.from_mapping(context.run_config, source="run config")
    path = artefacts.prepare_run_dir(config)
    log.info("privfl run directory: %s", path)

    _, test = load_dataset(config.dataset, config.seed)
    spec = ModelSpec(config.model, test.num_features, test.num_classes)
    model = spec.build(seed=config.seed)
    if config.dp:
        ensure_privatizable(model)  # fail here, once, rather than in every client

    history = RunHistory(experiment=config.experiment, config=config.to_mapping())
    history_file = path / artefacts.HISTORY

    def on_evaluation(server_round: int, loss: float, accuracy: float) -> None:
        record = history.round(server_round)
        record.test_loss, record.test_accuracy = loss, accuracy
        history.save(history_file)  # evaluation closes a round: persist it now

    plan = TrainingPlan.from_config(config)
    ledger_dir = path / artefacts.LEDGERS
    ledger_dir.mkdir(exist_ok=True)
    owner_keys = Path(config.owner_keys_dir) if config.owner_keys_dir else path / artefacts.KEYS
    # A non-private run releases no DP events, so it keeps no federation ledger.
    federation = FederationLedger.open(ledger_dir / artefacts.FEDERATION_LEDGER) if config.dp else None
    receipts = ReceiptCheck(federation, owner_keys, plan, run_id=str(context.run_id))
    strategy = BudgetAwareFedAvg(
        # A simulation registers all its nodes at once; in a deployment, owners that
        # connect later join later rounds.  Two owners are the least that FedAvg needs.
        fraction_train=config.fraction_train, min_owners=min(2, config.num_owners), history=history,
        receipts=receipts, seed=config.seed,
    )
    # Simulated owners keep their ledgers and keys in the run directory (they have no
    # institution of their own); deployed owners ignore these and use their node config.
    simulated_owner_folders = {"ledger-dir": str(ledger_dir), "keys-dir": str(owner_keys)}
    train_config = ConfigRecord({**plan.to_record_values(), **spec.to_record_values(), **simulated_owner_folders})
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=config.num_rounds,
        train_config=train_config,
        evaluate_fn=make_evaluate_fn(spec, test, resolve_device(config.device), on_evaluation),
    )
    final = result.arrays if len(result.arrays) else ArrayRecord(model.state_dict())  # no round trained
    torch.save(final.to_torch_state_dict(), path / artefacts.MODEL)
    if federation is not None:
        federation.close()
    history.status = "finished"
    history.save(history_file)
    log.info("privfl run finished: test accuracy %s, artefacts in %s", history.final_accuracy(), path)
