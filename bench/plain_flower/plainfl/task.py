"""Data and models of the plain baseline, written without privfl.

The digits split and the IID owners are computed exactly as privfl's
``simulations.datasets.load_digits`` and ``simulations.partitioning.iid_partition``
do (same arithmetic, same seeds), so both runs train the same owners on the same
records, and each owner evaluates on the same share of the test split; the models
have privfl's architectures.  With a ``data-dir`` (a folder of ``<owner>.npz`` files
and ``test.npz``, as written by ``bench/synthetic.py`` for privfl's ``dataset =
"folder"``), owner ``i`` is the ``i``-th file in name order, as in privfl.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

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


def _iid_rows(n: int, num_partitions: int, partition_id: int, seed: int) -> np.ndarray:
    permutation = np.random.default_rng(seed).permutation(n).astype(np.int64)
    return np.sort(np.array_split(permutation, num_partitions)[partition_id])


@lru_cache(maxsize=1)
def _folder(data_dir: str) -> tuple[list[Path], tuple[np.ndarray, np.ndarray] | None]:
    files = sorted(p for p in Path(data_dir).glob("*.npz") if p.stem != "test")
    test = Path(data_dir) / "test.npz"
    return files, (_npz(test) if test.exists() else None)


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as archive:
        return archive["features"].astype(np.float32), archive["label"].astype(np.int64)


def test_set(seed: int, data_dir: str = "") -> tuple[np.ndarray, np.ndarray] | None:
    if data_dir:
        return _folder(data_dir)[1]
    _, _, x_test, y_test = digits(seed)
    return x_test, y_test


@lru_cache(maxsize=65536)
def owner(partition_id: int, num_partitions: int, seed: int, data_dir: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    if data_dir:
        x, y = _npz(_folder(data_dir)[0][partition_id])
        return torch.from_numpy(x), torch.from_numpy(y)
    x_train, y_train, _, _ = digits(seed)
    rows = _iid_rows(len(y_train), num_partitions, partition_id, seed)
    return torch.from_numpy(x_train[rows]), torch.from_numpy(y_train[rows])


@lru_cache(maxsize=65536)
def owner_evaluation(partition_id: int, num_partitions: int, seed: int,
                     data_dir: str = "") -> tuple[torch.Tensor, torch.Tensor] | None:
    """The owner's share of the test split (privfl: federated evaluation); None when there is none."""
    if data_dir:
        return None  # privfl reads evaluation/<owner>.* files; the synthetic folders have none
    _, _, x_test, y_test = digits(seed)
    if num_partitions > len(y_test):
        return None
    rows = _iid_rows(len(y_test), num_partitions, partition_id, seed)
    return torch.from_numpy(x_test[rows]), torch.from_numpy(y_test[rows])


def build_model(name: str, seed: int | None = None, features: int = 64, classes: int = 10) -> nn.Module:
    if seed is not None:
        torch.manual_seed(seed)
    if name == "logreg":
        return nn.Sequential(nn.Flatten(), nn.Linear(features, classes))
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                             nn.Linear(64, classes))
    raise ValueError(f"unknown model {name!r}")


def train_local(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch_size: int, lr: float,
                dp: bool, noise_multiplier: float = 1.0, max_grad_norm: float = 1.0,
                grad_sample_mode: str = "hooks") -> nn.Module:
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
                noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm, grad_sample_mode=grad_sample_mode,
            )
        for _ in range(epochs):
            for features, labels in loader:
                optimizer.zero_grad(set_to_none=True)
                criterion(trained(features), labels).backward()
                optimizer.step()
    return model


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(loss, accuracy) of ``model`` on ``x, y``."""
    model.eval()
    with torch.no_grad():
        logits = model(x)
        return (torch.nn.functional.cross_entropy(logits, y).item(),
                (logits.argmax(1) == y).float().mean().item())
