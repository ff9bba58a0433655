"""Data sets that work offline, as plain arrays.

Two data sets ship with privfl so that simulations and tests never download:

* ``"digits"`` -- scikit-learn's bundled handwritten digits (1,797 8x8 images,
  10 classes). It has no natural owners; split it with
  :mod:`privfl.simulations.partitioning`.
* ``"heart-disease"`` -- the UCI Heart Disease data from four hospitals
  (Cleveland, Hungary, Switzerland, VA Long Beach), preprocessed as FLamby's
  Fed-Heart-Disease benchmark. Its owners are the hospitals themselves, which
  makes it the realistic cross-silo case, including a tiny owner (Switzerland,
  30 training rows) that is the hard case for per-owner privacy accounting.

Everything is returned as :class:`ArrayDataset` (float32 features, int64
labels) so that the same code can feed PyTorch, Opacus or scikit-learn.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import TensorDataset

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = [
    "DATASETS",
    "HEART_DISEASE_FEATURE_NAMES",
    "HEART_DISEASE_HOSPITALS",
    "ArrayDataset",
    "heart_disease_owner_indices",
    "load_dataset",
    "load_digits",
    "load_heart_disease",
    "natural_partitions",
]


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """A labelled classification data set held in memory.

    ``eq=False`` keeps identity comparison and hashing: the generated
    field-wise ``__eq__`` would compare NumPy arrays element-wise, which has no
    single truth value.

    Attributes:
        features: ``float32`` array of shape ``(n, d)``.
        labels: ``int64`` array of shape ``(n,)`` with values in
            ``[0, num_classes)``.
        num_classes: Number of classes of the task (not necessarily all present
            in a small subset).
        name: Human-readable name, used in logs and reports.
    """

    features: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str

    def __post_init__(self) -> None:
        # Coerce dtypes here (a no-op copy-free view when they already match) so
        # that every consumer can rely on float32 / int64 without checking.
        features = np.ascontiguousarray(self.features, dtype=np.float32)
        labels = np.ascontiguousarray(self.labels)
        if features.ndim != 2:
            raise ValueError(f"features must be 2-D (n, d), got shape {features.shape}.")
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D (n,), got shape {labels.shape}.")
        if labels.shape[0] != features.shape[0]:
            raise ValueError(
                f"features has {features.shape[0]} rows but labels has {labels.shape[0]}."
            )
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integers, got dtype {labels.dtype}.")
        labels = labels.astype(np.int64, copy=False)
        if isinstance(self.num_classes, bool) or int(self.num_classes) != self.num_classes:
            raise ValueError(f"num_classes must be an integer, got {self.num_classes!r}.")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}.")
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}), got range "
                f"[{labels.min()}, {labels.max()}]."
            )
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "num_classes", int(self.num_classes))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_features(self) -> int:
        """Width ``d`` of the feature matrix."""
        return int(self.features.shape[1])

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        """Return the rows at ``indices`` (e.g. one partition) as a new data set.

        The name and ``num_classes`` are kept: an owner's share of digits is
        still a 10-class task even if some digits are missing from it.
        """
        indices = np.asarray(indices)
        if indices.ndim != 1:
            raise ValueError(f"indices must be 1-D, got shape {indices.shape}.")
        if indices.size and not np.issubdtype(indices.dtype, np.integer):
            raise ValueError(
                f"indices must be integers, got dtype {indices.dtype}; "
                "convert a boolean mask with np.flatnonzero first."
            )
        indices = indices.astype(np.int64, copy=False)
        if indices.size and (indices.min() < -len(self) or indices.max() >= len(self)):
            raise ValueError(f"indices out of range for a data set of {len(self)} rows.")
        return ArrayDataset(
            features=self.features[indices],
            labels=self.labels[indices],
            num_classes=self.num_classes,
            name=self.name,
        )

    def to_torch(self) -> TensorDataset:
        """Wrap copies of the arrays in a ``TensorDataset`` (float32 x, int64 y).

        Copies, so that in-place updates on the tensors never leak back into
        this (frozen) data set or into other owners' subsets.
        """
        return TensorDataset(
            torch.from_numpy(self.features.copy()),
            torch.from_numpy(self.labels.copy()),
        )


# --------------------------------------------------------------------------- digits


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """Load scikit-learn's bundled handwritten digits as ``(train, test)``.

    1,797 grey-scale 8x8 images with pixel values 0..16, flattened to 64
    features, divided by 16 and centred on the training split's mean image (so
    they lie in ``[-1, 1]``). The split is stratified (each class keeps its share
    in train and test) so that a small test set still measures every digit;
    ``seed`` is the ``random_state`` of ``train_test_split``.

    Centring matters under DP: with raw pixels most of every record's clipped
    gradient goes on the average image, which says nothing about the class
    (measured: +0.11 test accuracy at epsilon 1). The mean image is treated as
    public preprocessing, like the heart-disease standardisation.
    """
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be strictly between 0 and 1, got {test_fraction}.")
    from sklearn import datasets as sk_datasets  # imported on use: a node process that serves one message pays
    from sklearn.model_selection import train_test_split  # for it only when it needs the bundled data

    bunch = sk_datasets.load_digits()
    x = (np.asarray(bunch.data, dtype=np.float64) / 16.0).astype(np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed
    )
    mean = x_train.mean(axis=0)
    x_train, x_test = x_train - mean, x_test - mean
    return (
        ArrayDataset(x_train, y_train, num_classes=10, name="digits/train"),
        ArrayDataset(x_test, y_test, num_classes=10, name="digits/test"),
    )


# --------------------------------------------------------------------- heart disease

HEART_DISEASE_HOSPITALS: tuple[str, ...] = ("cleveland", "hungarian", "switzerland", "va")
"""The four owners of the heart-disease data, in their canonical (FLamby) order."""

# Columns of the UCI "processed" files (14 attributes, in file order).
_HEART_COLUMNS = (
    "age", "sex", "cp", "trestbps", "chol", "fbs", "restecg",
    "thalach", "exang", "oldpeak", "slope", "ca", "thal", "num",
)
# FLamby drops these three: they are missing for most Hungarian, Swiss and VA
# patients, and keeping them would leave almost no rows outside Cleveland.
_HEART_DROPPED = ("slope", "ca", "thal")
_HEART_NUMERIC = ("age", "sex", "trestbps", "chol", "fbs", "thalach", "exang", "oldpeak")
# Categorical columns one-hot encoded with the first level dropped, as FLamby's
# ``pd.get_dummies(columns=[cp, restecg], drop_first=True)``. Levels are fixed
# here instead of inferred, so the width never depends on which rows are read.
_HEART_CATEGORICAL = {"cp": (1, 2, 3, 4), "restecg": (0, 1, 2)}

HEART_DISEASE_FEATURE_NAMES: tuple[str, ...] = _HEART_NUMERIC + tuple(
    f"{column}_{level}"
    for column, levels in _HEART_CATEGORICAL.items()
    for level in levels[1:]
)
"""The 13 model inputs, in column order (FLamby's Fed-Heart-Disease also has 13)."""

_HEART_TRAIN_FRACTION = 0.66  # FLamby's split
_HEART_SPLIT_SEED = 43  # FLamby's split


def _heart_data_dir() -> Traversable:
    """Folder with the shipped UCI files, valid for editable and regular installs."""
    if __package__:
        return resources.files(__package__).joinpath("data").joinpath("heart_disease")
    return Path(__file__).resolve().parent / "data" / "heart_disease"  # loaded by path


def _read_hospital(hospital: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse one ``processed.<hospital>.data`` file into features and labels.

    Mirrors FLamby: drop slope/ca/thal, then every row with a ``?`` left,
    one-hot encode cp and restecg, and binarise the diagnosis ``num`` (0 = no
    disease, 1-4 = disease) as ``num > 0``. Rows keep their file order.
    """
    text = _heart_data_dir().joinpath(f"processed.{hospital}.data").read_text(encoding="ascii")
    kept = [i for i, c in enumerate(_HEART_COLUMNS) if c not in _HEART_DROPPED]
    rows = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.strip().split(",")
        if len(fields) != len(_HEART_COLUMNS):
            raise ValueError(
                f"processed.{hospital}.data line {line_number}: expected "
                f"{len(_HEART_COLUMNS)} fields, got {len(fields)}."
            )
        values = [fields[i].strip() for i in kept]
        if "?" in values:
            continue
        rows.append([float(v) for v in values])
    table = np.asarray(rows, dtype=np.float64)
    column = {_HEART_COLUMNS[i]: table[:, j] for j, i in enumerate(kept)}

    parts = [column[name] for name in _HEART_NUMERIC]
    for name, levels in _HEART_CATEGORICAL.items():
        unknown = set(np.unique(column[name])) - set(levels)
        if unknown:
            raise ValueError(f"processed.{hospital}.data: unexpected {name} values {sorted(unknown)}.")
        parts.extend((column[name] == level).astype(np.float64) for level in levels[1:])
    features = np.stack(parts, axis=1)
    labels = (column["num"] > 0).astype(np.int64)
    return features, labels


def _split_hospital(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FLamby's per-hospital split: sorted (train, test) row indices.

    ``train_test_split(train_size=0.66, random_state=43)``, stratified on the
    binary label only when both classes have more than 2 rows (Switzerland has
    almost no negatives, so its split is plain random). Indices are sorted so
    each part keeps the file order, as FLamby's train/test flags do.
    """
    from sklearn.model_selection import train_test_split

    levels, counts = np.unique(labels, return_counts=True)
    stratify = labels if len(levels) > 1 and bool(np.all(counts > 2)) else None
    train, test = train_test_split(
        np.arange(len(labels)),
        train_size=_HEART_TRAIN_FRACTION,
        test_size=1.0 - _HEART_TRAIN_FRACTION,
        random_state=_HEART_SPLIT_SEED,
        shuffle=True,
        stratify=stratify,
    )
    return np.sort(train), np.sort(test)


def load_heart_disease() -> dict[str, tuple[ArrayDataset, ArrayDataset]]:
    """Load the four hospitals of UCI Heart Disease as ``{hospital: (train, test)}``.

    Preprocessing reproduces FLamby's Fed-Heart-Disease: drop columns slope,
    ca and thal, then rows with a missing value, leaving 303 / 261 / 46 / 130
    rows (Cleveland / Hungarian / Switzerland / VA); label ``num > 0``;
    one-hot cp and restecg (13 features, :data:`HEART_DISEASE_FEATURE_NAMES`);
    per-hospital split with ``train_test_split(train_size=0.66,
    random_state=43)``, giving train/test sizes 199/104, 172/89, 30/16, 85/45.
    The split is fixed (not seeded) so results stay comparable with FLamby.

    Standardisation: every feature is centred and scaled with the mean and
    standard deviation (``ddof=1``) of the *pooled training rows of all four
    hospitals*; test rows never contribute. This is FLamby's ``pooled``
    normalisation. FLamby's federated mode instead scales each hospital by its
    own statistics; we use one shared transform so that a single global model
    sees all owners' inputs on the same scale and the pooled and federated
    experiments are fed identical inputs. (In a real deployment these
    statistics would themselves have to be computed privately; in the
    simulation they are treated as public preprocessing.)

    Data caveat, documented rather than fixed: a cholesterol (``chol``) of 0
    means "not measured" -- it is 0 for every Swiss patient and some
    Hungarian/VA ones. FLamby keeps the zeros, and so do we (no imputation).
    """
    raw = {h: _read_hospital(h) for h in HEART_DISEASE_HOSPITALS}
    splits = {h: _split_hospital(labels) for h, (_, labels) in raw.items()}

    pooled_train = np.concatenate([raw[h][0][splits[h][0]] for h in HEART_DISEASE_HOSPITALS])
    mean = pooled_train.mean(axis=0)
    std = pooled_train.std(axis=0, ddof=1)
    std = np.where(std > 0, std, 1.0)  # a constant column would otherwise divide by 0

    result: dict[str, tuple[ArrayDataset, ArrayDataset]] = {}
    for hospital in HEART_DISEASE_HOSPITALS:
        features, labels = raw[hospital]
        scaled = (features - mean) / std
        train_idx, test_idx = splits[hospital]
        result[hospital] = (
            ArrayDataset(scaled[train_idx], labels[train_idx], 2, f"heart-disease/{hospital}/train"),
            ArrayDataset(scaled[test_idx], labels[test_idx], 2, f"heart-disease/{hospital}/test"),
        )
    return result


def _concat(parts: list[ArrayDataset], name: str) -> ArrayDataset:
    return ArrayDataset(
        features=np.concatenate([p.features for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
        num_classes=parts[0].num_classes,
        name=name,
    )


def _load_heart_disease_pooled(seed: int) -> tuple[ArrayDataset, ArrayDataset]:
    """Pooled (train, test), concatenated in :data:`HEART_DISEASE_HOSPITALS` order.

    ``seed`` is accepted for a uniform registry signature but ignored: the
    split is FLamby's fixed one.
    """
    del seed
    per_hospital = load_heart_disease()
    return (
        _concat([per_hospital[h][0] for h in HEART_DISEASE_HOSPITALS], "heart-disease/train"),
        _concat([per_hospital[h][1] for h in HEART_DISEASE_HOSPITALS], "heart-disease/test"),
    )


def heart_disease_owner_indices() -> dict[str, np.ndarray]:
    """Each hospital's rows in the pooled training set of ``load_dataset("heart-disease")``.

    The pooled set concatenates the hospitals in :data:`HEART_DISEASE_HOSPITALS`
    order, so each hospital owns one contiguous block: ``int64`` index arrays
    ``0..198``, ``199..370``, ``371..400`` and ``401..485``.
    """
    result: dict[str, np.ndarray] = {}
    start = 0
    for hospital, (train, _) in load_heart_disease().items():
        result[hospital] = np.arange(start, start + len(train), dtype=np.int64)
        start += len(train)
    return result


# -------------------------------------------------------------------------- registry

DATASETS: Mapping[str, Callable[[int], tuple[ArrayDataset, ArrayDataset]]] = MappingProxyType(
    {
        "digits": lambda seed: load_digits(seed=seed),
        "heart-disease": _load_heart_disease_pooled,
    }
)
"""Name -> loader taking a seed and returning ``(train, test)``."""

_NATURAL_PARTITIONS: Mapping[str, tuple[str, ...] | None] = MappingProxyType(
    {"digits": None, "heart-disease": HEART_DISEASE_HOSPITALS}
)


def _check_name(name: str) -> str:
    if name not in DATASETS:
        valid = ", ".join(repr(n) for n in DATASETS)
        raise ValueError(f"Unknown dataset {name!r}; valid names are {valid}.")
    return name


def load_dataset(name: str, seed: int) -> tuple[ArrayDataset, ArrayDataset]:
    """Load a registered data set as ``(train, test)``.

    ``"digits"``: stratified 80/20 split with ``random_state=seed``.
    ``"heart-disease"``: the four hospitals' train (resp. test) sets pooled in
    :data:`HEART_DISEASE_HOSPITALS` order; ``seed`` is ignored because the split
    is FLamby's fixed one.
    """
    return DATASETS[_check_name(name)](seed)


def natural_partitions(name: str) -> list[str] | None:
    """Names of a data set's real owners, or ``None`` if it has none.

    ``"heart-disease"`` -> the hospitals (their rows in the pooled training set
    come from :func:`heart_disease_owner_indices`); ``"digits"`` -> ``None``
    (use :mod:`privfl.simulations.partitioning` to create owners).
    """
    owners = _NATURAL_PARTITIONS[_check_name(name)]
    return None if owners is None else list(owners)

