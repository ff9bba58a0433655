"""A synthetic federation for scale runs: any number of owners, as a folder privfl reads (``dataset = "folder"``).

Digits has 1,437 training records: 10,000 owners of it would hold 0.14 records each.
:func:`write_folder` writes ``owners`` files ``owner-00000.npz ...`` of ``records`` rows
each (64 features, 10 classes: a Gaussian blob per class, so a model can learn it) and
a central ``test.npz``, in the format of docs/data.md
(``numpy.savez(path, features=X, label=y)``).  The plain Flower app reads the same
folder (``data-dir``), owner ``i`` being the ``i``-th file in name order, as in privfl.

    python -m bench.synthetic /tmp/fed-10000 --owners 10000 --records 10
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

FEATURES, CLASSES = 64, 10


def write_folder(folder: str | Path, owners: int, records: int, *, seed: int = 0, test_records: int = 1000) -> Path:
    """Write the folder (once: an existing complete folder is reused); returns it."""
    folder = Path(folder)
    done = folder / ".complete"
    if done.exists() and done.read_text() == f"{owners} {records} {seed}":
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, size=(CLASSES, FEATURES)).astype(np.float32)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, CLASSES, size=n)
        features = centres[labels] + rng.normal(0.0, 1.5, size=(n, FEATURES)).astype(np.float32)
        return features.astype(np.float32), labels.astype(np.int64)

    width = max(5, len(str(owners - 1)))
    for i in range(owners):
        x, y = sample(records)
        np.savez(folder / f"owner-{i:0{width}d}.npz", features=x, label=y)
    x, y = sample(test_records)
    np.savez(folder / "test.npz", features=x, label=y)
    done.write_text(f"{owners} {records} {seed}")
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.synthetic", description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--owners", type=int, default=10000)
    p.add_argument("--records", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(write_folder(args.folder, args.owners, args.records, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
