"""Tests for privfl.simulations.datasets (offline digits and UCI heart disease)."""

from __future__ import annotations

import hashlib
from importlib import resources

import numpy as np
import pytest
import torch

from privfl.simulations import datasets
from privfl.simulations.datasets import (
    DATASETS,
    HEART_DISEASE_FEATURE_NAMES,
    HEART_DISEASE_HOSPITALS,
    ArrayDataset,
    heart_disease_owner_indices,
    load_dataset,
    load_digits,
    load_heart_disease,
    natural_partitions,
)

# (rows after cleaning, train rows, test rows), FLamby's Fed-Heart-Disease sizes.
HEART_SIZES = {
    "cleveland": (303, 199, 104),
    "hungarian": (261, 172, 89),
    "switzerland": (46, 30, 16),
    "va": (130, 85, 45),
}
# The shipped UCI files, byte for byte (sizes as in UCI's own index).
HEART_FILES = {
    "processed.cleveland.data": (18461, "a74b7efa387bc9d108d7d0115d831fe9b414b29ae7124f331b622b4efa0427c8"),
    "processed.hungarian.data": (10263, "d1ad108f785768cd3d7e82dc522e6f5a61eea93cccfb3a46ee8076f73fc3d796"),
    "processed.switzerland.data": (4109, "834a405ccf5b66ab4056bb77794adc8df0b7125186454c0a1d002d33c6c3b314"),
    "processed.va.data": (6737, "e7c93d8d0d2acdadfa4c5e8de768e2191e7f618b952e29623f1f0d5949ff6b8f"),
}


@pytest.fixture(scope="module")
def heart() -> dict[str, tuple[ArrayDataset, ArrayDataset]]:
    return load_heart_disease()


# ----------------------------------------------------------------------- ArrayDataset


def test_array_dataset_coerces_and_subsets() -> None:
    ds = ArrayDataset(np.arange(12, dtype=np.float64).reshape(6, 2), np.array([0, 1, 2, 0, 1, 2]), 3, "toy")
    assert ds.features.dtype == np.float32
    assert ds.labels.dtype == np.int64
    assert len(ds) == 6
    sub = ds.subset(np.array([4, 1]))
    assert len(sub) == 2 and sub.name == "toy" and sub.num_classes == 3
    np.testing.assert_array_equal(sub.labels, [1, 1])
    np.testing.assert_array_equal(sub.features, [[8, 9], [2, 3]])
    assert len(ds.subset(np.array([], dtype=np.int64))) == 0


def test_array_dataset_to_torch_copies() -> None:
    ds = ArrayDataset(np.ones((3, 2)), np.array([0, 1, 0]), 2, "toy")
    tds = ds.to_torch()
    assert isinstance(tds, torch.utils.data.TensorDataset)
    x, y = tds.tensors
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape == (3, 2) and y.shape == (3,)
    x.zero_()
    assert ds.features.sum() == 6.0, "tensors must not alias the dataset's arrays"


def test_array_dataset_is_frozen() -> None:
    ds = ArrayDataset(np.ones((2, 1)), np.array([0, 1]), 2, "toy")
    with pytest.raises(AttributeError):
        ds.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("features", "labels", "num_classes", "match"),
    [
        (np.ones(3), np.zeros(3, dtype=int), 2, "features must be 2-D"),
        (np.ones((3, 2)), np.zeros((3, 1), dtype=int), 2, "labels must be 1-D"),
        (np.ones((3, 2)), np.zeros(4, dtype=int), 2, "3 rows but labels has 4"),
        (np.ones((3, 2)), np.array([0.0, 1.0, 0.5]), 2, "labels must be integers"),
        (np.ones((3, 2)), np.array([0, 1, 2]), 2, r"labels must lie in \[0, 2\)"),
        (np.ones((3, 2)), np.array([0, 1, 0]), 0, "num_classes must be >= 1"),
    ],
)
def test_array_dataset_validation(features, labels, num_classes, match) -> None:
    with pytest.raises(ValueError, match=match):
        ArrayDataset(features, labels, num_classes, "bad")


def test_subset_rejects_bad_indices() -> None:
    ds = ArrayDataset(np.ones((3, 2)), np.array([0, 1, 0]), 2, "toy")
    with pytest.raises(ValueError, match="out of range"):
        ds.subset(np.array([3]))
    with pytest.raises(ValueError, match="np.flatnonzero"):
        ds.subset(np.array([True, False, True]))


# ----------------------------------------------------------------------------- digits


def test_digits_shapes_ranges_and_stratification() -> None:
    train, test = load_digits()
    assert len(train) + len(test) == 1797
    assert len(test) == 360  # ceil(0.2 * 1797)
    for ds in (train, test):
        assert ds.features.shape[1] == 64
        assert ds.features.dtype == np.float32 and ds.labels.dtype == np.int64
        assert ds.features.min() >= -1.0 and ds.features.max() <= 1.0
        assert ds.num_classes == 10
    # Centred on the training split's mean image (public preprocessing): the
    # training features average to zero per pixel, the test set is shifted by
    # the same mean, not its own.
    np.testing.assert_allclose(train.features.mean(axis=0), 0.0, atol=1e-5)
    assert np.abs(test.features.mean(axis=0)).max() > 1e-3
    # Stratified: every class has the same share of train and test (up to rounding).
    train_counts = np.bincount(train.labels, minlength=10)
    test_counts = np.bincount(test.labels, minlength=10)
    total = train_counts + test_counts
    assert np.all(np.abs(test_counts - 0.2 * total) <= 1)


def test_digits_seed_is_the_split_seed() -> None:
    a, _ = load_digits(seed=0)
    b, _ = load_digits(seed=0)
    c, _ = load_digits(seed=1)
    np.testing.assert_array_equal(a.features, b.features)
    assert not np.array_equal(a.features, c.features)
    train, test = load_dataset("digits", seed=1)
    np.testing.assert_array_equal(train.features, c.features)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_digits_bad_test_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=fraction)


# ---------------------------------------------------------------------- heart disease


def test_heart_files_shipped_unmodified() -> None:
    folder = resources.files("privfl.simulations").joinpath("data").joinpath("heart_disease")
    for name, (size, sha256) in HEART_FILES.items():
        blob = folder.joinpath(name).read_bytes()
        assert len(blob) == size, name
        assert hashlib.sha256(blob).hexdigest() == sha256, name
    assert "CC BY 4.0" in folder.joinpath("README.md").read_text(encoding="utf-8")


def test_heart_flamby_sizes(heart) -> None:
    assert tuple(heart) == HEART_DISEASE_HOSPITALS == ("cleveland", "hungarian", "switzerland", "va")
    for hospital, (rows, n_train, n_test) in HEART_SIZES.items():
        train, test = heart[hospital]
        assert (len(train), len(test)) == (n_train, n_test), hospital
        assert len(train) + len(test) == rows
        for ds in (train, test):
            assert ds.features.shape[1] == len(HEART_DISEASE_FEATURE_NAMES) == 13
            assert ds.features.dtype == np.float32 and ds.labels.dtype == np.int64
            assert ds.num_classes == 2
            assert set(np.unique(ds.labels)) <= {0, 1}
            assert np.all(np.isfinite(ds.features))


def test_heart_split_is_stratified_where_flamby_stratifies(heart) -> None:
    for hospital in ("cleveland", "hungarian", "va"):
        train, test = heart[hospital]
        assert abs(train.labels.mean() - test.labels.mean()) < 0.02, hospital
    # Switzerland is nearly all positive (the reason FLamby cannot stratify it).
    train, test = heart["switzerland"]
    assert np.concatenate([train.labels, test.labels]).mean() > 0.9


def test_heart_standardised_with_pooled_train_statistics(heart) -> None:
    pooled_train = np.concatenate([heart[h][0].features for h in HEART_DISEASE_HOSPITALS])
    np.testing.assert_allclose(pooled_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(pooled_train.std(axis=0, ddof=1), 1.0, atol=1e-5)
    # Test rows are transformed with the same statistics, so they are only roughly standard.
    pooled_test = np.concatenate([heart[h][1].features for h in HEART_DISEASE_HOSPITALS])
    assert np.all(np.abs(pooled_test.mean(axis=0)) < 0.5)


def test_heart_is_deterministic(heart) -> None:
    again = load_heart_disease()
    for hospital in HEART_DISEASE_HOSPITALS:
        for a, b in zip(heart[hospital], again[hospital]):
            np.testing.assert_array_equal(a.features, b.features)
            np.testing.assert_array_equal(a.labels, b.labels)


def test_heart_pooled_and_owner_indices(heart) -> None:
    train, test = load_dataset("heart-disease", seed=123)
    assert (len(train), len(test)) == (486, 254)
    owners = heart_disease_owner_indices()
    assert list(owners) == list(HEART_DISEASE_HOSPITALS) == natural_partitions("heart-disease")
    start = 0
    for hospital, idx in owners.items():
        assert idx.dtype == np.int64
        np.testing.assert_array_equal(idx, np.arange(start, start + HEART_SIZES[hospital][1]))
        start += len(idx)
        own = train.subset(idx)
        np.testing.assert_array_equal(own.features, heart[hospital][0].features)
        np.testing.assert_array_equal(own.labels, heart[hospital][0].labels)
    assert start == len(train)
    np.testing.assert_array_equal(
        test.labels, np.concatenate([heart[h][1].labels for h in HEART_DISEASE_HOSPITALS])
    )


# ---------------------------------------------------------------------------- registry


def test_registry_names() -> None:
    assert set(DATASETS) == {"digits", "heart-disease"}
    assert natural_partitions("digits") is None


@pytest.mark.parametrize("call", [lambda: load_dataset("mnist", 0), lambda: natural_partitions("mnist")])
def test_unknown_dataset_lists_valid_names(call) -> None:
    with pytest.raises(ValueError, match=r"Unknown dataset 'mnist'.*'digits'.*'heart-disease'"):
        call()


def test_module_exports() -> None:
    for name in datasets.__all__:
        assert hasattr(datasets, name)
