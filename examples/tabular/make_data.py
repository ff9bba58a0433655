"""Write a federation of three hospitals as CSV files, the way a team would bring its own data.

The rows are scikit-learn's bundled Wisconsin breast cancer data (569 patients, 30
numeric features, label 1 = benign), split at random across three made-up hospitals;
20% of each hospital's rows are its held-out evaluation data, and a separate 15% of all
rows is a central test set.  Features are standardised with the training rows' mean and
standard deviation (in a real federation such statistics are themselves a release;
here they stand for agreed, public preprocessing).

    python make_data.py            # writes data/<hospital>.csv, data/evaluation/<hospital>.csv, data/test.csv
    python make_data.py OUT_DIR    # the same files in OUT_DIR
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

HOSPITALS = ("st-mary", "riverside", "north-clinic")


def write(path: Path, names: list[str], features: np.ndarray, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*names, "label"])
        for row, label in zip(features, labels):
            writer.writerow([f"{v:.6g}" for v in row] + [int(label)])


def main(out: Path) -> None:
    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    x, y = data.data, data.target
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=0.15, stratify=y, random_state=0)
    mean, std = x_rest.mean(axis=0), x_rest.std(axis=0)
    scale = lambda a: (a - mean) / std  # noqa: E731
    write(out / "test.csv", names, scale(x_test), y_test)
    parts = np.array_split(np.random.default_rng(0).permutation(len(y_rest)), len(HOSPITALS))
    for hospital, rows in zip(HOSPITALS, parts):
        train, held_out = train_test_split(rows, test_size=0.2, random_state=0)
        write(out / f"{hospital}.csv", names, scale(x_rest[train]), y_rest[train])
        write(out / "evaluation" / f"{hospital}.csv", names, scale(x_rest[held_out]), y_rest[held_out])
        print(f"{hospital}: {len(train)} training rows, {len(held_out)} evaluation rows")
    print(f"test: {len(y_test)} rows; files in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "data")
