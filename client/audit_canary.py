"""A canary owner of the owner-level audit: its update is a fixed random direction (docs/audit.md).

Andrew et al. ("One-shot Empirical Privacy Estimation for Federated Learning", ICLR 2024)
audit owner-level DP-FedAvg with canary clients whose update, whenever they are drawn, is a
fixed random unit direction scaled to the clipping norm.  After training, the cosines of
those directions with the final model delta, against the cosines of fresh random
directions, give an epsilon estimate (:mod:`privfl.privacy.empirical.one_shot`).

A canary owner is a *simulated* owner that ``privfl audit`` enrols with a direction file
beside its policy (``<owners-dir>/<owner>/audit-canary.npy``, written by
:mod:`privfl.simulations.canary_owners`).  Its update is replaced here, after its local
training and before the owner-level clipping (:func:`privfl.client.owner_level.as_released`),
so it is clipped, summed and noised like every other owner's, and charged like one.

Never reachable from a deployment: the file is looked for only when the node is a
simulated one (Flower's simulation gives it a ``partition-id``, :class:`privfl.client.owner.Owner`),
only in an owner-level round, and only in the simulation's owners folder.  A deployed
institution's node never reads it, whatever the request names, so nothing the coordinator
sends turns an institution's update into a canary.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Message

from privfl import protocol
from privfl.client.training import LocalUpdate
from privfl.privacy.policy import OWNER
from privfl.protocol import RoundRequest

CANARY_FILE = "audit-canary.npy"  # beside a simulated canary owner's policy: its direction, one flat unit vector


def canary_direction_file(owner: Any, request: RoundRequest) -> Path | None:
    """The direction file that makes this owner a canary in this round (None: it is not one).

    Only a simulated owner (never a deployed node) in an owner-level round can be one.
    """
    if not owner.simulated or request.privacy_unit != OWNER or request.owner_round is None:
        return None
    if not request.owners_dir:
        return None
    path = Path(request.owners_dir) / owner.owner_id / CANARY_FILE
    return path if path.is_file() else None


def canary_update(owner: Any, request: RoundRequest, msg: Message, update: LocalUpdate) -> LocalUpdate:
    """``update``, or, for a canary owner, the global model moved by its direction scaled to the round's clip C.

    The direction is flattened over the model's arrays in the global model's order (the
    order the audit uses to compute the final delta's cosine with it).
    """
    path = canary_direction_file(owner, request)
    if path is None:
        return update
    direction = np.load(path, allow_pickle=False).astype(np.float64).ravel()
    global_state = msg.content[protocol.ARRAYS].to_torch_state_dict()
    size = sum(int(v.numel()) for v in global_state.values())
    norm = float(np.linalg.norm(direction))
    if direction.size != size or not np.isfinite(norm) or norm == 0:
        raise ValueError(f"{path}: a canary direction must be a nonzero vector of the model's {size} parameters, "
                         f"got {direction.size} values of norm {norm:g}")
    step = direction * (request.owner_round.clipping_norm / norm)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    offset = 0
    for name, value in global_state.items():
        chunk = step[offset:offset + value.numel()].reshape(tuple(value.shape))
        offset += value.numel()
        state[name] = value + torch.from_numpy(chunk).to(value.dtype)
    return replace(update, state_dict=state)
