"""The process tree on Linux (/proc): what a Flower simulation started, to stop or measure it.

Ray starts its daemons in sessions of their own, so killing a SuperLink's process
group does not reach them; walking the tree of parent ids does.
"""

from __future__ import annotations

from pathlib import Path


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (empty where there is no /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text``."""
    return [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/cmdline") if text in command_line(int(p.parent.name))]
