"""Reading and writing protocol frames on a raw non-blocking socket.

The codec (:mod:`d7y.core.protocol`) is sans-IO; this is the thin I/O layer the daemons
share. A frame is read as exactly 12 header bytes, then exactly ``body_length`` body
bytes, into buffers the connection reuses; a Piece's payload is left on the socket for
the caller to ``recv_into`` its piece buffer (and CRC) directly.
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
    decode_body,
    decode_header,
    encode_frame,
)
from d7y.ext.crc32 import crc32
from d7y.ext.transfer import recv_into_exact


class FramedSocket:
    """One protocol connection: typed ``read()`` and ``send()`` of frames.

    Reads are buffered: one recv takes whatever the peer has sent (up to 256 KiB), and
    frames are decoded from the buffer, so a burst of small reports costs one system
    call, not two per frame. A Piece's payload is read with :meth:`read_payload`, which
    drains the buffer first and then receives the rest straight into the caller's piece
    buffer.
    """

    RECV_SIZE = 256 * 1024

    def __init__(self, sock: socket.socket, *, max_body_length: int = DEFAULT_MAX_BODY_LENGTH):
        sock.setblocking(False)
        self.sock = sock
        self.max_body_length = max_body_length
        self._buf = bytearray(self.RECV_SIZE)
        self._start = 0  # first unread byte in _buf
        self._end = 0  # one past the last received byte

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

    async def _fill(self, need: int) -> None:
        """Make at least ``need`` unread bytes available in the buffer."""
        if self._end - self._start >= need:
            return
        if len(self._buf) - self._start < need:  # move the tail down, grow if needed
            tail = self._buf[self._start : self._end]
            if len(self._buf) < need:
                self._buf = bytearray(max(need, self.RECV_SIZE))
            self._buf[: len(tail)] = tail
            self._start, self._end = 0, len(tail)
        loop = asyncio.get_running_loop()
        while self._end - self._start < need:
            n = await loop.sock_recv_into(self.sock, memoryview(self._buf)[self._end :])
            if n == 0:
                partial = bytes(self._buf[self._start : self._end])
                if not partial:
                    raise EOFError("connection closed")
                raise asyncio.IncompleteReadError(partial, need)
            self._end += n

    async def read(self) -> tuple[FrameHeader, Message]:
        """The next frame. EOFError at a clean end between frames; ProtocolError for
        a bad frame (after a non-fatal one the connection stays usable)."""
        await self._fill(HEADER_LENGTH)
        view = memoryview(self._buf)
        header = decode_header(view[self._start : self._start + HEADER_LENGTH],
                               self.max_body_length)  # fmt: skip
        self._start += HEADER_LENGTH
        await self._fill(header.body_length)
        view = memoryview(self._buf)  # _fill may have replaced the buffer
        body = view[self._start : self._start + header.body_length]
        self._start += header.body_length
        return header, decode_body(header, body)

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
