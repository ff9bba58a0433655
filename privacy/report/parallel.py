"""Helper processes for a report's independent work: verifying files, accounting owners.

Why: on a 2-core machine the command ``privfl report`` spends most of its time in
three independent pieces of work -- importing the accountants (Opacus imports torch,
about 3 s), checking thousands of Ed25519 signatures, and composing epsilons -- and
the first one cannot be made shorter from here.  So the accounting runs in a helper
forked *before* the accountants are imported (it imports them, then forks helpers of
its own that inherit the import and share the owners), while this process verifies
the files and prepares the renderers (:func:`run_forked`).

The accounting helper is forked as soon as a report is asked for (:class:`Staged`): its
imports need none of the report's input, so they overlap reading the ledgers too.

Forked, never spawned: a spawned helper would import everything again.  Used only
when asked (``build_report(..., workers=N)``; the command asks for one per core):
library callers inside other frameworks keep the default of doing everything in
their own process.  Where ``fork`` is unavailable, everything runs in-process.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Callable


def fork_available() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def default_workers() -> int:
    """One process per core the command may use, at most 4 (the work has two or three independent parts)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


class HelperPool:
    """``helpers`` forked processes (forked at the first submit); none: runs nothing, ``workers == 0``."""

    def __init__(self, helpers: int) -> None:
        self.workers = helpers if helpers > 0 and fork_available() else 0
        self._executor: ProcessPoolExecutor | None = None
        if self.workers:
            self._executor = ProcessPoolExecutor(max_workers=self.workers,
                                                 mp_context=multiprocessing.get_context("fork"))

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        if self._executor is None:
            raise RuntimeError("this pool has no helper processes")
        return self._executor.submit(fn, *args)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> HelperPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Forked:
    """``fn(*args)`` running in a forked child: the arguments are inherited, never pickled; the result is."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        context = multiprocessing.get_context("fork")
        self._receive, send = context.Pipe(duplex=False)
        self._process = context.Process(target=_child, args=(send, fn, args))
        self._process.start()
        send.close()

    def result(self) -> Any:
        return _result_of(self._process, self._receive)



def _result_of(process: Any, receive: Any) -> Any:
    """What a helper sent back (``(ok, value)`` through ``receive``), once it has ended; its failure re-raised."""
    try:
        ok, value = receive.recv()
    except EOFError:
        process.join()
        raise RuntimeError(f"a report helper process died (exit code {process.exitcode})") from None
    finally:
        receive.close()
    process.join()
    if not ok:
        raise RuntimeError(f"a report helper process failed:\n{value}")
    return value

def _child(send, fn: Callable[..., Any], args: tuple) -> None:
    try:
        result = (True, fn(*args))
    except BaseException:  # reported to the parent, which raises
        result = (False, traceback.format_exc())
    send.send(result)
    send.close()


def run_forked(fn: Callable[..., Any], *args: Any) -> Forked:
    return Forked(fn, *args)


class Staged:
    """A helper forked now that runs ``prepare()`` at once, then ``fn(*args)`` with the arguments sent later.

    What it is for: the helper's imports (seconds) need none of the report's input, so they
    start before this process has read the ledgers.  The arguments are pickled through a
    pipe (a few MB for 10,000 entries: tens of milliseconds); the helper receives them in a
    thread while it imports, so :meth:`send` never waits for the import.  :meth:`cancel`
    stops a helper that is not needed after all.
    """

    def __init__(self, prepare: Callable[[], object], fn: Callable[..., Any]) -> None:
        context = multiprocessing.get_context("fork")
        receive_args, self._send_args = context.Pipe(duplex=False)
        self._receive, send_result = context.Pipe(duplex=False)
        self._process = context.Process(target=_staged_child, args=(prepare, fn, receive_args, send_result))
        self._process.start()
        receive_args.close()
        send_result.close()
        self._sent = False

    def send(self, *args: Any) -> Staged:
        self._send_args.send(args)
        self._send_args.close()
        self._sent = True
        return self

    def result(self) -> Any:
        return _result_of(self._process, self._receive)

    def cancel(self) -> None:
        if self._process.is_alive():
            self._process.terminate()
        self._process.join()
        for connection in (self._send_args, self._receive):
            connection.close()


def _staged_child(prepare: Callable[[], object], fn: Callable[..., Any], receive_args, send_result) -> None:
    import threading

    received: list[Any] = []

    def receive() -> None:
        try:
            received.append(receive_args.recv())
        except EOFError:  # cancelled
            pass

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    try:
        prepare()
    except BaseException:  # a failed warm-up import: fn imports (and reports) what it needs itself
        pass
    receiver.join()  # before fn forks helpers of its own: no thread left behind in them
    if not received:
        return
    try:
        result = (True, fn(*received[0]))
    except BaseException:  # reported to the parent, which raises
        result = (False, traceback.format_exc())
    send_result.send(result)
    send_result.close()


def start_staged(prepare: Callable[[], object], fn: Callable[..., Any]) -> Staged:
    return Staged(prepare, fn)


__all__ = ["Forked", "HelperPool", "Staged", "default_workers", "fork_available", "run_forked", "start_staged"]
