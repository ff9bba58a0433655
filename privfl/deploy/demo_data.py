"""Demonstration data for a deployment on one machine: a share of scikit-learn's digits per institution.

A real institution puts its own files in ``data/`` (docs/data.md).  To try a deployment
first (``privfl deploy init ... --demo-data``), each institution gets a disjoint share of
the 1,797 handwritten digits that ship inside scikit-learn: 80% of its share for training
(``data/train.npz``), 20% held out for the coordinator's evaluation requests
(``data/evaluation.npz``).  Features are the 64 pixel intensities scaled to [0, 1], the
label the digit: the shape of the deployment's default experiment (64 features, 10 classes).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from privfl.deploy.layout import InstitutionFolder

DEMO_FEATURES, DEMO_CLASSES = 64, 10
TRAIN_SHARE = 0.8


def write_digits_data(institutions: Mapping[str, InstitutionFolder], seed: int = 0) -> dict[str, int]:
    """Write each institution's share of digits; returns its number of training records."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    features = (digits.data / 16.0).astype(np.float32)
    rows: dict[str, int] = {}
    for part, (owner, folder) in zip(np.array_split(order, len(institutions)), sorted(institutions.items())):
        cut = int(len(part) * TRAIN_SHARE)
        train, held = part[:cut], part[cut:]
        folder.data.mkdir(parents=True, exist_ok=True)
        np.savez(folder.train_data, features=features[train], label=digits.target[train])
        np.savez(folder.evaluation_data, features=features[held], label=digits.target[held])
        rows[owner] = len(train)
    return rows
