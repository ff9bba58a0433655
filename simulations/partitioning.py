"""Split a centralised data set into synthetic data owners for simulations.

Real federations have natural owners (the four hospitals of the heart-disease
data); benchmark data sets such as digits do not, so simulations carve them up.
Two schemes are provided:

* :func:`iid_partition` -- every owner sees the same label distribution; the
  easy, homogeneous baseline.
* :func:`dirichlet_partition` -- per-class Dirichlet proportions (Hsu, Qi &
  Brown, 2019, "Measuring the Effects of Non-Identical Data Distribution for
  Federated Visual Classification"), the standard way to dial in label skew
  with a single concentration parameter ``alpha``.

``flwr-datasets`` has equivalent partitioners, but they operate on a Hugging
Face ``datasets.Dataset``; these work on plain index arrays so that no extra
dependency is needed.

Both functions return a list with one array per owner holding indices into the
original data set. The arrays are pairwise disjoint, together cover every
index exactly once, are sorted (so an owner's data keeps the original order,
which makes subsets reproducible and easy to compare) and have dtype
``int64``. The result depends only on the arguments: the same ``seed`` always
gives the same partition.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["dirichlet_partition", "iid_partition"]


def _check_int(name: str, value: object, minimum: int) -> int:
    """Return ``value`` as ``int`` or raise a ValueError naming the argument.

    ``bool`` is rejected even though it subclasses ``int``: ``True`` partitions
    is always a bug at the call site.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__}).")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")
    return value


def _check_partition_count(num_partitions: object, num_samples: int) -> int:
    num_partitions = _check_int("num_partitions", num_partitions, 1)
    if num_partitions > num_samples:
        raise ValueError(
            f"num_partitions={num_partitions} exceeds the number of samples "
            f"({num_samples}); every partition needs at least one sample. "
            "Use fewer partitions or a larger data set."
        )
    return num_partitions


def _check_seed(seed: object) -> int:
    return _check_int("seed", seed, 0)


def iid_partition(num_samples: int, num_partitions: int, seed: int) -> list[np.ndarray]:
    """Split ``range(num_samples)`` uniformly at random into near-equal parts.

    The indices are shuffled once and cut into ``num_partitions`` contiguous
    chunks, so partition sizes differ by at most one and every owner's label
    distribution matches the global one in expectation.

    Args:
        num_samples: Size of the data set being split (``>= 1``).
        num_partitions: Number of owners (``1 <= num_partitions <= num_samples``,
            so that nobody ends up empty).
        seed: Seed for the shuffle (non-negative integer).

    Returns:
        ``num_partitions`` sorted ``int64`` index arrays, disjoint and together
        covering ``0 .. num_samples - 1``.

    Raises:
        ValueError: On a non-integer or out-of-range argument.
    """
    num_samples = _check_int("num_samples", num_samples, 1)
    num_partitions = _check_partition_count(num_partitions, num_samples)
    seed = _check_seed(seed)

    rng = np.random.default_rng(seed)
    permutation = rng.permutation(num_samples).astype(np.int64)
    return [np.sort(chunk) for chunk in np.array_split(permutation, num_partitions)]


def dirichlet_partition(
    labels: np.ndarray,
    num_partitions: int,
    alpha: float,
    seed: int,
    min_partition_size: int = 10,
    max_retries: int = 100,
) -> list[np.ndarray]:
    """Split a labelled data set into label-skewed parts (Hsu et al., 2019).

    For every class independently, a vector of owner shares is drawn from a
    symmetric ``Dirichlet(alpha)`` and that class's (shuffled) samples are cut
    in those proportions. A small ``alpha`` (e.g. 0.1) concentrates each class
    on a few owners -- strong label skew, the hard case for federated
    optimisation; a large ``alpha`` (e.g. 100) approaches an IID split.
    Partition *sizes* are not controlled, only their lower bound: when any
    owner gets fewer than ``min_partition_size`` samples the whole draw is
    repeated (this is the usual rejection loop of the reference
    implementations), because an owner with almost no data is useless for
    training and makes per-owner privacy accounting degenerate.

    Args:
        labels: 1-D array with one class label per sample (any values that
            ``np.unique`` can sort: ints, strings, ...).
        num_partitions: Number of owners (``1 <= num_partitions <= len(labels)``).
        alpha: Dirichlet concentration (``> 0``, finite).
        seed: Seed for all random draws (non-negative integer).
        min_partition_size: Smallest acceptable partition (``>= 0``); requires
            ``num_partitions * min_partition_size <= len(labels)``.
        max_retries: How many draws to try before giving up (``>= 1``).

    Returns:
        ``num_partitions`` sorted ``int64`` index arrays into ``labels``,
        disjoint and together covering every index.

    Raises:
        ValueError: On a bad argument, or if no draw within ``max_retries``
            gives every partition ``min_partition_size`` samples.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {labels.shape}.")
    num_samples = labels.shape[0]
    if num_samples == 0:
        raise ValueError("labels is empty; there is nothing to partition.")
    num_partitions = _check_partition_count(num_partitions, num_samples)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise ValueError(f"alpha must be a real number, got {alpha!r}.")
    alpha = float(alpha)
    if not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(
            f"alpha must be a finite number > 0, got {alpha}. Small values (e.g. 0.1) "
            "give strong label skew, large values (e.g. 100) an almost IID split."
        )
    seed = _check_seed(seed)
    min_partition_size = _check_int("min_partition_size", min_partition_size, 0)
    max_retries = _check_int("max_retries", max_retries, 1)
    if num_partitions * min_partition_size > num_samples:
        raise ValueError(
            f"Cannot give each of {num_partitions} partitions at least "
            f"{min_partition_size} samples: there are only {num_samples} samples. "
            "Lower min_partition_size or num_partitions."
        )

    rng = np.random.default_rng(seed)
    _, class_of_sample = np.unique(labels, return_inverse=True)
    class_members = [
        np.flatnonzero(class_of_sample == c) for c in range(int(class_of_sample.max()) + 1)
    ]
    concentration = np.full(num_partitions, alpha)

    smallest = 0
    for _ in range(max_retries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
        for members in class_members:
            shuffled = rng.permutation(members)
            shares = rng.dirichlet(concentration)
            if not np.all(np.isfinite(shares)) or shares.sum() <= 0:
                # Numerically degenerate draw (possible for tiny alpha): give
                # the whole class to one owner, which is the alpha -> 0 limit.
                shares = np.zeros(num_partitions)
                shares[rng.integers(num_partitions)] = 1.0
            cuts = (np.cumsum(shares)[:-1] * len(shuffled)).astype(np.int64)
            for owner, chunk in enumerate(np.split(shuffled, cuts)):
                parts[owner].append(chunk)
        result = [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
        smallest = min(len(p) for p in result)
        if smallest >= min_partition_size:
            return result

    raise ValueError(
        f"dirichlet_partition could not give all {num_partitions} partitions at least "
        f"{min_partition_size} samples in {max_retries} draws (alpha={alpha}, "
        f"{num_samples} samples, {len(class_members)} classes; smallest partition in the "
        f"last draw: {smallest}). Increase alpha, lower min_partition_size or "
        "num_partitions, or raise max_retries."
    )
