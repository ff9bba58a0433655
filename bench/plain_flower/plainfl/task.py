"""Data and models of the plain baseline, written without privfl.

The digits split and the IID owners are computed exactly as privfl's
``simulations.datasets.load_digits`` and ``simulations.partitioning.iid_partition``
do (same arithmetic, same seeds), so both runs train the same owners on the same
records; the models have privfl's architectures.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn


@lru_cache(maxsize=4)
def digits(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float64) / 16.0).astype(np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
    return x_train, y_train, x_test, y_test


@lru_cache(maxsize=4096)
def owner(partition_id: int, num_partitions: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x_train, y_train, _, _ = digits(seed)
    permutation = np.random.default_rng(seed).permutation(len(y_train)).astype(np.int64)
    rows = np.sort(np.array_split(permutation, num_partitions)[partition_id])
    return torch.from_numpy(x_train[rows]), torch.from_numpy(y_train[rows])


def build_model(name: str, seed: int | None = None) -> nn.Module:
    if seed is not None:
        torch.manual_seed(seed)
    if name == "logreg":
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                             nn.Linear(64, 10))
    raise ValueError(f"unknown model {name!r}")


def train_local(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch_size: int, lr: float,
                dp: bool, noise_multiplier: float = 1.0, max_grad_norm: float = 1.0) -> nn.Module:
    """Plain SGD, or Opacus DP-SGD (Poisson sampling, per-sample clipping, noise); returns ``model``."""
    import warnings

    from torch.utils.data import DataLoader, TensorDataset

    model.train()
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    criterion = nn.CrossEntropyLoss()
    trained = model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dp:
            from opacus import PrivacyEngine

            trained, optimizer, loader = PrivacyEngine(accountant="rdp").make_private(
                module=model, optimizer=optimizer, data_loader=loader, poisson_sampling=True,
                noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
            )
        for _ in range(epochs):
            for features, labels in loader:
                optimizer.zero_grad(set_to_none=True)
                criterion(trained(features), labels).backward()
                optimizer.step()
    return model
