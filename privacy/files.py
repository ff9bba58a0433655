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
import tempfile
from pathlib import Path


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
