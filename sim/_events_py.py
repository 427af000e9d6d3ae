"""The simulator's own event queue: a heap of (time, priority, id, event) entries.

The events the simulator schedules for itself (:class:`d7y.sim._swarm_py._Call`, nearly
every event of a run) wait here instead of in SimPy's queue, and the run's event loop
takes whichever queue's first entry is earlier (``Simulation._run_inline``). The ids
come from SimPy's own counter, so the two queues together give the very order SimPy's
one queue gave: by time, then priority, then the order of scheduling.

This module is the twin of the compiled :mod:`d7y.sim._events` (the same API, the same
order; tests/test_sim_events_twins.py); it is what SimPy's queue does, on a heapq list
of tuples. The compiled one keeps the entries in a C array, with no tuple, float or int
object per entry and no Python comparison per sift step.
"""

from __future__ import annotations

import math
from heapq import heappop, heappush
from typing import Any

__all__ = ["EventHeap"]


class EventHeap:
    """Entries ``(time, priority, eid, item)`` ordered by (time, priority, eid); ``eid``
    must be unique (SimPy's event counter), so no two keys are equal."""

    __slots__ = ("_heap",)

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, Any]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, time: float, priority: int, eid: int, item: Any) -> None:
        heappush(self._heap, (time, priority, eid, item))

    def pop(self) -> Any:
        """The first entry's item, removed; IndexError if empty."""
        if not self._heap:
            raise IndexError("pop from an empty EventHeap")
        return heappop(self._heap)[3]

    def first_time(self) -> float:
        """The first entry's time (inf if empty)."""
        return self._heap[0][0] if self._heap else math.inf

    def before(self, entry: tuple) -> bool:
        """Whether the first entry comes before ``entry``, a SimPy queue entry
        ``(time, priority, eid, event)``; False if empty."""
        if not self._heap:
            return False
        first = self._heap[0]
        return (first[0], first[1], first[2]) < (entry[0], entry[1], entry[2])
