"""Writing a file that must never be seen half written, nor silently replaced.

Keys, certificates and deployment credentials all go through here: the data lands in
a temporary file in the target's folder with its final mode already set (so a private
key is never readable by others, whatever the umask), is fsynced, and is then linked
into place. Without ``overwrite`` the link is exclusive: a file that appeared in the
meantime (another process, a second ``deploy init``) makes the write fail rather than
be clobbered.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

_DEFERRED_SYNC: ContextVar[bool] = ContextVar("privfl_deferred_sync", default=False)


def sync_each_write() -> bool:
    """Whether a write must reach the disk before it returns (False inside :func:`deferred_sync`)."""
    return not _DEFERRED_SYNC.get()


@contextmanager
def deferred_sync() -> Iterator[None]:
    """Writes inside skip their own fsyncs; one ``os.sync()`` at the end makes them all durable at once.

    For a batch of new files of which nothing is used or released before the batch ends:
    a simulation's enrolment of its owners (policies, keys, empty ledgers, head records;
    about 15 fsyncs an owner, most of a large simulation's time before round 0).  A killed
    process loses nothing (the page cache outlives it); a power loss before the final sync
    can leave some of the new files empty, never an old file changed.  Nothing that
    records a release may be written inside: a charge is durable before its release.
    """
    token = _DEFERRED_SYNC.set(True)
    try:
        yield
    finally:
        _DEFERRED_SYNC.reset(token)
        os.sync()


def write_file_atomically(
    path: str | Path, data: bytes, mode: int, *, overwrite: bool = False, what: str = "it"
) -> Path:
    """Write ``data`` to ``path`` with exactly ``mode``; refuse an existing path unless ``overwrite``.

    ``what`` names the content in the refusal ("a private key"), so the message says
    what would have been lost.
    """
    path = Path(path)
    refusal = f"{path} already exists; refusing to overwrite {what} (move it away first)"
    if not overwrite and (path.exists() or path.is_symlink()):
        raise FileExistsError(refusal)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)  # mkstemp creates 0600; the final mode is set before any byte lands
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if sync_each_write():
                os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic and exclusive: fails if the path appeared meanwhile
            except FileExistsError:
                raise FileExistsError(refusal) from None
            os.unlink(tmp)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def replaceable_by_others(path: str | Path) -> str | None:
    """Why another account could put another file in ``path``'s place (None: it cannot), as ssh's StrictModes asks.

    The file must belong to this account or root (its owner can chmod and rewrite it at will), and
    its folder (the real one, through links) must not be writable by others unless it is sticky
    (/tmp): in such a folder anyone can rename a 0600 file away and put their own in its place, or
    delete a record the node keeps there (a ledger's head record beside its key).
    """
    info = os.stat(path)
    if info.st_uid not in (os.geteuid(), 0):
        return (f"{path} belongs to another account (uid {info.st_uid}), which can rewrite it; "
                f"run  chown {os.geteuid()} {path}")
    folder = Path(os.path.realpath(path)).parent
    mode = os.stat(folder).st_mode
    if stat.S_IMODE(mode) & 0o022 and not mode & stat.S_ISVTX:
        return (f"{path} is in {folder}, a folder others can write (mode {stat.S_IMODE(mode):04o}): they could put "
                f"another file in its place; run  chmod go-w {folder}")
    return None
