"""How many ranges a download that others wait for fetches from the origin at once.

A seed peer's origin fetch (or one streaming to a proxy client) feeds a relay: a piece
can be passed on only once it has landed whole. Ranges fetched in parallel share the
origin's bandwidth and land together, late (four 4 MiB ranges from a 4 MiB/s origin:
the first piece after 4 s instead of 1 s, and the last four pieces all at the end).
One range at a time lands each piece as early as possible, but on an origin far away
it leaves the link idle for a round trip between ranges (10 ms away at 10 Gbit/s: 3.4
ms of transfer per 20 ms round trip).

So the window starts at one range and opens while opening pays. A range's rate sample
is ``limit * length / cost`` for a range *started under* the current limit (cost: from
its request to its landing, round trip included), so each sample shows what ``limit``
ranges in flight achieve. After ``limit`` samples the mean is compared with the kept
rate of the limit before: a gain above ``GAIN`` keeps the step and tries one more;
anything less steps back, and the window settles there. A nearby origin, however slow,
stays at one range; a distant fast one opens until the round trip is mostly covered.

Sans-IO: the caller asks :meth:`OriginWindow.started` for a token when it sends a range,
reports :meth:`OriginWindow.done` with it, and keeps :attr:`OriginWindow.limit` ranges in
flight.
"""

from __future__ import annotations

#: Relative throughput gain for which one more range in flight is kept.
GAIN = 0.15


class OriginWindow:
    """The in-flight limit of one download's origin ranges, between 1 and ``maximum``."""

    __slots__ = ("_kept", "_samples", "limit", "maximum", "settled")

    def __init__(self, maximum: int) -> None:
        if isinstance(maximum, bool) or not isinstance(maximum, int) or maximum < 1:
            raise ValueError(f"maximum must be an int >= 1, got {maximum!r}")
        self.maximum = maximum
        self.limit = 1
        #: No more probing: a step did not pay, or the maximum was reached.
        self.settled = maximum == 1
        self._kept = 0.0  # mean rate (bytes/s) at the limit before this one
        self._samples: list[float] = []

    def started(self) -> int:
        """The token of a range sent now: the limit it was sent under."""
        return self.limit

    def done(self, token: int, length: int, cost: float) -> int:
        """A range sent under ``token`` landed: ``length`` bytes in ``cost`` seconds.
        Returns the limit, changed or not."""
        if self.settled or token != self.limit or not cost > 0:
            return self.limit
        samples = self._samples
        samples.append(self.limit * length / cost)
        if len(samples) < self.limit:
            return self.limit
        rate = sum(samples) / len(samples)
        samples.clear()
        if self._kept == 0.0 or rate > self._kept * (1 + GAIN):
            self._kept = rate
            if self.limit < self.maximum:
                self.limit += 1
            else:
                self.settled = True
        else:
            self.limit -= 1  # the step did not pay: take it back and stay
            self.settled = True
        return self.limit


__all__ = ["GAIN", "OriginWindow"]
