"""Byte streams the proxy speaks HTTP over: a raw socket, or TLS on top of one.

The listener hands out raw non-blocking sockets (daemons/listener.py); a hijacked
CONNECT tunnel and an https upstream need TLS on such a socket. TLS here is sans-IO as
h11 is: an :class:`ssl.SSLObject` between two memory BIOs, pumped by this module, so the
same code runs on the listener's sockets and on sockets the proxy opens itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl

RECV_SIZE = 64 * 1024
#: Plaintext handed to the TLS object at once (bounds the ciphertext buffered).
TLS_WRITE_SLICE = 256 * 1024


class StreamTimeout(Exception):
    """Nothing arrived within the time allowed; the message says what was awaited."""


class SocketStream:
    """A connected non-blocking socket. ``pending`` holds bytes already read from it
    that belong to the next layer (h11's trailing data after a CONNECT)."""

    def __init__(self, sock: socket.socket, pending: bytes = b"") -> None:
        self.sock = sock
        self.pending = pending

    async def recv(self, timeout: float | None, what: str = "data") -> bytes:
        """The next bytes (b"" at end of stream); StreamTimeout after ``timeout``."""
        if self.pending:
            data, self.pending = self.pending, b""
            return data
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.get_running_loop().sock_recv(self.sock, RECV_SIZE)
        except TimeoutError:
            raise StreamTimeout(f"no {what} within {timeout or 0:g}s") from None

    async def sendall(self, data: bytes | memoryview) -> None:
        if data:
            await asyncio.get_running_loop().sock_sendall(self.sock, data)

    def close(self) -> None:
        self.sock.close()


class TLSStream:
    """TLS over a :class:`SocketStream`; the handshake runs in :meth:`handshake`."""

    def __init__(
        self,
        raw: SocketStream,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        self.raw = raw
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
        )

    @property
    def sock(self) -> socket.socket:
        return self.raw.sock

    async def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            await self.raw.sendall(data)

    async def _feed(self, timeout: float | None, what: str) -> None:
        data = await self.raw.recv(timeout, what)
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()

    async def handshake(self, timeout: float | None) -> None:
        """Complete the handshake; ssl.SSLError (bad certificate, not TLS) or
        ConnectionError when it fails, StreamTimeout when it stalls."""
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                if self._incoming.eof:
                    raise ConnectionError("connection closed during the TLS handshake") from None
                await self._feed(timeout, "TLS handshake")
        await self._flush()

    async def recv(self, timeout: float | None, what: str = "data") -> bytes:
        while True:
            try:
                return self._tls.read(RECV_SIZE)
            except ssl.SSLWantReadError:
                await self._flush()  # e.g. TLS 1.3 session tickets
                if self._incoming.eof:
                    return b""
                await self._feed(timeout, what)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""  # an unclean end shows up as a short body to h11

    async def sendall(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            step = view[:TLS_WRITE_SLICE]
            written = self._tls.write(step)
            view = view[written:]
            await self._flush()

    def close(self) -> None:
        with contextlib.suppress(ssl.SSLError, OSError):
            self._tls.unwrap()
        with contextlib.suppress(OSError):
            data = self._outgoing.read()
            if data:
                self.raw.sock.send(data)  # close_notify, best effort, never blocks long
        self.raw.close()


async def open_connection(host: str, port: int, timeout: float) -> SocketStream:
    """Connect to ``host:port`` (every address it resolves to, in order) within
    ``timeout``; OSError names the host when none answers."""
    loop = asyncio.get_running_loop()
    last: OSError | None = None
    async with asyncio.timeout(timeout):
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        for family, kind, proto, _name, address in infos:
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, address)
            except OSError as exc:
                sock.close()
                last = exc
                continue
            except BaseException:  # timed out or cancelled: no socket left behind
                sock.close()
                raise
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return SocketStream(sock)
    raise OSError(f"cannot connect to {host}:{port}: {last or 'no address'}")
