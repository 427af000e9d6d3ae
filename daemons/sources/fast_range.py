"""A zero-copy fast path for ranged GETs from plain-HTTP origins.

aiohttp hands a response body to Python as a stream of small bytes objects that must
then be copied into the piece buffer; on loopback that caps an origin download at a few
hundred MiB/s. For the common case (http://, a 206 with a Content-Length, keep-alive)
this module sends the request itself on a pooled non-blocking socket, parses the
response head, and reads the body straight into the caller's piece buffer with
:func:`d7y.ext.transfer.recv_into_exact`: one copy (kernel to buffer), no chunk objects.

It is only an optimisation. Anything unusual — https, a status other than 206, chunked
encoding, a Content-Range that does not match, a connection that breaks — raises
:class:`FastPathUnavailable`, and the caller repeats the piece through
:class:`~d7y.daemons.sources.http.OriginClient`, which owns retries, backoff and the
error messages users see. Two answers are final here, as they are there: a 206 of
another version of the object than the probe saw (ETag, Last-Modified or total length
differ: :class:`~d7y.daemons.sources.base.ContentChanged`), and an address the fetch
policy refuses (:class:`~d7y.daemons.sources.policy.SourceRefused`).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping
from urllib.parse import urlsplit

from d7y.daemons.sources.base import SourceInfo, check_same_version
from d7y.daemons.sources.policy import SourcePolicy
from d7y.ext.transfer import recv_into_exact

MAX_HEAD = 64 * 1024
#: Request headers we set ourselves; the user's values for these are not forwarded.
_OWN_HEADERS = {"host", "range", "if-range", "connection", "accept-encoding", "content-length"}
_HOP_BY_HOP = {"keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}


class FastPathUnavailable(Exception):
    """This request needs the general client; the message says why (for debug logs)."""


class FastRangeFetcher:
    """Pooled raw-socket ranged GETs for http:// origins.

    With a ``policy``, every address connected to is checked against it first (the
    address actually used, so DNS cannot change in between); a fetcher's pool serves
    one policy only, so a connection opened for the local user is never reused for a
    remote party's download.
    """

    def __init__(
        self,
        *,
        max_idle_per_host: int = 32,
        user_agent: str = "d7y-dfdaemon/0.1",
        policy: SourcePolicy | None = None,
    ):
        self._idle: dict[tuple[str, int], list[socket.socket]] = {}
        self._max_idle = max_idle_per_host
        self._user_agent = user_agent
        self.policy = policy
        self.bytes_received = 0

    def close(self) -> None:
        for sockets in self._idle.values():
            for sock in sockets:
                sock.close()
        self._idle.clear()

    async def _connect(self, host: str, port: int, url: str) -> socket.socket:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if self.policy is not None:
            for info in infos:
                self.policy.check_address(host, str(info[4][0]), url)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
        except BaseException:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _request(
        self, parts, headers: Mapping[str, str] | None, start: int, end: int, if_range: str | None
    ) -> bytes:
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        lines = [
            f"GET {target} HTTP/1.1",
            f"Host: {parts.netloc}",
            f"Range: bytes={start}-{end}",
            "Accept-Encoding: identity",
            f"User-Agent: {self._user_agent}",
        ]
        if if_range:
            lines.append(f"If-Range: {if_range}")
        for name, value in (headers or {}).items():
            lower = name.lower()
            if lower in _OWN_HEADERS or lower in _HOP_BY_HOP or lower == "user-agent":
                continue
            if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
                raise FastPathUnavailable(f"header {name!r} contains a line break")
            lines.append(f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def fetch(
        self,
        url: str,
        headers: Mapping[str, str] | None,
        offset: int,
        length: int,
        into: memoryview,
        *,
        info: SourceInfo | None = None,
    ) -> None:
        """Read bytes [offset, offset + length) of ``url`` into ``into[:length]``.

        ``info`` is the probe's answer: its validator goes out as If-Range and the 206
        must describe the same version (else ContentChanged)."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or length <= 0:
            raise FastPathUnavailable(f"not a plain http range: {parts.scheme}")
        if_range = info.if_range if info is not None else None
        try:
            request = self._request(parts, headers, offset, offset + length - 1, if_range)
        except UnicodeEncodeError:
            raise FastPathUnavailable("non-latin-1 request header") from None
        key = (parts.hostname, parts.port or 80)
        idle = self._idle.setdefault(key, [])
        # A pooled connection may have been closed by the origin while idle; then try
        # once more on a fresh one before giving up on the fast path.
        for reused in (True, False):
            if reused and not idle:
                continue
            sock = idle.pop() if reused else await self._connect(*key, url)
            try:
                keep = await self._exchange(sock, request, offset, length, into, url, info)
            except _StaleConnection:
                sock.close()
                continue
            except BaseException:
                sock.close()
                raise
            if keep and len(idle) < self._max_idle:
                idle.append(sock)
            else:
                sock.close()
            return
        raise FastPathUnavailable("origin closed the connection before answering")

    async def _exchange(
        self,
        sock: socket.socket,
        request: bytes,
        offset: int,
        length: int,
        into: memoryview,
        url: str,
        info: SourceInfo | None,
    ) -> bool:
        """Send the request, read head and body; True if the connection can be reused."""
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_sendall(sock, request)
        except (BrokenPipeError, ConnectionResetError):
            raise _StaleConnection from None
        head = bytearray()
        while True:
            try:
                chunk = await loop.sock_recv(sock, MAX_HEAD)
            except ConnectionResetError:
                raise _StaleConnection from None
            if not chunk:
                if not head:
                    raise _StaleConnection
                raise FastPathUnavailable("origin closed the connection in the response head")
            head += chunk
            end = head.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(head) > MAX_HEAD:
                raise FastPathUnavailable("response head too large")
        status, fields = _parse_head(bytes(head[:end]))
        body = memoryview(head)[end + 4 :]
        expected_range = f"bytes {offset}-{offset + length - 1}/"
        if (
            status != 206
            or "transfer-encoding" in fields
            or fields.get("content-length") != str(length)
            or not fields.get("content-range", "").startswith(expected_range)
            or len(body) > length
        ):
            raise FastPathUnavailable(f"unexpected response: status {status}")
        if info is not None:
            total = fields["content-range"][len(expected_range) :].strip()
            check_same_version(
                url,
                info,
                etag=fields.get("etag"),
                last_modified=fields.get("last-modified"),
                total=int(total) if total.isdigit() else None,
                status=206,
            )
        view = memoryview(into)
        view[: len(body)] = body
        if len(body) < length:
            try:
                await recv_into_exact(sock, view[len(body) : length], length - len(body))
            except (EOFError, ConnectionError) as exc:
                raise FastPathUnavailable(f"body cut short: {exc}") from None
        self.bytes_received += length
        return "close" not in fields.get("connection", "").lower()


class _StaleConnection(Exception):
    pass


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/1."):
        raise FastPathUnavailable(f"not an HTTP/1.x response: {lines[0][:60]!r}")
    try:
        status = int(status_line[1])
    except ValueError:
        raise FastPathUnavailable(f"bad status line {lines[0][:60]!r}") from None
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise FastPathUnavailable(f"bad header line {line[:60]!r}")
        key = name.strip().lower()
        if key in fields:  # repeated fields: keep them all (matters for Content-Length)
            fields[key] += "," + value.strip()
        else:
            fields[key] = value.strip()
    return status, fields
