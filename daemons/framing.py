"""Reading and writing protocol frames on a raw non-blocking socket.

The codec (:mod:`d7y.core.protocol`) is sans-IO; this is the thin I/O layer the daemons
share. A frame is read as exactly 12 header bytes, then exactly ``body_length`` body
bytes, from a receive buffer the connection owns; a Piece's payload is left on the
socket for the caller to ``recv_into`` its piece buffer (and CRC) directly.

Every frame :meth:`FramedSocket.read` looks at is consumed whole before it returns or
raises (unless the error is fatal and the connection must close), so a server loop that
answers a bad frame and reads on always makes progress through the byte stream.
"""

from __future__ import annotations

import asyncio
import socket

from d7y.core.messages import Message
from d7y.core.protocol import (
    DEFAULT_MAX_BODY_LENGTH,
    HEADER_LENGTH,
    FrameHeader,
    ProtocolError,
    UnknownMessageType,
    decode_body,
    decode_header,
    encode_frame,
)
from d7y.ext.crc32 import crc32
from d7y.ext.transfer import recv_into_exact

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


class FramedSocket:
    """One protocol connection: typed ``read()`` and ``send()`` of frames.

    Reads are buffered: one recv takes whatever the peer has sent, and frames are
    decoded from the buffer, so a burst of small reports costs one system call, not two
    per frame. The buffer costs nothing until the first byte arrives, starts small,
    doubles (up to :attr:`RECV_SIZE`, or one frame's size) while recvs fill it, and
    shrinks back when the connection goes idle: an idle connection holds
    :attr:`IDLE_SIZE` bytes, not a burst buffer. A Piece's payload is read with
    :meth:`read_payload`, which drains the buffer first and then receives the rest
    straight into the caller's piece buffer.
    """

    RECV_SIZE = 256 * 1024
    #: What an idle connection holds while it waits for a frame. Scheduler requests and
    #: reports are a few hundred bytes (a RegisterPeer with its URL fits); a burst grows
    #: the buffer by doubling. 4 KiB here was 40 % of a scheduler connection's memory.
    IDLE_SIZE = 512

    __slots__ = ("_buf", "_end", "_start", "bad_frames", "max_body_length", "sock")

    def __init__(self, sock: socket.socket, *, max_body_length: int = DEFAULT_MAX_BODY_LENGTH):
        sock.setblocking(False)
        self.sock = sock
        self.max_body_length = max_body_length
        self._buf = bytearray()
        self._start = 0  # first unread byte in _buf
        self._end = 0  # one past the last received byte
        self.bad_frames = 0

    @classmethod
    async def connect(
        cls, host: str, port: int, *, timeout: float = 10.0, **kwargs
    ) -> FramedSocket:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, address), timeout)
        except BaseException:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, **kwargs)

    @property
    def buffer_size(self) -> int:
        """Bytes the receive buffer holds now (for tests and memory figures)."""
        return len(self._buf)

    def _make_room(self, need: int) -> None:
        """Ensure the buffer can hold ``need`` unread bytes from ``_start`` on: move the
        unread tail to the front, and grow the buffer if it is too small."""
        if self._start == self._end:
            self._start = self._end = 0
        size = len(self._buf)
        if size - self._start >= need:
            return
        unread = self._end - self._start
        if size < need:
            size = max(need, min(max(2 * size, self.IDLE_SIZE), self.RECV_SIZE))
        tail = self._buf[self._start : self._end]
        if size != len(self._buf):
            self._buf = bytearray(size)
        self._buf[:unread] = tail
        self._start, self._end = 0, unread

    def _received(self, n: int, space: int) -> None:
        """Account ``n`` bytes received into ``space`` free bytes. A recv that filled
        all the space means the peer sends in bursts: double the buffer (up to
        RECV_SIZE) so the next recv takes more at once."""
        self._end += n
        size = len(self._buf)
        if n == space and size < self.RECV_SIZE:
            bigger = bytearray(min(2 * size, self.RECV_SIZE))
            unread = self._end - self._start
            bigger[:unread] = self._buf[self._start : self._end]
            self._buf, self._start, self._end = bigger, 0, unread

    async def _fill(self, need: int, timeout: float | None) -> None:
        """Make at least ``need`` unread bytes available in the buffer, each recv
        within ``timeout`` seconds (None: wait as long as it takes)."""
        if self._end - self._start >= need:
            return
        loop = asyncio.get_running_loop()
        while self._end - self._start < need:
            self._make_room(need)
            space = len(self._buf) - self._end
            view = memoryview(self._buf)[self._end :]
            try:
                if timeout is None:
                    n = await loop.sock_recv_into(self.sock, view)
                else:
                    async with asyncio.timeout(timeout):
                        n = await loop.sock_recv_into(self.sock, view)
            except TimeoutError:
                raise ReadTimeout(
                    f"connection stalled for {timeout:g}s in the middle of a frame "
                    f"({self._end - self._start} of {need} bytes)"
                ) from None
            finally:
                view.release()
            if n == 0:
                partial = bytes(self._buf[self._start : self._end])
                if not partial:
                    raise EOFError("connection closed")
                raise asyncio.IncompleteReadError(partial, need)
            self._received(n, space)

    async def _wait_for_frame(self, idle_timeout: float | None) -> None:
        """Nothing is buffered: wait for the next frame's first bytes, holding only a
        small buffer meanwhile (an idle connection must be cheap)."""
        if len(self._buf) != self.IDLE_SIZE:
            self._buf = bytearray(self.IDLE_SIZE)
        self._start = self._end = 0
        loop = asyncio.get_running_loop()
        if idle_timeout is None:
            n = await loop.sock_recv_into(self.sock, self._buf)
        else:
            try:
                async with asyncio.timeout(idle_timeout):
                    n = await loop.sock_recv_into(self.sock, self._buf)
            except TimeoutError:
                raise IdleTimeout(f"no frame in {idle_timeout:g}s: idle connection") from None
        if n == 0:
            raise EOFError("connection closed")
        self._received(n, self.IDLE_SIZE)

    async def read(
        self, *, idle_timeout: float | None = None, frame_timeout: float | None = None
    ) -> tuple[FrameHeader, Message]:
        """The next frame. EOFError at a clean end between frames; ProtocolError for
        a bad frame (after a non-fatal one the frame is consumed and the connection
        stays usable); IdleTimeout when no frame began within ``idle_timeout`` seconds,
        ReadTimeout when a begun frame stalled for ``frame_timeout`` seconds (servers
        set both; None waits forever)."""
        if self._start == self._end:
            # A read that would not block takes the data straight away (and keeps
            # the buffer a burst grew); only a real wait shrinks it.
            self._make_room(HEADER_LENGTH)
            try:
                n = self.sock.recv_into(self._buf)
            except BlockingIOError:
                await self._wait_for_frame(idle_timeout)
            else:
                if n == 0:
                    raise EOFError("connection closed")
                self._received(n, len(self._buf))
        await self._fill(HEADER_LENGTH, frame_timeout)
        header_bytes = memoryview(self._buf)[self._start : self._start + HEADER_LENGTH]
        try:
            header = decode_header(header_bytes, self.max_body_length)
        except UnknownMessageType as exc:
            # Its body is still on the wire: skip header and body, or the next read
            # would meet the same header again (an endless loop of Error answers).
            header_bytes.release()
            await self._skip(HEADER_LENGTH + (exc.body_length or 0), frame_timeout)
            self._count_bad_frame(exc)
            raise
        header_bytes.release()
        self._start += HEADER_LENGTH
        await self._fill(header.body_length, frame_timeout)
        view = memoryview(self._buf)
        body = view[self._start : self._start + header.body_length]
        self._start += header.body_length
        try:
            return header, decode_body(header, body)
        except ProtocolError as exc:
            if not exc.fatal:
                self._count_bad_frame(exc)
            raise
        finally:
            body.release()
            view.release()

    async def _skip(self, n: int, timeout: float | None) -> None:
        await self._fill(n, timeout)
        self._start += n

    def _count_bad_frame(self, exc: ProtocolError) -> None:
        self.bad_frames += 1
        if self.bad_frames > MAX_BAD_FRAMES:
            raise TooManyBadFrames(
                f"{self.bad_frames} bad frames on this connection (the last: {exc}); "
                f"closing it: fix the sender",
                stream_id=exc.stream_id,
            ) from exc

    async def read_payload(self, into, n: int) -> int:
        """Read a Piece's ``n`` payload bytes into ``into``; returns their CRC-32."""
        view = memoryview(into)[:n]
        buffered = min(self._end - self._start, n)
        view[:buffered] = memoryview(self._buf)[self._start : self._start + buffered]
        self._start += buffered
        if buffered < n:
            await recv_into_exact(self.sock, view[buffered:], n - buffered)
        return crc32(view)

    async def send(self, message: Message, stream_id: int = 0) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, encode_frame(message, stream_id))

    async def send_error(self, error: ProtocolError) -> None:
        await self.send(error.to_message(), error.stream_id or 0)

    def close(self) -> None:
        self.sock.close()
