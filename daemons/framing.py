"""Reading and writing protocol frames on a stream (d7y.daemons.stream).

The frame reader is the sans-IO :class:`d7y.core.protocol.FrameDecoder`; this module
is the loop around it that the daemons share: it receives from the stream straight into
the decoder's buffer, applies the servers' timeouts, sizes the buffer, and lets a
Piece's payload go straight into the caller's piece buffer (and CRC).

Every frame :meth:`FramedStream.read` looks at is consumed whole before it returns or
raises (unless the error is fatal and the connection must close), so a server loop that
answers a bad frame and reads on always makes progress through the byte stream.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable

from d7y.core.messages import Message
from d7y.core.protocol import (
    DEFAULT_MAX_BODY_LENGTH,
    Frame,
    FrameDecoder,
    PiecePayload,
    ProtocolError,
    TruncatedFrame,
    encode_frame,
)
from d7y.daemons.stream import Stream, connect_stream
from d7y.ext.crc32 import crc32

#: Bad frames (unknown type, malformed body) one connection may send before it is
#: closed: one is a peer's bug and is answered; a stream of them is abuse.
MAX_BAD_FRAMES = 16


class ReadTimeout(TimeoutError):
    """A server-side read gave up: the peer was idle too long, or sent part of a frame
    and stalled. The connection should be closed (it is an OSError, like a reset)."""


class IdleTimeout(ReadTimeout):
    """No frame began within the idle timeout. The connection is still in a clean state
    (between frames): a server that has reason to keep it may simply read again."""


class TooManyBadFrames(ProtocolError):
    """More than :data:`MAX_BAD_FRAMES` bad frames on one connection: it is closed."""


class FramedStream:
    """One protocol connection: typed ``read()`` and ``send()`` of frames.

    Reads are buffered: one receive takes whatever the peer has sent, and frames are
    decoded from the buffer, so a burst of small reports costs one system call, not two
    per frame. The buffer costs nothing until the first byte arrives, starts small,
    doubles (up to :attr:`RECV_SIZE`, or one frame's size) while receives fill it, and
    shrinks back when the connection goes idle: an idle connection holds
    :attr:`IDLE_SIZE` bytes, not a burst buffer. A Piece's payload is read with
    :meth:`read_payload`, which takes what is buffered and receives the rest straight
    into the caller's piece buffer.
    """

    RECV_SIZE = 256 * 1024
    #: What an idle connection holds while it waits for a frame. Scheduler requests and
    #: reports are a few hundred bytes (a RegisterPeer with its URL fits); a burst grows
    #: the buffer by doubling. 4 KiB here was 40 % of a scheduler connection's memory.
    IDLE_SIZE = 512

    __slots__ = ("_burst", "_decoder", "bad_frames", "stream")

    def __init__(self, stream: Stream, *, max_body_length: int = DEFAULT_MAX_BODY_LENGTH):
        self.stream = stream
        self._decoder = FrameDecoder(max_body_length)
        self._burst = self.IDLE_SIZE  # buffer size the next receive asks for
        self.bad_frames = 0

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        timeout: float = 10.0,
        tls: ssl.SSLContext | None = None,
        max_body_length: int = DEFAULT_MAX_BODY_LENGTH,
    ) -> FramedStream:
        stream = await connect_stream(host, port, tls=tls, timeout=timeout)
        return cls(stream, max_body_length=max_body_length)

    @property
    def max_body_length(self) -> int:
        return self._decoder.max_body_length

    @property
    def buffer_size(self) -> int:
        """Bytes the receive buffer holds now (for tests and memory figures)."""
        return self._decoder.capacity

    def _receive_view(self) -> memoryview | bytearray:
        """Where the next receive lands: room for the rest of the frame part under way,
        and for a burst of :attr:`_burst` bytes in all."""
        decoder = self._decoder
        return decoder.get_buffer(max(decoder.missing, self._burst - decoder.buffered, 1))

    def _received(self, n: int, space: int) -> None:
        """Account ``n`` bytes received into ``space`` free bytes. A receive that filled
        all the space means the peer sends in bursts: double the buffer (up to
        RECV_SIZE) so the next one takes more at once."""
        if n == 0:
            decoder = self._decoder
            if decoder.between_frames:
                raise EOFError("connection closed")
            decoder.feed_eof()
            try:
                decoder.next_event()
            except TruncatedFrame as exc:
                raise EOFError(str(exc)) from None
            raise EOFError("connection closed")  # pragma: no cover - always truncated
        self._decoder.buffer_updated(n)
        if n == space and self._burst < self.RECV_SIZE:
            self._burst = min(2 * self._burst, self.RECV_SIZE)

    def _recv_within(self, view: memoryview | bytearray, timeout: float | None) -> Awaitable[int]:
        if timeout is None:  # no timer at all: a waiting connection holds nothing more
            return self.stream.recv_into(view)
        return self._recv_with_timeout(view, timeout)

    async def _recv_with_timeout(self, view: memoryview | bytearray, timeout: float) -> int:
        async with asyncio.timeout(timeout):
            return await self.stream.recv_into(view)

    async def _receive(self, idle_timeout: float | None, frame_timeout: float | None) -> None:
        """Receive more bytes. Between frames, a receive that would not block takes the
        data straight away (and keeps the buffer a burst grew); only a real wait shrinks
        the buffer to :attr:`IDLE_SIZE`, and it may last ``idle_timeout``. Within a
        frame, each receive may last ``frame_timeout`` (None: as long as it takes)."""
        decoder = self._decoder
        if decoder.between_frames:
            view = self._receive_view()
            n = self.stream.try_recv_into(view)
            if n is None:
                del view  # the buffer is replaced below
                decoder.shrink(self.IDLE_SIZE)
                self._burst = self.IDLE_SIZE
                view = self._receive_view()
                try:
                    n = await self._recv_within(view, idle_timeout)
                except TimeoutError:
                    raise IdleTimeout(f"no frame in {idle_timeout:g}s: idle connection") from None
            self._received(n, len(view))
            return
        view = self._receive_view()
        try:
            n = await self._recv_within(view, frame_timeout)
        except TimeoutError:
            raise ReadTimeout(
                f"connection stalled for {frame_timeout:g}s in the middle of a frame "
                f"({decoder.buffered} bytes buffered, {decoder.missing} more needed)"
            ) from None
        self._received(n, len(view))

    async def read(
        self, *, idle_timeout: float | None = None, frame_timeout: float | None = None
    ) -> Frame:
        """The next frame, as (stream_id, message). EOFError at the end of the stream
        (between frames, or cutting one short); ProtocolError for a bad frame (after a
        non-fatal one the frame is consumed and the connection stays usable);
        IdleTimeout when no frame began within ``idle_timeout`` seconds, ReadTimeout
        when a begun frame stalled for ``frame_timeout`` seconds (servers set both;
        None waits forever). A Piece's payload must be taken with :meth:`read_payload`
        before the next read; one nobody asked for is skipped."""
        decoder = self._decoder
        while True:
            try:
                event = decoder.next_event()
            except ProtocolError as exc:
                if not exc.fatal:
                    self._count_bad_frame(exc)
                raise
            if type(event) is Frame:
                return event
            if type(event) is not PiecePayload:
                await self._receive(idle_timeout, frame_timeout)
            # A PiecePayload here is an unsolicited payload: dropped with its frame.

    def _count_bad_frame(self, exc: ProtocolError) -> None:
        self.bad_frames += 1
        if self.bad_frames > MAX_BAD_FRAMES:
            raise TooManyBadFrames(
                f"{self.bad_frames} bad frames on this connection (the last: {exc}); "
                f"closing it: fix the sender",
                stream_id=exc.stream_id,
            ) from exc

    async def read_payload(
        self, into, n: int, progress: Callable[[int], None] | None = None
    ) -> int:
        """Read a Piece's ``n`` payload bytes into ``into``; returns their CRC-32.

        ``progress``, when given, is called with the count of bytes landed so far after
        every receive (a relay streams them on as they arrive: cut-through relaying);
        without it the payload is received in one call."""
        view = memoryview(into)[:n]
        buffered = self._decoder.take_payload(view)
        if buffered == n:
            if progress is not None:
                progress(n)
            return crc32(view)
        self._decoder.skip_payload(n - buffered)
        if progress is None:
            crc = await self.stream.recv_exactly_into(view[buffered:])
            return crc if buffered == 0 else crc32(view)
        got = buffered
        if got:
            progress(got)
        stream = self.stream
        while got < n:
            received = await stream.recv_into(view[got:])
            if received == 0:
                raise asyncio.IncompleteReadError(b"", n)
            got += received
            progress(got)
        return crc32(view)

    async def send(self, message: Message, stream_id: int = 0) -> None:
        await self.stream.send_all(encode_frame(message, stream_id))

    async def send_error(self, error: ProtocolError) -> None:
        await self.send(error.to_message(), error.stream_id or 0)

    def close(self) -> None:
        self.stream.close()
