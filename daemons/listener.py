"""A TCP accept loop shared by the daemons' servers; it hands each connection over as
a stream (d7y.daemons.stream): plain, or TLS once its handshake succeeded.

The servers work on raw non-blocking sockets (not asyncio transports) because the plain
stream's hot paths use sendfile(2) and recv_into directly; this class owns the listening
socket, accepts connections, runs one handler task per connection (which begins with
the TLS handshake, bounded by ``handshake_timeout``, when the server has a TLS context)
and cancels them all on stop. A handshake that fails (a certificate from another CA, no
certificate, not TLS at all) is logged and the connection closed.

It also bounds how many connections are open at once, in total and from one IP
address: a connection over either limit is answered at once with the server's refusal
(``refusal(reason)`` gives the bytes, e.g. an Error frame or a 503) and closed, before
any task or buffer is made for it, so a flood of connections costs the daemon nothing
that lasts and the connections already open keep working. (On a TLS port the refusal
cannot be read by a client before a handshake, so it is just the close.)
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable

from d7y.daemons.stream import PlainStream, Stream, open_server_stream

log = logging.getLogger("d7y.listener")

#: After this many connections were open at once and most have gone, freed memory is
#: handed back to the OS (see _release_freed_memory).
TRIM_AFTER_PEAK = 256


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc
    except (OSError, AttributeError):
        return None


_malloc_trim = _load_malloc_trim()


def _release_freed_memory() -> None:
    """glibc keeps the heap pages of freed small buffers (a closed connection's) for
    reuse; after a burst of connections that is most of the burst's memory, held for
    good. malloc_trim gives free pages back to the OS (a no-op without glibc)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


#: Refusals are logged at most this often per listener (a flood must not flood the log).
REFUSAL_LOG_INTERVAL = 5.0


class Listener:
    def __init__(
        self,
        handler: Callable[[Stream, tuple], Awaitable[None]],
        *,
        name: str = "",
        max_connections: int = 0,
        max_connections_per_ip: int = 0,
        refusal: Callable[[str], bytes] | None = None,
        tls: ssl.SSLContext | None = None,
        handshake_timeout: float | None = 10.0,
    ) -> None:
        """``max_connections`` / ``max_connections_per_ip``: limits (0 = none); ``tls``:
        the server's TLS context (None: plain TCP)."""
        self._handler = handler
        self.name = name
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip
        self._refusal = None if tls is not None else refusal
        self._tls = tls
        self.handshake_timeout = handshake_timeout
        self.handshakes_failed = 0
        self._handshake_failure_logged_at = -REFUSAL_LOG_INTERVAL
        self._sock: socket.socket | None = None
        self._accept_task: asyncio.Task | None = None
        self._connections: set[asyncio.Task] = set()
        self._per_ip: dict[str, int] = {}
        self.refused = 0
        self._refusals_logged_at = -REFUSAL_LOG_INTERVAL
        self._peak = 0  # most connections open at once since memory was last trimmed
        self.port = 0

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    async def start(self, host: str, port: int, backlog: int = 1024) -> None:
        sock = socket.create_server((host, port), backlog=backlog)
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._accept_task = asyncio.get_running_loop().create_task(self._accept_loop())

    async def stop_accepting(self) -> None:
        """Close the listening socket; the connections open go on (a drain)."""
        if self._accept_task is not None:
            self._accept_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accept_task
        if self._sock is not None:
            self._sock.close()

    async def stop(self) -> None:
        """Stop accepting, cancel every connection handler and wait for them."""
        await self.stop_accepting()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    def _over_limit(self, ip: str) -> str | None:
        """Why a new connection from ``ip`` is refused, or None."""
        if self.max_connections and len(self._connections) >= self.max_connections:
            return (
                f"{self.name or 'server'} has {len(self._connections)} connections open, "
                f"its limit (max_connections {self.max_connections}): retry later"
            )
        if self.max_connections_per_ip and self._per_ip.get(ip, 0) >= self.max_connections_per_ip:
            return (
                f"{self.name or 'server'} has {self._per_ip[ip]} connections open from {ip}, "
                f"the limit per address (max_connections_per_ip "
                f"{self.max_connections_per_ip}): close some or retry later"
            )
        return None

    def _refuse(self, conn: socket.socket, ip: str, reason: str) -> None:
        self.refused += 1
        if self._refusal is not None:
            # One small write into an empty socket buffer: it does not block, and when
            # it cannot be written whole the client simply sees the close.
            with contextlib.suppress(OSError):
                conn.send(self._refusal(reason))
        conn.close()
        now = time.monotonic()
        if now - self._refusals_logged_at >= REFUSAL_LOG_INTERVAL:
            self._refusals_logged_at = now
            log.warning(
                "connection refused port=%d client=%s refused_so_far=%d: %s",
                self.port,
                ip,
                self.refused,
                reason,
            )

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        while True:
            try:
                conn, address = await loop.sock_accept(self._sock)
            except OSError as exc:  # EMFILE and friends: back off, keep serving
                log.warning("accept failed port=%d error=%s", self.port, exc)
                await asyncio.sleep(0.1)
                continue
            ip = address[0]
            conn.setblocking(False)
            reason = self._over_limit(ip)
            if reason is not None:
                self._refuse(conn, ip, reason)
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
            if self._tls is None:  # nothing to wait for: no wrapper coroutine to keep
                task = loop.create_task(self._handler(PlainStream(conn), address))
            else:
                task = loop.create_task(self._run(conn, address))
            self._connections.add(task)
            self._peak = max(self._peak, len(self._connections))
            task.add_done_callback(lambda t, ip=ip: self._closed(t, ip))

    async def _run(self, conn: socket.socket, address: tuple) -> None:
        try:
            stream = await open_server_stream(
                conn, self._tls, handshake_timeout=self.handshake_timeout
            )
        except (ssl.SSLError, OSError, EOFError) as exc:  # TimeoutError is an OSError
            self.handshakes_failed += 1
            conn.close()
            now = time.monotonic()
            if now - self._handshake_failure_logged_at >= REFUSAL_LOG_INTERVAL:
                self._handshake_failure_logged_at = now  # a flood must not flood the log
                log.warning(
                    "TLS handshake refused port=%d client=%s:%s failed_so_far=%d error=%s",
                    self.port,
                    address[0],
                    address[1],
                    self.handshakes_failed,
                    str(exc) or type(exc).__name__,
                )
            return
        await self._handler(stream, address)

    def _closed(self, task: asyncio.Task, ip: str) -> None:
        self._connections.discard(task)
        left = self._per_ip.get(ip, 1) - 1
        if left > 0:
            self._per_ip[ip] = left
        else:
            self._per_ip.pop(ip, None)
        if self._peak >= TRIM_AFTER_PEAK and len(self._connections) * 4 <= self._peak:
            self._peak = len(self._connections)
            _release_freed_memory()
