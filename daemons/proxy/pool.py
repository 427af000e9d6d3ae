"""Kept-alive upstream connections of the proxy's direct route.

A registry pull is dozens of small direct requests (token, manifests, configs) to the
same few hosts; opening a TCP (and TLS) connection for each costs more than the request.
After an answer that left the upstream connection reusable (HTTP/1.1, both messages
complete, no ``Connection: close``) the stream is parked here, per (scheme, host, port),
and the next request to that upstream takes it. Bounded: at most ``max_idle_per_host``
parked per upstream and ``max_idle`` in all (the oldest goes first); each is closed after
``idle_timeout`` unused. A parked connection the upstream closed meanwhile is noticed
before reuse (it reads as end of stream) and dropped.
"""

from __future__ import annotations

import asyncio
import socket
from collections import OrderedDict
from typing import Protocol


class PooledStream(Protocol):
    @property
    def sock(self) -> socket.socket: ...
    def close(self) -> None: ...


Key = tuple[str, str, int]  # scheme, host, port


class UpstreamPool:
    def __init__(self, *, max_idle_per_host: int, max_idle: int, idle_timeout: float) -> None:
        self.max_idle_per_host = max_idle_per_host
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        # Oldest first; each entry: the stream and the timer that closes it.
        self._idle: OrderedDict[int, tuple[Key, PooledStream, asyncio.TimerHandle]] = OrderedDict()
        self._counter = 0

    @property
    def enabled(self) -> bool:
        return self.max_idle_per_host > 0 and self.max_idle > 0 and self.idle_timeout > 0

    def __len__(self) -> int:
        return len(self._idle)

    def take(self, key: Key) -> PooledStream | None:
        """A parked connection to ``key`` that is still open (newest first), or None."""
        for ident in reversed([i for i, (k, _s, _t) in self._idle.items() if k == key]):
            _key, stream, timer = self._idle.pop(ident)
            timer.cancel()
            if _still_open(stream):
                return stream
            stream.close()
        return None

    def give(self, key: Key, stream: PooledStream) -> None:
        """Park a connection whose last exchange ended cleanly (or close it when the
        pool is off or full for that upstream)."""
        if not self.enabled:
            stream.close()
            return
        same = [i for i, (k, _s, _t) in self._idle.items() if k == key]
        if len(same) >= self.max_idle_per_host:
            self._drop(same[0])
        while len(self._idle) >= self.max_idle:
            self._drop(next(iter(self._idle)))
        self._counter += 1
        ident = self._counter
        timer = asyncio.get_running_loop().call_later(self.idle_timeout, self._drop, ident)
        self._idle[ident] = (key, stream, timer)

    def close(self) -> None:
        for ident in list(self._idle):
            self._drop(ident)

    def _drop(self, ident: int) -> None:
        entry = self._idle.pop(ident, None)
        if entry is not None:
            _key, stream, timer = entry
            timer.cancel()
            stream.close()


def _still_open(stream: PooledStream) -> bool:
    """An idle connection has nothing to read: end of stream (the upstream closed it)
    or unexpected bytes (a TLS close_notify, garbage) both make it unusable."""
    try:
        stream.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return True  # nothing to read: open and quiet
    except OSError:
        return False
    return False
