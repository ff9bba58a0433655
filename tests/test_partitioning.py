"""Tests for privfl.simulations.partitioning (IID and Dirichlet label-skew splits)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privfl.simulations.partitioning import dirichlet_partition, iid_partition


def assert_valid_partition(parts: list[np.ndarray], num_samples: int, num_partitions: int) -> None:
    """Disjoint, complete, sorted, int64, one array per partition."""
    assert len(parts) == num_partitions
    for part in parts:
        assert isinstance(part, np.ndarray)
        assert part.dtype == np.int64
        assert part.ndim == 1
        assert np.all(np.diff(part) > 0), "each partition is sorted and duplicate-free"
    everything = np.concatenate(parts)
    assert len(everything) == num_samples, "disjoint: no index appears twice"
    np.testing.assert_array_equal(np.sort(everything), np.arange(num_samples))


def assert_same(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def label_skew(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each partition's label mix and the global one."""
    num_classes = int(labels.max()) + 1
    global_dist = np.bincount(labels, minlength=num_classes) / len(labels)
    distances = [
        0.5 * np.abs(np.bincount(labels[p], minlength=num_classes) / len(p) - global_dist).sum()
        for p in parts
        if len(p)
    ]
    return float(np.mean(distances))


# ----------------------------------------------------------------------------- IID


@settings(max_examples=100, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_iid_valid_deterministic_and_balanced(data: st.DataObject, seed: int) -> None:
    n = data.draw(st.integers(1, 2000), label="num_samples")
    k = data.draw(st.integers(1, min(n, 64)), label="num_partitions")
    parts = iid_partition(n, k, seed)
    assert_valid_partition(parts, n, k)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert_same(parts, iid_partition(n, k, seed))


def test_iid_seed_changes_assignment() -> None:
    a = iid_partition(1000, 4, seed=0)
    b = iid_partition(1000, 4, seed=1)
    assert any(not np.array_equal(x, y) for x, y in zip(a, b))


def test_iid_one_partition_is_everything() -> None:
    (only,) = iid_partition(17, 1, seed=3)
    np.testing.assert_array_equal(only, np.arange(17))


@pytest.mark.parametrize(
    ("num_samples", "num_partitions", "seed", "match"),
    [
        (10, 0, 0, "num_partitions must be >= 1"),
        (10, -2, 0, "num_partitions must be >= 1"),
        (10, 11, 0, "exceeds the number of samples"),
        (0, 1, 0, "num_samples must be >= 1"),
        (10, 2.5, 0, "num_partitions must be an integer"),
        (10, True, 0, "num_partitions must be an integer"),
        (10, 2, -1, "seed must be >= 0"),
    ],
)
def test_iid_bad_arguments(num_samples, num_partitions, seed, match) -> None:
    with pytest.raises(ValueError, match=match):
        iid_partition(num_samples, num_partitions, seed)


# ------------------------------------------------------------------------ Dirichlet


@settings(max_examples=100, deadline=None)
@given(
    data=st.data(),
    alpha=st.sampled_from([0.01, 0.1, 0.5, 1.0, 10.0, 1000.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_dirichlet_valid_and_deterministic(data: st.DataObject, alpha: float, seed: int) -> None:
    n = data.draw(st.integers(1, 500), label="num_samples")
    num_classes = data.draw(st.integers(1, 12), label="num_classes")
    labels = np.asarray(
        data.draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n), label="labels")
    )
    k = data.draw(st.integers(1, min(n, 20)), label="num_partitions")
    parts = dirichlet_partition(labels, k, alpha, seed, min_partition_size=0)
    assert_valid_partition(parts, n, k)
    assert_same(parts, dirichlet_partition(labels, k, alpha, seed, min_partition_size=0))


def test_dirichlet_accepts_non_integer_labels() -> None:
    labels = np.array(["cat", "dog", "bird"] * 40)
    parts = dirichlet_partition(labels, 3, 1.0, seed=0, min_partition_size=5)
    assert_valid_partition(parts, len(labels), 3)


@pytest.mark.parametrize("seed", range(4))
def test_dirichlet_small_alpha_skews_labels_more(seed: int) -> None:
    labels = np.repeat(np.arange(10), 100)
    skewed = label_skew(labels, dirichlet_partition(labels, 10, 0.1, seed))
    near_iid = label_skew(labels, dirichlet_partition(labels, 10, 100.0, seed))
    # Typical values: ~0.6-0.7 for alpha=0.1, ~0.04 for alpha=100.
    assert skewed > 0.4
    assert near_iid < 0.15
    assert skewed > near_iid + 0.3


@pytest.mark.parametrize("seed", range(5))
def test_dirichlet_min_partition_size_respected(seed: int) -> None:
    labels = np.repeat(np.arange(10), 60)
    parts = dirichlet_partition(labels, 8, 0.3, seed, min_partition_size=25)
    assert_valid_partition(parts, len(labels), 8)
    assert min(len(p) for p in parts) >= 25


def test_dirichlet_gives_up_with_actionable_message() -> None:
    labels = np.repeat(np.arange(10), 20)
    with pytest.raises(ValueError, match=r"could not give all 40 partitions.*Increase alpha"):
        dirichlet_partition(labels, 40, 0.01, seed=0, min_partition_size=5, max_retries=3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_partitions": 0}, "num_partitions must be >= 1"),
        ({"num_partitions": 101}, "exceeds the number of samples"),
        ({"alpha": 0.0}, "alpha must be a finite number > 0"),
        ({"alpha": -1.0}, "alpha must be a finite number > 0"),
        ({"alpha": float("nan")}, "alpha must be a finite number > 0"),
        ({"alpha": float("inf")}, "alpha must be a finite number > 0"),
        ({"alpha": "1"}, "alpha must be a real number"),
        ({"min_partition_size": -1}, "min_partition_size must be >= 0"),
        ({"min_partition_size": 30}, "Cannot give each of 4 partitions at least 30"),
        ({"max_retries": 0}, "max_retries must be >= 1"),
        ({"seed": -5}, "seed must be >= 0"),
        ({"labels": np.zeros((10, 10), dtype=int)}, "labels must be a 1-D array"),
        ({"labels": np.array([], dtype=int)}, "labels is empty"),
    ],
)
def test_dirichlet_bad_arguments(kwargs: dict, match: str) -> None:
    arguments = {
        "labels": np.repeat(np.arange(4), 25),
        "num_partitions": 4,
        "alpha": 1.0,
        "seed": 0,
        "min_partition_size": 1,
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        dirichlet_partition(**arguments)
