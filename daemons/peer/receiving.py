"""Pieces this daemon is receiving from a parent, for cut-through relaying.

With ``download.cut_through`` on, every piece fetch from a parent registers a
:class:`Receiving` record once the parent's Piece header has arrived (it carries the
piece's length and digest). The fetch reports its progress into the record as bytes land
in its buffer; the piece server streams those bytes on to children that asked for the
piece before it is held (docs/protocol.md, "Cut-through relaying"), and subscribed
children are told the piece is being received, then either that it is stored (the usual
HavePieces) or that it is not received any more.

Two rules keep a relayed piece honest:

- bytes are served only once they have landed (:meth:`Receiving.servable`), and the last
  byte only once the whole piece matched its digest (:meth:`Receiving.verified`): a
  child never receives a complete piece its relay did not verify, so an upstream
  corruption reaches it as a broken connection (the relay "lost" the piece), never as a
  corrupt piece blamed on the relay;
- a buffer a child read from is not reused for another fetch (:attr:`Receiving.shared`):
  a reader still sending its tail must not see the buffer overwritten under it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger("d7y.dfdaemon.receiving")

#: (task_id, piece number, started): a record began (True) or ended without the piece
#: being stored (False). A stored piece ends its record silently: the store's piece
#: listeners announce it.
ReceivingListener = Callable[[str, int, bool], None]


class ReceivingFailed(Exception):
    """The transfer a reader relays ended without the whole verified piece."""


class Receiving:
    """One piece being received: its buffer, how much of it has landed, its end."""

    __slots__ = (
        "_waiters",
        "digest",
        "error",
        "landed",
        "length",
        "number",
        "offset",
        "readers",
        "shared",
        "stored",
        "task_id",
        "verified",
        "view",
    )

    def __init__(
        self, task_id: str, number: int, offset: int, length: int, digest: str, buffer: memoryview
    ) -> None:
        if length > len(buffer):
            raise ValueError(f"piece {number} of {length} bytes exceeds its {len(buffer)} buffer")
        self.task_id = task_id
        self.number = number
        self.offset = offset
        self.length = length
        self.digest = digest
        self.view = buffer[:length]
        self.landed = 0
        self.verified = False
        self.stored = False
        self.error: str | None = None
        self.readers = 0
        self.shared = False  # a reader attached once: the buffer is not reused
        self._waiters: list[asyncio.Future] = []

    @property
    def ended(self) -> bool:
        return self.stored or self.error is not None

    def servable(self) -> int:
        """How many bytes from the start a reader may send now: those landed, short of
        the last one until the piece is verified."""
        if self.verified:
            return self.length
        return min(self.landed, self.length - 1)

    def progress(self, landed: int) -> None:
        """The fetch has ``landed`` bytes in the buffer (from the start)."""
        if landed > self.landed:
            self.landed = min(landed, self.length)
            self._wake()

    def verify(self) -> None:
        """Every byte landed and the piece matched its digest: readers may finish."""
        self.landed = self.length
        self.verified = True
        self._wake()

    def fail(self, reason: str) -> None:
        """The fetch ended without the verified piece: readers stop where they are."""
        if self.error is None and not self.verified:
            self.error = reason
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_beyond(self, sent: int) -> int:
        """Wait until more than ``sent`` bytes are servable; returns how many are.
        Raises :class:`ReceivingFailed` if the transfer ended without the piece."""
        while True:
            if self.error is not None:
                raise ReceivingFailed(
                    f"piece {self.number} of task {self.task_id} is no longer received: "
                    f"{self.error}"
                )
            servable = self.servable()
            if servable > sent:
                return servable
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if not waiter.done():
                    waiter.cancel()

    def attach(self) -> None:
        """A reader starts relaying this piece."""
        self.readers += 1
        self.shared = True

    def detach(self) -> None:
        self.readers -= 1


class ReceivingPieces:
    """The records of the pieces being received, by (task, piece); at most one each (a
    second fetch of the same piece, the endgame's, runs without one)."""

    def __init__(self) -> None:
        self._records: dict[tuple[str, int], Receiving] = {}
        self.listeners: list[ReceivingListener] = []

    def get(self, task_id: str, number: int) -> Receiving | None:
        return self._records.get((task_id, number))

    def numbers(self, task_id: str) -> list[int]:
        """The pieces of ``task_id`` being received now."""
        return sorted(n for (t, n) in self._records if t == task_id)

    def start(
        self, task_id: str, number: int, offset: int, length: int, digest: str, buffer: memoryview
    ) -> Receiving | None:
        """Register a fetch whose header arrived; None if another fetch of the piece
        holds the record already."""
        key = (task_id, number)
        if key in self._records:
            return None
        record = Receiving(task_id, number, offset, length, digest, buffer)
        self._records[key] = record
        self._tell(task_id, number, True)
        return record

    def end(
        self, record: Receiving, *, stored: bool, reason: str = "", announce: bool = True
    ) -> None:
        """The fetch of ``record`` ended: its piece stored (announced by the store), or
        not (readers are aborted and, unless ``announce`` is False -- another fetch
        stored the piece meanwhile -- the listeners told)."""
        if self._records.get((record.task_id, record.number)) is record:
            del self._records[(record.task_id, record.number)]
        if stored:
            record.stored = True
            record.verify()
            return
        record.fail(reason or "the transfer ended")
        if announce:
            self._tell(record.task_id, record.number, False)

    def _tell(self, task_id: str, number: int, started: bool) -> None:
        for listener in self.listeners:
            try:
                listener(task_id, number, started)
            except Exception:  # a listener's bug must not fail the download
                log.exception("receiving listener failed task=%s piece=%d", task_id, number)
