"""Fetching pieces from other peers over the piece protocol.

A :class:`PieceClient` keeps a few idle connections per parent (``host:port``) and asks
for one piece per connection at a time: ``GetPiece`` out, a ``Piece`` header back, then
the payload straight into the caller's piece buffer with ``recv_into`` (its CRC-32 comes
back from the same call). A piece is returned only when its CRC equals the digest the
caller expected — the digest recorded by whoever fetched it from the origin, not the
one the parent claims — so a parent that serves wrong bytes, or lies about them, is
caught here.

:meth:`PieceClient.subscribe` follows what a parent holds on a connection of its own:
the parent's snapshot, then the pieces it pushes as it stores them.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import NamedTuple

from d7y.core.messages import (
    Error,
    GetPiece,
    GetTaskInfo,
    HavePieces,
    Message,
    Piece,
    Subscribe,
    TaskInfo,
)
from d7y.core.protocol import ProtocolError
from d7y.daemons.framing import FramedStream
from d7y.ext.bitmap import Bitmap


class PieceFetchError(Exception):
    """A piece could not be fetched from a parent.

    ``kind`` is ``corrupt`` (bytes did not match the expected digest: blocklist the
    parent), ``not_found`` / ``busy`` (ask another parent), ``connection`` /
    ``protocol`` (the parent is unreachable or misbehaving), or ``lost`` (a piece the
    parent relayed while receiving it broke off: its own transfer failed).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Announcement(NamedTuple):
    """What a subscription learned: pieces the parent holds, pieces it started receiving
    and pieces it announced as receiving that it no longer receives (cut-through)."""

    have: list[int]
    receiving: tuple[int, ...] | list[int] = ()
    not_receiving: tuple[int, ...] | list[int] = ()


#: Called with a relayed piece's header before its payload is read; returns a callback
#: for the count of bytes landed so far, or None (docs/protocol.md, cut-through).
Relay = Callable[[Piece], Callable[[int], None] | None]


#: A pooled connection unused this long is closed rather than reused: the parent closes
#: idle connections itself (``upload.idle_timeout``, 60 s by default).
POOLED_MAX_IDLE = 20.0


class PieceClient:
    def __init__(
        self,
        *,
        max_idle_per_parent: int = 8,
        timeout: float = 30.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        # address -> (connection, monotonic time it was checked in), most recent last
        self._idle: dict[tuple[str, int], list[tuple[FramedStream, float]]] = {}
        self._max_idle = max_idle_per_parent
        self.timeout = timeout
        self.tls = tls  # client context: parents' piece ports speak TLS when set

    async def _connect(self, address: tuple[str, int]) -> FramedStream:
        try:
            return await FramedStream.connect(*address, timeout=self.timeout, tls=self.tls)
        except (OSError, ssl.SSLError, EOFError) as exc:  # TimeoutError is an OSError
            raise PieceFetchError(
                "connection", f"cannot connect to parent {address[0]}:{address[1]}: {exc}"
            ) from None

    def close(self) -> None:
        for conns in self._idle.values():
            for conn, _ in conns:
                conn.close()
        self._idle.clear()

    async def _checkout(
        self, address: tuple[str, int], *, fresh: bool = False
    ) -> tuple[FramedStream, bool]:
        """A connection to ``address`` and whether it came from the pool."""
        idle = self._idle.get(address)
        while idle and not fresh:
            conn, since = idle.pop()
            if time.monotonic() - since < POOLED_MAX_IDLE:
                return conn, True
            conn.close()
        return await self._connect(address), False

    def _checkin(self, address: tuple[str, int], conn: FramedStream) -> None:
        idle = self._idle.setdefault(address, [])
        if len(idle) < self._max_idle:
            idle.append((conn, time.monotonic()))
        else:
            conn.close()

    async def _ask(
        self, address: tuple[str, int], request: Message
    ) -> tuple[FramedStream, Message]:
        """Send ``request`` on stream 1 and read the first reply. A pooled connection the
        parent closed meanwhile (its idle timeout) fails before any reply: the request
        goes again, once, on a new connection. On error no connection is left open."""
        conn, pooled = await self._checkout(address)
        try:
            await conn.send(request, 1)
            return conn, (await conn.read())[1]
        except (EOFError, ConnectionResetError, BrokenPipeError):
            conn.close()
            if not pooled:
                raise
        except BaseException:
            conn.close()
            raise
        conn, _ = await self._checkout(address, fresh=True)
        try:
            await conn.send(request, 1)
            return conn, (await conn.read())[1]
        except BaseException:
            conn.close()
            raise

    async def task_info(self, address: tuple[str, int], task_id: str) -> TaskInfo:
        """What a parent holds of a task (its bitmap and digests)."""
        conn = None
        ok = False
        try:
            async with asyncio.timeout(self.timeout):
                conn, reply = await self._ask(address, GetTaskInfo(task_id=task_id))
            if isinstance(reply, Error):
                raise PieceFetchError(reply.code, reply.message)
            if not isinstance(reply, TaskInfo):
                raise PieceFetchError("protocol", f"expected TaskInfo, got {type(reply).__name__}")
            ok = True
            return reply
        except (EOFError, OSError, ProtocolError, ssl.SSLError) as exc:
            raise PieceFetchError("connection", f"parent {address}: {exc!r}") from None
        finally:
            if conn is not None:
                if ok:
                    self._checkin(address, conn)
                else:
                    conn.close()

    async def subscribe(
        self, address: tuple[str, int], task_id: str, piece_count: int
    ) -> AsyncIterator[Announcement]:
        """Pieces a parent holds of a task of ``piece_count`` pieces: those of its
        snapshot first (possibly none), then each batch it pushes, for as long as the
        caller iterates; with the pieces it receives (cut-through relaying). Raises
        PieceFetchError: the parent's error code (``not_found``;
        ``bad_request`` from a parent that does not take subscriptions), ``protocol``,
        or ``connection`` (unreachable, or it closed the subscription)."""
        conn = await self._connect(address)
        try:
            await conn.send(Subscribe(task_id=task_id), 1)
            while True:
                _, message = await conn.read()
                if isinstance(message, TaskInfo):
                    usable = message.piece_count == piece_count and message.bitmap
                    held = Bitmap.from_bytes(message.bitmap, piece_count) if usable else None
                    yield Announcement(
                        list(held.iter_set()) if held is not None else [],
                        [n for n in message.receiving if n < piece_count],
                    )
                elif isinstance(message, HavePieces):
                    yield Announcement(
                        [n for n in message.numbers if n < piece_count],
                        [n for n in message.receiving if n < piece_count],
                        [n for n in message.not_receiving if n < piece_count],
                    )
                elif isinstance(message, Error):
                    raise PieceFetchError(message.code, message.message)
                else:
                    raise PieceFetchError(
                        "protocol", f"unexpected {type(message).__name__} on a subscription"
                    )
        except (EOFError, OSError, ProtocolError, ssl.SSLError) as exc:
            raise PieceFetchError("connection", f"parent {address}: {exc!r}") from None
        finally:
            conn.close()

    async def fetch(
        self,
        address: tuple[str, int],
        task_id: str,
        number: int,
        into: memoryview,
        expected_digests: Mapping[int, str] | None = None,
        relay: Relay | None = None,
    ) -> tuple[int, str]:
        """Fetch piece ``number`` into ``into``; returns (length, digest).

        When ``expected_digests`` has the piece, the received CRC must equal it;
        otherwise (no recorded digest yet) the parent's header digest must match the
        bytes. ``relay`` (cut-through relaying) is told of the header and of every byte
        that lands. Raises :class:`PieceFetchError`.
        """
        conn = None
        reusable = False
        reply = None
        landed = 0
        try:
            async with asyncio.timeout(self.timeout):
                conn, reply = await self._ask(address, GetPiece(task_id=task_id, number=number))
                if isinstance(reply, Error):
                    reusable = True  # an answered error leaves the framing intact
                    raise PieceFetchError(reply.code, reply.message)
                if not isinstance(reply, Piece) or reply.number != number:
                    raise PieceFetchError("protocol", f"unexpected reply {reply!r:.120}")
                if reply.length > len(into):
                    raise PieceFetchError(
                        "protocol", f"piece {number} of {reply.length} bytes exceeds the buffer"
                    )
                forward = relay(reply) if relay is not None else None
                if forward is not None or reply.receiving:
                    # Count what landed (a relayed piece that breaks off is "lost") and
                    # pass it on to this daemon's own relay, if any.
                    def progress(n: int) -> None:
                        nonlocal landed
                        landed = n
                        if forward is not None:
                            forward(n)

                    crc = await conn.read_payload(into, reply.length, progress)
                else:
                    crc = await conn.read_payload(into, reply.length)
            reusable = True
        except (EOFError, OSError, ProtocolError, ssl.SSLError) as exc:
            if isinstance(reply, Piece) and reply.receiving and landed < reply.length:
                # The parent relayed a piece it was receiving and closed the connection
                # before its end: its own transfer failed. Not the parent's fault.
                raise PieceFetchError(
                    "lost",
                    f"parent {address[0]}:{address[1]} stopped relaying piece {number} "
                    f"after {landed} of {reply.length} bytes: {exc!r}",
                ) from None
            raise PieceFetchError("connection", f"parent {address}: {exc!r}") from None
        finally:
            if conn is not None:
                if reusable:
                    self._checkin(address, conn)
                else:
                    conn.close()
        actual = f"crc32:{crc}"
        expected = (expected_digests or {}).get(number, reply.digest)
        if actual != expected:
            raise PieceFetchError(
                "corrupt",
                f"piece {number} of task {task_id} from {address[0]}:{address[1]} is corrupt: "
                f"expected {expected}, got {actual}",
            )
        return reply.length, actual
