"""Blocking helpers for tests (and benches) that speak the framed protocol on a raw
socket, as a hostile or minimal client would."""

from __future__ import annotations

import socket

from d7y.core.messages import Message
from d7y.core.protocol import HEADER_LENGTH, FrameHeader, decode_body, decode_header


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes; EOFError naming how many came if the peer closes first."""
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return bytes(data)


def read_frame(sock: socket.socket) -> tuple[FrameHeader, Message]:
    """The next frame's header and decoded message (a Piece's payload stays unread)."""
    header = decode_header(recv_exact(sock, HEADER_LENGTH))
    return header, decode_body(header, recv_exact(sock, header.body_length))
