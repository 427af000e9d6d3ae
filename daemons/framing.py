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
from d7y.ext.transfer import recv_into_exact


class FramedSocket:
    """One protocol connection: typed ``read()`` and ``send()`` of frames."""

    def __init__(self, sock: socket.socket, *, max_body_length: int = DEFAULT_MAX_BODY_LENGTH):
        sock.setblocking(False)
        self.sock = sock
        self.max_body_length = max_body_length
        self._header = bytearray(HEADER_LENGTH)
        self._body = bytearray(4096)

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

    async def read(self) -> tuple[FrameHeader, Message]:
        """The next frame. EOFError at a clean end between frames; ProtocolError for
        a bad frame (after a non-fatal one the connection stays usable)."""
        try:
            await recv_into_exact(self.sock, self._header, HEADER_LENGTH)
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise EOFError("connection closed") from None
            raise
        header = decode_header(self._header, self.max_body_length)
        if len(self._body) < header.body_length:
            self._body = bytearray(header.body_length)
        body = memoryview(self._body)[: header.body_length]
        if header.body_length:
            await recv_into_exact(self.sock, body, header.body_length)
        return header, decode_body(header, body)

    async def send(self, message: Message, stream_id: int = 0) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, encode_frame(message, stream_id))

    async def send_error(self, error: ProtocolError) -> None:
        await self.send(error.to_message(), error.stream_id or 0)

    def close(self) -> None:
        self.sock.close()
