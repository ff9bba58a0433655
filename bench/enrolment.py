"""Enrolling simulated owners: per-file fsyncs against one sync at the end (privacy.files.deferred_sync).

    python -m bench.enrolment --owners 100 --repeats 2

Enrolment writes each owner's policy, keys, empty ledger and head record (about 15 fsyncs an
owner); the ServerApp does it inside ``deferred_sync`` (one ``os.sync()`` when it ends).  The
two ways are interleaved so that both see the same load; the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

from privfl.config import ExperimentConfig
from privfl.privacy.files import deferred_sync
from privfl.server.run_dir import Layout
from privfl.simulations.owners import enroll_simulated_owners


def enrol_seconds(owners: int, deferred: bool, where: Path) -> float:
    with tempfile.TemporaryDirectory(dir=where) as folder:
        layout = Layout(Path(folder) / "run", Path(folder) / "fed", Path(folder) / "fed" / "coordinator")
        start = time.perf_counter()
        with deferred_sync() if deferred else contextlib.nullcontext():
            enroll_simulated_owners(ExperimentConfig(), layout, [f"owner-{i}" for i in range(owners)])
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--owners", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=Path.cwd(), help="where to write (a real disk, not tmpfs)")
    args = parser.parse_args()
    print(f"{'way':<22} {'owners':>6} {'seconds':>8} {'load':>5}")
    for _ in range(args.repeats):
        for deferred in (False, True):
            seconds = enrol_seconds(args.owners, deferred, args.dir)
            way = "one sync at the end" if deferred else "fsync per file"
            print(f"{way:<22} {args.owners:>6} {seconds:>8.2f} {os.getloadavg()[0]:>5.1f}")


if __name__ == "__main__":
    main()
