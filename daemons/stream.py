"""The stream layer: every protocol connection's bytes go through one of these.

A :class:`Stream` is one connected, non-blocking TCP socket seen as a byte stream, in
one of two forms:

* :class:`PlainStream`: the socket as it is. Payloads leave with sendfile(2) and
  arrive with recv_into a reused buffer (the zero-copy kernels of :mod:`d7y.ext.transfer`),
  everything else goes through the loop's ``sock_*`` calls.
* :class:`TLSStream`: TLS (``ssl.SSLObject`` over memory BIOs) on the same socket. The
  kernel never sees plaintext, so sendfile is impossible: a file range is read into a
  reused buffer, encrypted and sent (the copy path; bench/bench_tls.py measures it).

The servers (d7y.daemons.listener), the framing (d7y.daemons.framing) and the HTTP
upload endpoint only ever call a Stream's methods, so a transport is added here, once.
:func:`open_server_stream` and :func:`connect_stream` build the right one, running the
TLS handshake (bounded by a timeout) when a context is given.

One reader and one writer may use a stream at the same time (a server reads the next
request while a push goes out); two concurrent writers must take a lock of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from collections.abc import Awaitable

from d7y.core.protocol import Buffer
from d7y.ext.crc32 import crc32
from d7y.ext.transfer import ShortFileError, recv_into_exact, send_file

#: Ciphertext taken from the socket per receive on a TLS stream (a few TLS records).
TLS_RECV_SIZE = 256 * 1024
#: Plaintext encrypted per send on a TLS stream, and the file-read size of its copy
#: path: large enough that the per-call cost vanishes, small enough to stay in cache.
TLS_SEND_CHUNK = 256 * 1024


class PeerIdentity:
    """Who the other end of a mutually authenticated TLS connection is, by its
    certificate (issued by ``d7y certs``): ``name`` is the subject's common name (a
    host ID for peers and seed peers), ``role`` its organizational unit (``scheduler``,
    ``seed`` or ``peer``; empty when the certificate has none)."""

    __slots__ = ("name", "role")

    def __init__(self, name: str, role: str) -> None:
        self.name = name
        self.role = role

    @classmethod
    def from_certificate(cls, cert: dict | None) -> PeerIdentity | None:
        """From ``SSLObject.getpeercert()``; None without a (verified) certificate."""
        if not cert:
            return None
        fields: dict[str, str] = {}
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                fields.setdefault(key, value)
        return cls(fields.get("commonName", ""), fields.get("organizationalUnitName", ""))

    def __repr__(self) -> str:
        return f"PeerIdentity(name={self.name!r}, role={self.role!r})"


class Stream:
    """A connected byte stream (see the module docstring). Subclasses implement the
    transport; every method may raise OSError (ConnectionError and its kin) when the
    connection fails, and ``ssl.SSLError`` on a TLS stream whose peer misbehaves."""

    __slots__ = ("sock",)

    #: Whether bytes are encrypted (and payloads take the copy path).
    tls = False
    #: The verified peer certificate's identity, on a mutual TLS stream.
    peer_identity: PeerIdentity | None = None

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock

    def try_recv_into(self, view: memoryview | bytearray) -> int | None:
        """Bytes that are already here, into ``view``, without waiting: their count,
        0 at the end of the stream, None when a receive would have to wait."""
        raise NotImplementedError

    async def recv_into(self, view: memoryview | bytearray) -> int:
        """Receive at least one byte into ``view``: the count, or 0 at the end."""
        raise NotImplementedError

    async def recv(self, max_bytes: int) -> bytes:
        """Receive at least one byte, at most ``max_bytes``; b"" at the end."""
        raise NotImplementedError

    async def recv_exactly_into(self, view: memoryview) -> int:
        """Fill ``view`` completely; returns the CRC-32 of its bytes. Raises
        asyncio.IncompleteReadError (an EOFError) when the stream ends first."""
        raise NotImplementedError

    async def send_all(self, data: Buffer) -> None:
        """Send every byte of ``data``."""
        raise NotImplementedError

    async def send_file(self, fd: int, offset: int, count: int) -> None:
        """Send ``count`` bytes of the open file ``fd`` from ``offset``. Raises
        d7y.ext.transfer.ShortFileError when the file ends first (some bytes may have
        gone: the stream is out of step and must be closed)."""
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()

    @property
    def peer_address(self) -> str:
        try:
            host, port = self.sock.getpeername()[:2]
        except OSError:
            return "?"
        return f"{host}:{port}"


class PlainStream(Stream):
    """The socket as it is: sendfile(2) out, recv_into in (d7y.ext.transfer)."""

    __slots__ = ()

    def try_recv_into(self, view: memoryview | bytearray) -> int | None:
        try:
            return self.sock.recv_into(view)
        except BlockingIOError:
            return None

    # The loop's own awaitables, handed out as they are: a connection that waits for
    # bytes holds no coroutine frame of ours (idle connections must be cheap).
    def recv_into(self, view: memoryview | bytearray) -> Awaitable[int]:
        return asyncio.get_running_loop().sock_recv_into(self.sock, view)

    def recv(self, max_bytes: int) -> Awaitable[bytes]:
        return asyncio.get_running_loop().sock_recv(self.sock, max_bytes)

    async def recv_exactly_into(self, view: memoryview) -> int:
        return await recv_into_exact(self.sock, view, len(view))

    async def send_all(self, data: Buffer) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def send_file(self, fd: int, offset: int, count: int) -> None:
        await send_file(self.sock, fd, offset, count)


class TLSStream(Stream):
    """TLS on the socket, through an ``ssl.SSLObject`` and two memory BIOs: ciphertext
    is received and sent with the loop's ``sock_*`` calls, plaintext goes in and out of
    the SSLObject. File ranges take the copy path (pread, encrypt, send)."""

    __slots__ = ("_incoming", "_outgoing", "_send_lock", "_ssl", "peer_identity")

    tls = True

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, *, server_side: bool):
        super().__init__(sock)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side)
        # Ciphertext must leave in the order the SSLObject produced it: whoever sends
        # takes the pending bytes and writes them under this lock.
        self._send_lock = asyncio.Lock()
        self.peer_identity: PeerIdentity | None = None

    async def handshake(self) -> None:
        """Run the TLS handshake; ssl.SSLError when it fails (an untrusted or missing
        certificate, a peer that does not speak TLS), EOFError when the peer hangs up."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                self._ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                data = await loop.sock_recv(self.sock, TLS_RECV_SIZE)
                if not data:
                    raise EOFError(
                        "the peer closed the connection during the TLS handshake"
                    ) from None
                self._incoming.write(data)
            except ssl.SSLError:
                # Tell the peer why (the alert is pending), then fail.
                with contextlib.suppress(OSError):
                    await self._flush()
                raise
        await self._flush()
        self.peer_identity = PeerIdentity.from_certificate(self._ssl.getpeercert())

    def _read_plain(self, view: memoryview | bytearray) -> int | None:
        """Decrypt what the incoming BIO holds into ``view``: the count, 0 at the end,
        None when more ciphertext is needed."""
        try:
            return self._ssl.read(len(view), view)
        except ssl.SSLWantReadError:
            if self._incoming.eof:
                return 0
            return None
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            # A close_notify, or a TCP close without one: the end either way (a frame
            # cut short is caught by the framing, which knows where frames end).
            return 0

    def _take_ciphertext(self, data: bytes) -> None:
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()

    def try_recv_into(self, view: memoryview | bytearray) -> int | None:
        while True:
            n = self._read_plain(view)
            if n is not None:
                return n
            try:
                data = self.sock.recv(TLS_RECV_SIZE)
            except BlockingIOError:
                return None
            self._take_ciphertext(data)

    async def recv_into(self, view: memoryview | bytearray) -> int:
        loop = asyncio.get_running_loop()
        while True:
            n = self._read_plain(view)
            if n is not None:
                if self._outgoing.pending:  # e.g. a TLS 1.3 key update to answer
                    await self._flush()
                return n
            self._take_ciphertext(await loop.sock_recv(self.sock, TLS_RECV_SIZE))

    async def recv(self, max_bytes: int) -> bytes:
        buf = bytearray(max_bytes)
        n = await self.recv_into(memoryview(buf))
        del buf[n:]
        return bytes(buf)

    async def recv_exactly_into(self, view: memoryview) -> int:
        got, total = 0, len(view)
        while got < total:
            n = await self.recv_into(view[got:])
            if n == 0:
                raise asyncio.IncompleteReadError(bytes(view[:got]), total)
            got += n
        return crc32(view)

    async def _flush(self) -> None:
        async with self._send_lock:
            data = self._outgoing.read()
            if data:
                await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def send_all(self, data: Buffer) -> None:
        with memoryview(data) as view:
            view = view.cast("B")
            for start in range(0, len(view), TLS_SEND_CHUNK):
                self._ssl.write(view[start : start + TLS_SEND_CHUNK])
                await self._flush()

    async def send_file(self, fd: int, offset: int, count: int) -> None:
        buf = memoryview(bytearray(min(count, TLS_SEND_CHUNK)))
        sent = 0
        while sent < count:
            want = min(len(buf), count - sent)
            got = os.preadv(fd, [buf[:want]], offset + sent)
            if got == 0:
                raise ShortFileError(offset, count, sent)
            self._ssl.write(buf[:got])
            await self._flush()
            sent += got


async def open_server_stream(
    sock: socket.socket, context: ssl.SSLContext | None, *, handshake_timeout: float | None
) -> Stream:
    """The stream of an accepted connection: plain, or TLS once the handshake (within
    ``handshake_timeout`` seconds) succeeded. On failure the socket is not closed."""
    if context is None:
        return PlainStream(sock)
    stream = TLSStream(sock, context, server_side=True)
    async with asyncio.timeout(handshake_timeout):
        await stream.handshake()
    return stream


async def connect_stream(
    host: str, port: int, *, tls: ssl.SSLContext | None = None, timeout: float = 10.0
) -> Stream:
    """Connect to ``host:port`` (and run the TLS handshake when ``tls`` is given), all
    within ``timeout`` seconds; the socket is closed on any failure."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is None:
                return PlainStream(sock)
            stream = TLSStream(sock, tls, server_side=False)
            await stream.handshake()
            return stream
        except BaseException:
            sock.close()
            raise
