"""A TCP accept loop on raw non-blocking sockets, shared by the daemons' servers.

The servers work on raw sockets (not asyncio transports) because their hot paths use
sendfile(2) and recv_into directly; this class owns the listening socket, accepts
connections, runs one handler task per connection and cancels them all on stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable

log = logging.getLogger("d7y.listener")


class Listener:
    def __init__(self, handler: Callable[[socket.socket, tuple], Awaitable[None]]) -> None:
        self._handler = handler
        self._sock: socket.socket | None = None
        self._accept_task: asyncio.Task | None = None
        self._connections: set[asyncio.Task] = set()
        self.port = 0

    async def start(self, host: str, port: int, backlog: int = 1024) -> None:
        sock = socket.create_server((host, port), backlog=backlog)
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._accept_task = asyncio.get_running_loop().create_task(self._accept_loop())

    async def stop(self) -> None:
        """Stop accepting, cancel every connection handler and wait for them."""
        if self._accept_task is not None:
            self._accept_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accept_task
        if self._sock is not None:
            self._sock.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

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
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = loop.create_task(self._handler(conn, address))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)
