"""The origin window (core/scheduling/origin_window.py) for asyncio workers.

dfdaemon fetches a task's missing pieces from the origin with a pool of workers; for a
download others wait for, the window says how many of them may have a range in flight.
"""

from __future__ import annotations

import asyncio

from d7y.core.scheduling.origin_window import OriginWindow


class OriginGate:
    """Admits a worker's next range while fewer than the window's limit are in flight
    (every worker at once without a window)."""

    __slots__ = ("_active", "_room", "window")

    def __init__(self, window: OriginWindow | None) -> None:
        self.window = window
        self._active = 0
        self._room = asyncio.Event()

    @property
    def active(self) -> int:
        """Ranges in flight now."""
        return self._active

    async def enter(self) -> int:
        """Wait for room; returns the range's token for :meth:`landed`."""
        window = self.window
        if window is not None:
            while self._active >= window.limit:
                self._room.clear()
                await self._room.wait()
        self._active += 1
        return window.started() if window is not None else 0

    def landed(self, token: int, length: int, seconds: float) -> None:
        """The range sent under ``token`` landed ``length`` bytes in ``seconds``."""
        if self.window is not None:
            self.window.done(token, length, seconds)

    def leave(self) -> None:
        """The worker's range is over (landed, failed or not needed): admit others."""
        self._active -= 1
        self._room.set()


__all__ = ["OriginGate"]
