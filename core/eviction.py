"""Which stored tasks garbage collection removes (the policy; the daemon does the I/O).

Two rules, as in Dragonfly's peer GC:

* TTL: a task not accessed for ``ttl`` seconds is removed.
* Watermarks: when usage is above the high watermark, the least recently used tasks are
  removed until usage is at or below the low watermark.

A busy task (being downloaded, uploaded or exported) is never chosen, even if that means
usage stays above the watermark.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple


class StoredTask(NamedTuple):
    task_id: str
    size: int  # bytes it occupies
    last_access: float  # seconds, same clock as ``now``


def select_evictions(
    tasks: Iterable[StoredTask],
    *,
    now: float,
    ttl: float,
    used: int,
    capacity: int,
    high_watermark: float,
    low_watermark: float,
    busy: frozenset[str] | set[str] = frozenset(),
) -> list[str]:
    """Task IDs to remove, expired ones first, then least recently used ones.

    ``used`` and ``capacity`` are bytes (the filesystem's, or the quota and what the
    tasks take); eviction by watermark stops as soon as the projected usage is at or
    below ``low_watermark * capacity``.
    """
    if not 0 < low_watermark < high_watermark <= 1:
        raise ValueError(
            f"watermarks must satisfy 0 < low < high <= 1, got low={low_watermark} "
            f"high={high_watermark}"
        )
    candidates = sorted(
        (t for t in tasks if t.task_id not in busy), key=lambda t: (t.last_access, t.task_id)
    )
    chosen: list[str] = []
    for task in candidates:
        if ttl > 0 and now - task.last_access >= ttl:
            chosen.append(task.task_id)
            used -= task.size
    if capacity > 0 and used > high_watermark * capacity:
        target = low_watermark * capacity
        taken = set(chosen)
        for task in candidates:
            if used <= target:
                break
            if task.task_id in taken:
                continue
            chosen.append(task.task_id)
            used -= task.size
    return chosen
