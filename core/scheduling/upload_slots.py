"""A host's piece-upload slots, shared fairly among the children that want them.

Sans-IO: the piece server (dfdaemon's, or a simulated host's) asks :meth:`acquire`
when a request arrives and calls :meth:`release` when the piece has been sent; a
refused request is answered "busy" and the child asks elsewhere, coming back after its
back-off (``DownloadConfig.busy_backoff``, 0.1 s).

Why fairness: a child that holds a slot asks for its next piece the moment one lands,
so it finds the slot it just freed; a child that was answered "busy" comes back only
after its back-off, when the slots are taken again. Under load the same children keep
the slots and the others starve: at 10,000 hosts the slowest traced peer was answered
"busy" by the seed peer 78 times in a row, for 8 s, while the seed served its other
children a piece every 0.11 s (docs/simulation.md). So while some child was refused
within the last ``window`` seconds, a child that was itself served within that window
yields: it is answered "busy" too, and the freed slot waits for a refused child's
retry. When nobody was refused lately, a child may take slots back to back.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

#: The d7y default window: the children's "busy" back-off (DownloadConfig.busy_backoff),
#: so a refused child's retry finds the slot its refusal reserved.
FAIR_SLOT_WINDOW = 0.1

#: The served-at record is pruned of entries older than the window once it holds this
#: many children, and then again at twice what the pruning left (amortised O(1)).
_PRUNE_AT = 256


class UploadSlots:
    """At most ``limit`` uploads at once (0: no limit), handed out fairly when
    ``window`` > 0 (seconds; 0: first come, first served)."""

    __slots__ = ("_prune_at", "_refused_at", "_served_at", "active", "limit", "window")

    def __init__(self, limit: int = 0, window: float = 0.0) -> None:
        if limit < 0:
            raise ValueError(f"upload slot limit {limit!r} is negative: use 0 for no limit")
        if not window >= 0 or math.isinf(window):
            raise ValueError(f"fair-slot window {window!r} must be a finite number >= 0")
        self.limit = limit
        self.window = window
        self.active = 0
        self._refused_at = -math.inf
        self._served_at: dict[Hashable, float] = {}
        self._prune_at = _PRUNE_AT

    def acquire(self, child: Hashable, now: float) -> bool:
        """Take a slot for ``child``'s request; False: answer it "busy"."""
        limit = self.limit
        if limit:
            if self.active >= limit:
                self._refused_at = now
                return False
            window = self.window
            if window and now - self._refused_at <= window:
                served = self._served_at.get(child)
                if served is not None and now - served <= window:
                    return False  # yield to a child that was refused
        self.active += 1
        return True

    def release(self, child: Hashable, now: float) -> None:
        """The upload that ``acquire`` admitted has ended (sent, failed or cancelled)."""
        if self.active <= 0:
            raise RuntimeError("release() without a matching acquire()")
        self.active -= 1
        if self.limit and self.window:
            served = self._served_at
            served[child] = now
            if len(served) > self._prune_at:
                horizon = now - self.window
                for key in [k for k, t in served.items() if t < horizon]:
                    del served[key]
                self._prune_at = max(_PRUNE_AT, 2 * len(served))

    @property
    def full(self) -> bool:
        return bool(self.limit) and self.active >= self.limit


__all__ = ["FAIR_SLOT_WINDOW", "UploadSlots"]
