"""Rate limiting for piece transfers: an asyncio token bucket.

Tokens are bytes. A transfer of ``n`` bytes first takes ``n`` tokens, waiting until the
bucket has refilled enough. The bucket holds at most ``burst`` tokens (at least one
second's worth and at least one piece), so an idle daemon may send one burst at full
speed and is then held to ``rate`` on average. A rate of 0 means unlimited: ``take``
returns at once, with no lock and no clock read on the hot path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TokenBucket:
    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate < 0:
            raise ValueError(f"rate must be >= 0 bytes/s, got {rate}")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else rate)
        if self.rate and self.burst <= 0:
            raise ValueError(f"burst must be > 0 bytes, got {burst}")
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()
        self._lock = asyncio.Lock()

    @property
    def unlimited(self) -> bool:
        return self.rate == 0

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def take(self, amount: int) -> None:
        """Wait until ``amount`` bytes may pass, then consume them.

        Requests larger than the burst are allowed: they drive the bucket negative and
        the next caller waits for the debt to be repaid, so the average still holds.
        Waiters are served in arrival order (the lock is FIFO).
        """
        if self.rate == 0 or amount <= 0:
            return
        async with self._lock:
            self._refill()
            if self._tokens < min(amount, self.burst):
                await asyncio.sleep((min(amount, self.burst) - self._tokens) / self.rate)
                self._refill()
            self._tokens -= amount
