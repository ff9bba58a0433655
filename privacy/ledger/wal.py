"""Is a ledger's ``-wal`` file whole?  SQLite will not say.

In WAL mode the newest committed transactions live in ``<ledger>.db-wal`` until a
checkpoint copies them into the main file.  When SQLite opens a WAL it replays frames
only while their checksums hold and silently ignores the rest: one flipped byte in a
frame drops that transaction and every one after it, and the ledger then reads as a
shorter, perfectly valid chain.  So privfl checks the WAL itself, following SQLite's
documented format (https://www.sqlite.org/fileformat.html#the_write_ahead_log):

- a 32-byte header: magic 0x377f0682 (little-endian checksums) or 0x377f0683
  (big-endian), version 3007000, page size, checkpoint sequence, two salts, and a
  checksum of the first 24 bytes;
- frames of a 24-byte header (page number, commit size, the two salts, a cumulative
  checksum) followed by one page.

Frames whose salts differ from the header's are left over from an earlier WAL
generation and ignored by SQLite by design; a frame with the current salts whose
checksum fails is damage.  privfl closes every ledger with a checkpoint, so a ledger
at rest has no WAL at all.
"""

from __future__ import annotations

import struct
from pathlib import Path

MAGIC_LE, MAGIC_BE = 0x377F0682, 0x377F0683
HEADER, FRAME_HEADER = 32, 24


def wal_path(db_path: str | Path) -> Path:
    return Path(f"{db_path}-wal")


def wal_problem(db_path: str | Path) -> str | None:
    """What is wrong with the ledger's -wal file (None: no WAL, or a whole one)."""
    path = wal_path(db_path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"its -wal file cannot be read ({err})"
    if not data:
        return None
    if len(data) < HEADER:
        return f"its -wal file is damaged: {len(data)} bytes, shorter than a WAL header"
    magic, version, page_size, _, salt1, salt2, check1, check2 = struct.unpack(">8I", data[:HEADER])
    if magic not in (MAGIC_LE, MAGIC_BE):
        return "its -wal file is damaged: the header's magic number is wrong"
    big_endian = magic == MAGIC_BE
    if _checksum(data[:24], big_endian, (0, 0)) != (check1, check2):
        return "its -wal file is damaged: the header's checksum does not match"
    if page_size < 512 or page_size & (page_size - 1):
        page_size = 65536 if page_size == 1 else page_size
    frame_size = FRAME_HEADER + page_size
    running = (check1, check2)
    offset, frame, committed = HEADER, 0, 0
    while offset + frame_size <= len(data):
        header = data[offset:offset + FRAME_HEADER]
        _, commit, frame_salt1, frame_salt2, sum1, sum2 = struct.unpack(">6I", header)
        if (frame_salt1, frame_salt2) != (salt1, salt2):
            break  # a frame of an earlier WAL generation: SQLite stops here by design
        running = _checksum(header[:8] + data[offset + FRAME_HEADER:offset + frame_size], big_endian, running)
        frame += 1
        if running != (sum1, sum2):
            return (f"its -wal file is damaged at frame {frame}: SQLite ignores that frame and every later one, "
                    f"so transactions committed after frame {committed} are missing from what it reads")
        if commit:
            committed = frame
        offset += frame_size
    return None


def _checksum(data: bytes, big_endian: bool, start: tuple[int, int]) -> tuple[int, int]:
    """SQLite's WAL checksum: Fibonacci-weighted sums of 32-bit words, two at a time."""
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    s0, s1 = start
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1
