"""Test helpers: owners (simulated and deployed) and the requests a coordinator sends them.

The ClientApp is driven in-process with Flower's real Message and Context objects,
real ledgers (SQLite) and real keys; only Flower's runtime is left out, which is not
what these tests are about.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MessageType, RecordDict

from privfl import protocol
from privfl.config import ExperimentConfig
from privfl.models import ModelSpec
from privfl.privacy.keys import generate_key, save_private_key, save_public_key
from privfl.privacy.ledger.node_head import enrol_owner_ledger
from privfl.privacy.policy import OwnerPolicy, write_policy_file
from privfl.protocol import RoundRequest, TrainingPlan
from privfl.server import run_dir as artefacts
from privfl.simulations.federation import simulated_federation
from privfl.simulations.owners import enroll_simulated_owners

CONFIG = ExperimentConfig(num_owners=4, num_rounds=3, experiment_id="exp-1")
DIGITS = ModelSpec("logreg", 64, 10)


def simulated_world(folder: Path, config: ExperimentConfig = CONFIG) -> tuple[ExperimentConfig, artefacts.Layout]:
    """A settled config with its simulated owners enrolled in ``folder``."""
    config = artefacts.settle(config.replace(run_dir=str(folder / "run")))
    where = artefacts.layout(config)
    enroll_simulated_owners(config, where, simulated_federation(config).owner_ids)
    return config, where


def request(config: ExperimentConfig, server_round: int, *, owners_dir: str | Path = "", spec: ModelSpec = DIGITS,
            **changes) -> RoundRequest:
    plan = TrainingPlan.from_config(config)
    plan_changes = {k: v for k, v in changes.items() if hasattr(plan, k)}
    if plan_changes:
        from dataclasses import replace

        plan = replace(plan, **plan_changes)
    fields = dict(experiment_id=config.experiment_id or "exp-1", server_round=server_round, purpose=config.purpose,
                  privacy_unit="record", model=spec, plan=plan, owners_dir=str(owners_dir))
    fields.update({k: v for k, v in changes.items() if k in fields or k in ("protocol_version",)})
    return RoundRequest(**fields)


def message(req: RoundRequest, kind: str = MessageType.TRAIN, arrays: ArrayRecord | None = None,
            record=None) -> Message:
    arrays = arrays if arrays is not None else ArrayRecord(req.model.build(seed=0).state_dict())
    content = RecordDict({protocol.ARRAYS: arrays, protocol.TRAIN_CONFIG: record or req.to_record()})
    return Message(content=content, dst_node_id=1, message_type=kind)


def simulated_context(config: ExperimentConfig, partition: int = 1) -> Context:
    """A fresh simulated node process (empty Flower state, as after a restart)."""
    num = len(simulated_federation(config).owner_ids)
    return Context(run_id=7, node_id=1, node_config={"partition-id": partition, "num-partitions": num},
                   state=RecordDict(), run_config=config.to_mapping())


def deployed_context(node_config: dict, run_config: dict | None = None) -> Context:
    """A deployed node: its own node config; the run config is the coordinator's (possibly hostile)."""
    return Context(run_id=7, node_id=1, node_config=node_config, state=RecordDict(),
                   run_config=run_config if run_config is not None else CONFIG.to_mapping())


def write_owner_data(path: Path, rows: int = 300, features: int = 64, classes: int = 10, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, features=rng.random((rows, features)).astype(np.float32),
             label=rng.integers(0, classes, rows))
    return path


FEDERATION = "superlink.example.org:9092"  # the federation a deployed test owner's node serves


def deployed_owner(folder: Path, owner_id: str = "st-mary", **policy) -> Path:
    """An institution's folder: data, key and policy file; returns the policy file."""
    folder.mkdir(parents=True, exist_ok=True)
    data = write_owner_data(folder / "data.npz", rows=policy.pop("rows", 300),
                            features=policy.pop("features", 64))
    key = generate_key()
    save_private_key(key, folder / "signing.key")
    save_public_key(key, folder / "signing.pub")
    values = dict(owner_id=owner_id, epsilon_budget=3.0, delta=1e-5, data=str(data), ledger=str(folder / "ledger.db"),
                  signing_key=str(folder / "signing.key"), federation=FEDERATION)
    values.update(policy)
    written = write_policy_file(OwnerPolicy(**values), folder / "policy.toml")
    if values["ledger"]:  # enrolment creates the ledger (the node never does)
        enrol_owner_ledger(values["ledger"], owner_id, key, values["signing_key"])
    return written


def owner_round_terms(**changes) -> "OwnerRound":
    """Owner-level terms as a coordinator sends them: Poisson at rate 1 over 4 owners, sigma 1, clip 1."""
    from privfl.protocol import OwnerRound

    values = dict(noise_multiplier=1.0, sampling="poisson", sample_rate=1.0, sample_size=0, population=4,
                  clipping_norm=1.0, secure=False)
    values.update(changes)
    return OwnerRound(**values)


def both_units_owner(tmp_path: Path, **policy) -> Path:
    """st-mary, deployed, accepting record- and owner-level rounds with budgets of 50."""
    values = dict(privacy_units=("record", "owner"), owner_epsilon_budget=50.0, epsilon_budget=50.0)
    values.update(policy)
    return deployed_owner(tmp_path / "st-mary", **values)


def ask_owner(policy_file: Path, server_round: int = 1, *, stage: str = protocol.TRAIN_STAGE, terms=None,
              unit: str = "record", experiment_id: str = "exp-1", **plan):
    """One train request of the coordinator to this owner's node, as privfl's ClientApp handles it (no SecAgg+ mod)."""
    from dataclasses import replace

    from privfl.client.round import run_train_round

    req = request(CONFIG, server_round, privacy_unit=unit, **plan)
    req = replace(req, stage=stage, owner_round=terms if unit == "owner" else None, experiment_id=experiment_id)
    return run_train_round(message(req), deployed_context({"policy": str(policy_file)}))


def signed_entry(reply):
    """The ledger entry an owner signed into its reply (a charge or a refusal)."""
    from privfl.privacy.ledger import Entry

    return Entry.from_signed(reply[protocol.PRIVACY][protocol.SIGNED_ENTRY])


def run_in_process(run_dir: Path, federation: Path | None = None, rounds: int = 1, owners: int = 3):
    """A small simulated run through privfl's own ServerApp and ClientApp in this process (no Flower engine)."""
    from bench.inprocess_grid import run_apps
    from privfl.client.app import app as client_app
    from privfl.client.owner_ledger import close_owner_ledgers
    from privfl.server.app import app as server_app

    config = artefacts.settle(ExperimentConfig(num_owners=owners, num_rounds=rounds, run_dir=str(run_dir),
                                               federation_dir=str(federation) if federation else "",
                                               federated_evaluation="off"))
    run_apps(server_app, client_app, owners, config.to_mapping())
    close_owner_ledgers()  # as a node process exits
    return config
