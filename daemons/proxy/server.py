"""dfdaemon's HTTP proxy and registry mirror (port 4001).

Container runtimes and download tools talk to it instead of the registry or origin:

- a GET the rules send P2P (by default ``blobs/sha256.*``, or any GET with
  ``X-Dragonfly-Use-P2P: true``) becomes a task of this peer (the TaskManager's
  ``start(..., streaming=True)``), and the response streams the task's bytes in order
  as its pieces land (``read_in_order``); a Range is answered from the task (206);
  the answer carries ``X-Dragonfly-Task-ID``;
- every other request goes direct: its head and body are streamed to the upstream and
  the upstream's answer streamed back, never buffered whole;
- ``CONNECT host:port`` is a plain tunnel, or, with ``proxy.ca_cert``/``ca_key``, is
  hijacked: TLS is terminated with a leaf certificate for the host and the HTTP/1.1
  requests inside are handled as above for ``https://host``.

HTTP is parsed with h11 on the listener's raw sockets (as the upload server does), TLS
by memory BIOs (streams.py). Errors the proxy makes itself carry
``X-Dragonfly-Error-Type``. When a P2P task fails because the origin answered an error
status (a registry's 401 challenge, a 404), the request is repeated direct so that the
client gets the origin's own answer, headers included.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import hmac
import logging
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator
from http import HTTPStatus
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import h11

from d7y.core import proxy as routing
from d7y.core.http_range import RangeError, RangeSpec, parse_range_spec
from d7y.daemons.listener import Listener
from d7y.daemons.peer.http_upload import SendfileBody
from d7y.daemons.peer.storage import TASK_SUCCEEDED
from d7y.daemons.peer.task_manager import (
    DownloadError,
    DownloadRequest,
    FailureKind,
    Task,
    TaskManager,
)
from d7y.daemons.proxy.config import ProxyConfig
from d7y.daemons.proxy.metrics import ProxyMetrics
from d7y.daemons.proxy.output import OutputPathError, OutputWriter
from d7y.daemons.proxy.pool import UpstreamPool
from d7y.daemons.proxy.streams import (
    SocketStream,
    StreamTimeout,
    TLSStream,
    open_connection,
)
from d7y.daemons.proxy.tls import LeafCertificates, upstream_context
from d7y.ext.transfer import send_file

log = logging.getLogger("d7y.dfdaemon.proxy")

SERVER = b"d7y-dfdaemon"
TASK_ID_HEADER = b"x-dragonfly-task-id"
ERROR_TYPE_HEADER = b"x-dragonfly-error-type"

#: The HTTP status of a P2P task's failure, by kind.
_STATUS_OF_FAILURE = {
    FailureKind.BAD_REQUEST: 400,
    FailureKind.TIMEOUT: 504,
    FailureKind.NO_SPACE: 507,
    FailureKind.ORIGIN: 502,
    FailureKind.NO_SOURCE: 502,
    FailureKind.DIGEST: 502,
    FailureKind.INTERNAL: 500,
}


_KNOWN_STATUSES = frozenset(int(s) for s in HTTPStatus)

#: How often one P2P answer may start the task again because the download it joined
#: ended without the pieces it needs (a partial download for another Range).
_MAX_TASK_RESTARTS = 8


class _Stream(Protocol):
    """What the handlers need of a stream (SocketStream or TLSStream)."""

    async def recv(self, timeout: float | None, what: str = "data") -> bytes: ...
    async def sendall(self, data: bytes | memoryview) -> None: ...
    def close(self) -> None: ...


class _UpstreamCut(Exception):
    """The upstream broke its answer after the status line was sent: cut the client."""


class _StaleUpstream(Exception):
    """A kept-alive upstream connection turned out closed before it answered."""


class _Upstream:
    """A connection to an upstream of the direct route and its HTTP/1.1 client state,
    kept together so that a kept-alive connection resumes where h11 left it."""

    def __init__(self, stream: _Stream, max_header_size: int) -> None:
        self.stream = stream
        self.http = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_header_size)
        self.reused = False

    @property
    def sock(self) -> socket.socket:
        return self.stream.sock  # type: ignore[attr-defined]

    def close(self) -> None:
        self.stream.close()


class ProxyServer:
    def __init__(
        self,
        manager: TaskManager,
        config: ProxyConfig,
        metrics: ProxyMetrics,
        *,
        upstream_ssl: ssl.SSLContext | None = None,
    ) -> None:
        self.manager = manager
        self.config = config
        self.metrics = metrics
        self.rules = config.compiled_rules()
        self.filtered_query_params = list(config.filtered_query_params)
        self.upstream_ssl = upstream_ssl or upstream_context(
            config.upstream_ca_bundle, config.insecure_skip_verify
        )
        self.leaves = (
            LeafCertificates(config.ca_cert, config.ca_key, on_issue=metrics.certificates.inc)
            if config.ca_cert is not None and config.ca_key is not None
            else None
        )
        self.idle_timeout = float(config.idle_timeout) or None
        self.request_timeout = float(config.request_timeout)
        self.read_timeout = float(config.read_timeout)
        self.connect_timeout = float(config.connect_timeout)
        auth = config.basic_auth
        self._credentials = (
            b"Basic " + base64.b64encode(f"{auth.username}:{auth.password}".encode())
            if auth.username
            else None
        )
        self._rate = _RequestRate(float(config.rate_limit))
        self.outputs = OutputWriter(list(config.output_dirs), manager.storage.data_dir)
        self._background: set[asyncio.Task[None]] = set()  # prefetches
        self.allowlist = routing.UpstreamAllowlist(config.upstream_allow)
        self.listen_host = config.listen
        self.pool = UpstreamPool(
            max_idle_per_host=config.upstream_max_idle_per_host,
            max_idle=config.upstream_max_idle,
            idle_timeout=float(config.upstream_idle_timeout),
        )
        metrics.upstream_idle.set_function(lambda: len(self.pool))
        self._listener = Listener(
            # The listener is plain TCP here (no ``tls``): its stream is a bare socket,
            # which the proxy's own streams take over (a CONNECT may turn it into TLS).
            lambda stream, _address: self._serve(SocketStream(stream.sock), tunnel=None),
            name="proxy port",
            max_connections=config.max_connections,
            max_connections_per_ip=config.max_connections_per_ip,
            refusal=_refusal,
        )

    @property
    def port(self) -> int:
        return self._listener.port

    async def start(self, host: str, port: int) -> None:
        self.listen_host = host
        await self._listener.start(host, port)

    async def stop(self) -> None:
        await self._listener.stop()
        self.pool.close()
        for job in list(self._background):
            job.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    # -- one client connection -------------------------------------------------------

    async def _serve(self, stream: _Stream, *, tunnel: str | None) -> None:
        """Serve requests on a client connection (or inside a hijacked tunnel to
        ``tunnel``, host:port) until it closes or a request needs it closed."""
        http = h11.Connection(h11.SERVER, max_incomplete_event_size=self.config.max_header_size)
        try:
            while True:
                event = await self._next_request(stream, http)
                if event is None:
                    return
                refusal = self._refusal(event, tunnel)
                if refusal is not None:
                    status, message, kind, extra = refusal
                    self.metrics.errors.labels(kind).inc()
                    await self._drain_body(stream, http)
                    head = event.method == b"HEAD"
                    await self._answer(stream, http, status, message, kind, extra, head=head)
                    if http.our_state is not h11.DONE or http.their_state is not h11.DONE:
                        return
                    http.start_next_cycle()
                    continue
                if event.method == b"CONNECT":
                    if tunnel is not None:
                        await self._answer(
                            stream, http, 400, "CONNECT inside a tunnel is not supported",
                            "bad_request",
                        )  # fmt: skip
                        return
                    await self._connect(stream, http, event)
                    return
                keep = await self._handle(stream, http, event, tunnel)
                if not keep or http.our_state is not h11.DONE or http.their_state is not h11.DONE:
                    return
                http.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            self.metrics.errors.labels("bad_request").inc()
            if http.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                # h11 may refuse to answer (the request line never completed): then the
                # close is the answer.
                with contextlib.suppress(OSError, ssl.SSLError, h11.LocalProtocolError):
                    await self._answer(
                        stream, http, exc.error_status_hint, f"bad request: {exc}", "bad_request"
                    )
        except StreamTimeout as exc:
            log.debug("closing proxy connection: %s", exc)
        except (ConnectionError, OSError, ssl.SSLError, EOFError):
            pass  # the client went away (or broke TLS); nothing to tell it
        except _UpstreamCut:
            pass  # already counted and logged; closing tells the client
        except Exception:
            log.exception("proxy connection crashed")
        finally:
            stream.close()

    def _refusal(
        self, req: h11.Request, tunnel: str | None
    ) -> tuple[int, str, str, list[tuple[bytes, bytes]]] | None:
        """Why a request is refused before it is looked at (rate limit, proxy basic
        auth), or None. Requests inside a hijacked tunnel were authorised by its CONNECT."""
        if not self._rate.take():
            return (
                429,
                f"over proxy.rate_limit ({self.config.rate_limit:g} requests/s): retry later",
                "rate_limited",
                [(b"retry-after", b"1")],
            )
        absolute = req.target.startswith((b"http://", b"https://"))
        if self._credentials is None or tunnel is not None:
            return None
        if not absolute and req.method != b"CONNECT":
            return None  # a registry-mirror request: the runtime cannot authenticate it
        given = [v for k, v in req.headers if k == b"proxy-authorization"]
        if given and hmac.compare_digest(given[-1].strip(), self._credentials):
            return None
        return (
            407,
            "proxy authentication required: give proxy.basic_auth's user and password "
            "(e.g. curl -U user:password)",
            "proxy_auth",
            [(b"proxy-authenticate", b'Basic realm="d7y proxy"')],
        )

    def _forbidden(self, authority: str, default_port: int) -> str | None:
        """Why the proxy must not reach ``authority`` (host[:port]), or None: a host
        outside proxy.upstream_allow, or this proxy's own port (a request loop)."""
        try:
            host, port = routing.split_authority(authority, default_port)
        except ValueError:
            return None  # not an address at all: the route answers it (400, 502)
        if not self.allowlist.allows(host):
            return (
                f"upstream {host!r} is not in proxy.upstream_allow: this proxy may reach "
                f"only {', '.join(self.config.upstream_allow)}"
            )
        if port == self.port and host in ("127.0.0.1", "::1", "localhost", self.listen_host):
            return f"upstream {authority!r} is this proxy itself: a request loop"
        return None

    async def _next_request(self, stream: _Stream, http: h11.Connection) -> h11.Request | None:
        """The next request head: the first bytes within the idle timeout, the rest of
        the head within the request timeout. None when the client is done."""
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                if deadline is None:
                    data = await stream.recv(self.idle_timeout, "new request")
                    deadline = loop.time() + self.request_timeout
                else:
                    left = max(deadline - loop.time(), 0.0)
                    data = await stream.recv(left, "rest of a request head")
                http.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                # h11 bounds a head that arrives in pieces; one that came in a single
                # read is measured here, so the limit does not depend on packet sizes.
                size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
                if size > self.config.max_header_size:
                    raise h11.RemoteProtocolError(
                        f"request head of {size} bytes is over proxy.max_header_size "
                        f"({self.config.max_header_size})",
                        error_status_hint=431,
                    )
                return event
            return None  # ConnectionClosed, PAUSED

    async def _next(self, stream: _Stream, http: h11.Connection, what: str):
        """The next h11 event of a message body (reads as needed, read timeout each)."""
        while True:
            event = http.next_event()
            if event is not h11.NEED_DATA:
                return event
            http.receive_data(await stream.recv(self.read_timeout, what))

    async def _answer(
        self,
        stream: _Stream,
        http: h11.Connection,
        status: int,
        message: str,
        error_type: str,
        extra: list[tuple[bytes, bytes]] | None = None,
        *,
        head: bool = False,
    ) -> None:
        """A short text answer the proxy makes itself, with its error type."""
        body = message.encode() + b"\n"
        headers = [
            *(extra or []),
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"server", SERVER),
        ]
        if status >= 400:
            headers.append((ERROR_TYPE_HEADER, error_type.encode()))
        if http.their_state is not h11.DONE:
            headers.append((b"connection", b"close"))  # its body was not read
        reason = HTTPStatus(status).phrase.encode() if status in _KNOWN_STATUSES else b""
        data = http.send(h11.Response(status_code=status, headers=headers, reason=reason))
        if not head:
            data += http.send(h11.Data(data=body))
        data += http.send(h11.EndOfMessage())
        await stream.sendall(data)

    # -- routing ---------------------------------------------------------------------

    async def _handle(
        self, stream: _Stream, http: h11.Connection, req: h11.Request, tunnel: str | None
    ) -> bool:
        """Answer one request; False when the connection must close."""
        headers = list(req.headers.raw_items())
        # Methods are case-sensitive (RFC 9110 9.1), and h11 frames the answer by the
        # method as sent: "head" is not HEAD, and its answer has a body.
        method = req.method.decode("latin-1")
        target = req.target.decode("latin-1")
        head = method == "HEAD"
        try:
            options = routing.parse_dragonfly_headers(headers)
            url = routing.upstream_url(
                target,
                headers,
                tunnel_authority=tunnel,
                mirror_addr=self.config.registry_mirror.addr,
                plain_http_registries=self.config.registry_mirror.plain_http_registries,
            )
        except routing.ProxyRequestError as exc:
            self.metrics.errors.labels("bad_request").inc()
            await self._answer(stream, http, 400, str(exc), "bad_request", head=head)
            return False
        choice = routing.route(method, url, options, self.rules)
        target_parts = urlsplit(choice.url)
        forbidden = self._forbidden(
            target_parts.netloc, 443 if target_parts.scheme == "https" else 80
        )
        if forbidden is not None:
            self.metrics.errors.labels("upstream_forbidden").inc()
            await self._drain_body(stream, http)
            await self._answer(stream, http, 403, forbidden, "upstream_forbidden", head=head)
            return True
        self.metrics.active.inc()
        try:
            if choice.p2p:
                self.metrics.requests.labels("p2p").inc()
                return await self._p2p(stream, http, headers, choice, options)
            self.metrics.requests.labels("direct").inc()
            return await self._direct(stream, http, method, url, headers)
        finally:
            self.metrics.active.dec()

    # -- P2P -------------------------------------------------------------------------

    async def _p2p(
        self,
        stream: _Stream,
        http: h11.Connection,
        headers: list[tuple[bytes, bytes]],
        choice: routing.Route,
        options: routing.DragonflyOptions,
    ) -> bool:
        request = DownloadRequest(
            url=choice.url,
            headers=routing.task_headers(headers),
            tag=options.tag,
            application=options.application,
            filtered_query_params=routing.filtered_query_params(
                options, choice.rule, self.filtered_query_params
            ),
            piece_length=options.piece_length,
            priority=options.priority,
            content_for_task_id=options.content_for_task_id,
        )
        await self._drain_body(stream, http)
        spec = _range_spec(headers)
        output = None
        if options.output_path:
            try:
                if spec is not None:
                    raise OutputPathError(
                        400,
                        "X-Dragonfly-Output-Path writes the whole object: send the request "
                        "without Range",
                    )
                output = self.outputs.check(options.output_path, options.force_hard_link)
            except OutputPathError as exc:
                self.metrics.errors.labels("output_path").inc()
                await self._answer(stream, http, exc.status, str(exc), "output_path")
                return True
        try:
            task = self.manager.start(request, streaming=True, byte_range=spec)
        except DownloadError as exc:
            return await self._task_failed(stream, http, exc, None)
        try:
            await self._wait_geometry(task)
        except DownloadError as exc:
            return await self._failed_before_body(stream, http, headers, choice.url, task, exc)
        length = task.content_length or 0
        selected = None
        if spec is not None:
            try:
                selected = spec.resolve(length)
            except RangeError as exc:
                self.metrics.errors.labels("range").inc()
                extra = [(b"content-range", f"bytes */{length}".encode())]
                extra.append((TASK_ID_HEADER, task.id.encode()))
                await self._answer(stream, http, 416, str(exc), "range", extra)
                return True
            prefetch = self.config.prefetch if options.prefetch is None else options.prefetch
            if prefetch:
                self._prefetch(request, task)
        start, count = (selected.start, selected.length) if selected else (0, length)
        sent = await self._send_stored(stream, http, task, selected, start, count)
        if sent is _Stored.DAMAGED:
            # Stored pieces failed their check and were dropped: a new download of the
            # task fetches them again, and the answer streams from it.
            await self.manager.wait_ended(task)
            task = self.manager.start(request, streaming=True, byte_range=spec)
        if sent is not _Stored.SENT:
            blocks = self._task_bytes(request, task, spec is None, start, start + count)
            try:
                try:
                    first = await self._next_block(blocks) if count else None
                except DownloadError as exc:
                    return await self._failed_before_body(
                        stream, http, headers, choice.url, task, exc
                    )
                await self._send_task(stream, http, task, selected, count, first, blocks)
            finally:
                await blocks.aclose()
        if output is not None:
            await self._write_output(task, output, options.force_hard_link)
        await stream.sendall(http.send(h11.EndOfMessage()))
        return True

    async def _wait_geometry(self, task: Task) -> None:
        """Until the task's length and piece length are known (a Range is resolved
        against them); the task's failure, or TIMEOUT after proxy.read_timeout."""
        try:
            async with asyncio.timeout(self.read_timeout):
                while task.content_length is None or not task.piece_length:
                    if task.done.done():
                        task.done.result()  # raises its failure
                        if task.content_length is None:
                            raise DownloadError(
                                FailureKind.INTERNAL, f"task {task.id} ended without a length"
                            )
                        return
                    await task.wait_change()
        except TimeoutError:
            raise DownloadError(
                FailureKind.TIMEOUT,
                f"the length of the object was not known within proxy.read_timeout "
                f"({self.read_timeout:g}s)",
            ) from None

    async def _failed_before_body(
        self,
        stream: _Stream,
        http: h11.Connection,
        headers: list[tuple[bytes, bytes]],
        url: str,
        task: Task,
        exc: DownloadError,
    ) -> bool:
        if exc.status is not None and exc.status >= 300:
            # The origin answered an error status (a 401 challenge, a 404): let the
            # client see that answer itself, headers and all.
            self.metrics.p2p_fallbacks.inc()
            log.info(
                "p2p task failed with origin status %s, repeating direct task=%s url=%s",
                exc.status,
                task.id,
                url,
            )
            return await self._direct(stream, http, "GET", url, headers)
        return await self._task_failed(stream, http, exc, task.id)

    async def _task_bytes(
        self, request: DownloadRequest, task: Task, whole: bool, start: int, end: int
    ) -> AsyncIterator[bytes]:
        """The task's bytes [start, end) in order as they land. A download this request
        joined may be a partial one for another Range, and end without these bytes: then
        the task is started again for what is still missing (its stored pieces stay)."""
        offset = start
        for _ in range(_MAX_TASK_RESTARTS + 1):
            async for block in self.manager.read_in_order(task, start=offset, end=end):
                offset += len(block)
                yield block
            if offset >= end:
                return
            await self.manager.wait_ended(task)
            log.info("task ended without bytes %d-%d, starting it again task=%s",
                     offset, end - 1, task.id)  # fmt: skip
            task = self.manager.start(
                request, streaming=True, byte_range=None if whole else RangeSpec(offset, end - 1)
            )
        raise DownloadError(
            FailureKind.INTERNAL,
            f"bytes {offset}-{end - 1} of task {task.id} never arrived after "
            f"{_MAX_TASK_RESTARTS} restarts",
        )

    def _prefetch(self, request: DownloadRequest, task: Task) -> None:
        """X-Dragonfly-Prefetch: once the Range's partial download ends, fetch the whole
        task in the background (only the pieces still missing)."""

        async def whole() -> None:
            await self.manager.wait_ended(task)
            if task.bitmap is not None and task.bitmap.all():
                return
            log.info("prefetching the whole task task=%s", task.id)
            try:
                await self.manager.start(request).done
            except DownloadError as exc:
                log.info("prefetch failed task=%s error=%s", task.id, exc)

        job = asyncio.get_running_loop().create_task(whole(), name=f"prefetch-{task.id[:12]}")
        self._background.add(job)
        job.add_done_callback(self._background.discard)

    async def _write_output(self, task: Task, target: Path, force_hard_link: bool) -> None:
        """X-Dragonfly-Output-Path, after the body went out: link or copy the whole task
        there. A failure cuts the answer (no end of message), so the client sees it."""
        current: Task | None = task
        while current is not None:  # the download this answer read from may have restarted
            await self.manager.wait_ended(current)
            current = self.manager.running(task.id)
        with self.manager.pin(task.id):
            record = await self.manager.store.record(task.id)
            try:
                if record is None or record.state != TASK_SUCCEEDED:
                    raise OutputPathError(500, f"task {task.id} is not stored whole")
                how = await asyncio.to_thread(
                    self.outputs.write,
                    self.manager.storage.content_path(task.id),
                    target,
                    force_hard_link,
                )
            except OutputPathError as exc:
                self.metrics.errors.labels("output_path").inc()
                log.warning("output path not written task=%s: %s", task.id, exc)
                raise _UpstreamCut from None
        log.info("wrote output path task=%s path=%s as=%s", task.id, target, how)

    async def _next_block(self, blocks: AsyncIterator[bytes]) -> bytes | None:
        try:
            async with asyncio.timeout(self.read_timeout):
                return await anext(blocks, None)
        except TimeoutError:
            raise DownloadError(
                FailureKind.TIMEOUT,
                f"no bytes of the task within proxy.read_timeout ({self.read_timeout:g}s)",
            ) from None

    async def _task_failed(
        self, stream: _Stream, http: h11.Connection, exc: DownloadError, task_id: str | None
    ) -> bool:
        kind = exc.kind.value
        self.metrics.errors.labels(kind).inc()
        extra = [(TASK_ID_HEADER, task_id.encode())] if task_id else []
        await self._answer(
            stream, http, _STATUS_OF_FAILURE.get(exc.kind, 500), str(exc), kind, extra
        )
        return True

    async def _send_stored(
        self,
        stream: _Stream,
        http: h11.Connection,
        task: Task,
        selected,
        start: int,
        count: int,
    ) -> _Stored:
        """The fast path: every piece the answer needs is stored (a cached blob) and the
        client is a plain socket, so the body goes from the page cache by sendfile(2),
        after the pieces are checked as for any upload. NOT_APPLICABLE: the caller
        streams the task as it lands instead; DAMAGED: from a new download."""
        if not count or not isinstance(stream, SocketStream) or task.bitmap is None:
            return _Stored.NOT_APPLICABLE
        pieces = range(start // task.piece_length, (start + count - 1) // task.piece_length + 1)
        if not all(task.bitmap.test(n) for n in pieces):
            return _Stored.NOT_APPLICABLE
        with self.manager.pin(task.id):
            problem = await self.manager.check_before_serving(task.id, start, count)
            if problem is not None:
                log.warning("not serving stored pieces task=%s: %s", task.id, problem)
                return _Stored.DAMAGED
            try:
                fd = os.open(self.manager.storage.content_path(task.id), os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return _Stored.NOT_APPLICABLE
            try:
                await stream.sendall(http.send(self._task_head(task, selected, count)))
                # h11 tracks the body length; the bytes themselves go by sendfile.
                http.send_with_data_passthrough(h11.Data(data=SendfileBody(count)))
                await send_file(stream.sock, fd, start, count)
                self.metrics.response_bytes.labels("p2p").inc(count)
            finally:
                os.close(fd)
        return _Stored.SENT

    def _task_head(self, task: Task, selected, count: int) -> h11.Response:
        out = [
            (b"server", SERVER),
            (b"content-type", b"application/octet-stream"),
            (b"accept-ranges", b"bytes"),
            (TASK_ID_HEADER, task.id.encode()),
        ]
        status = 200
        if selected is not None:
            status = 206
            out.append((b"content-range", selected.content_range(task.content_length).encode()))
        out.append((b"content-length", str(count).encode()))
        return h11.Response(status_code=status, headers=out)

    async def _send_task(
        self,
        stream: _Stream,
        http: h11.Connection,
        task: Task,
        selected,
        count: int,
        first: bytes | None,
        blocks: AsyncIterator[bytes],
    ) -> None:
        """The answer's head and body (not its end: an output path may still fail)."""
        await stream.sendall(http.send(self._task_head(task, selected, count)))
        sent = 0
        block = first
        try:
            while block is not None:
                for chunk in http.send_with_data_passthrough(h11.Data(data=block)):
                    await stream.sendall(chunk)
                sent += len(block)
                if sent >= count:
                    break
                block = await self._next_block(blocks)
        except DownloadError as exc:
            self.metrics.errors.labels(exc.kind.value).inc()
            log.info("p2p stream cut task=%s sent=%d of %d error=%s", task.id, sent, count, exc)
            raise _UpstreamCut from None
        finally:
            self.metrics.response_bytes.labels("p2p").inc(sent)
        if sent != count:
            self.metrics.errors.labels("internal").inc()
            log.warning("p2p stream short task=%s sent=%d of %d", task.id, sent, count)
            raise _UpstreamCut

    async def _drain_body(self, stream: _Stream, http: h11.Connection) -> None:
        """Read (and drop) a request body the route does not forward."""
        while http.their_state is h11.SEND_BODY:
            event = await self._next(stream, http, "request body")
            if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return

    # -- direct ----------------------------------------------------------------------

    async def _open_upstream(self, scheme: str, host: str, port: int) -> _Stream:
        raw = await open_connection(host, port, self.connect_timeout)
        if scheme != "https":
            return raw
        tls = TLSStream(raw, self.upstream_ssl, server_side=False, server_hostname=host)
        try:
            await tls.handshake(self.connect_timeout)
        except BaseException:
            raw.close()
            raise
        return tls

    async def _direct(
        self,
        stream: _Stream,
        http: h11.Connection,
        method: str,
        url: str,
        headers: list[tuple[bytes, bytes]],
    ) -> bool:
        parts = urlsplit(url)
        scheme = parts.scheme
        head = method == "HEAD"
        try:
            host, port = routing.split_authority(parts.netloc, 443 if scheme == "https" else 80)
        except ValueError as exc:
            self.metrics.errors.labels("bad_request").inc()
            await self._answer(
                stream, http, 400, f"bad upstream {url[:200]!r}: {str(exc)[:300]}",
                "bad_request", head=head,
            )  # fmt: skip
            return False
        key = (scheme, host, port)
        pooled = self.pool.take(key)
        if pooled is not None:
            try:
                return await self._exchange_on(stream, http, key, pooled, method, parts, headers)
            except _StaleUpstream:
                pass  # closed by the upstream while parked: once more on a new connection
        try:
            upstream = await self._open_upstream(scheme, host, port)
        except (OSError, TimeoutError, StreamTimeout) as exc:
            return await self._upstream_failed(
                stream, http, "upstream_connect", f"cannot reach {parts.netloc}: {exc}", head
            )
        except ssl.SSLError as exc:
            return await self._upstream_failed(
                stream,
                http,
                "upstream_tls",
                f"TLS with {parts.netloc} failed: {exc.reason or exc}; trust its CA with "
                f"proxy.upstream_ca_bundle",
                head,
            )
        self.metrics.upstream_connections.inc()
        fresh = _Upstream(upstream, self.config.max_header_size)
        return await self._exchange_on(stream, http, key, fresh, method, parts, headers)

    async def _exchange_on(
        self,
        client: _Stream,
        http: h11.Connection,
        key: tuple[str, str, int],
        upstream: _Upstream,
        method: str,
        parts,
        headers: list[tuple[bytes, bytes]],
    ) -> bool:
        """One exchange on ``upstream``, which is parked for reuse afterwards when it
        ended cleanly and closed otherwise."""
        try:
            return await self._exchange(client, http, upstream, method, parts, headers)
        finally:
            if upstream.http.our_state is h11.DONE and upstream.http.their_state is h11.DONE:
                upstream.http.start_next_cycle()
                upstream.reused = True
                self.pool.give(key, upstream)
            else:
                upstream.close()

    async def _upstream_failed(
        self, stream: _Stream, http: h11.Connection, kind: str, message: str, head: bool
    ) -> bool:
        self.metrics.errors.labels(kind).inc()
        log.info("proxy upstream failure type=%s: %s", kind, message)
        await self._drain_body(stream, http)
        await self._answer(stream, http, 502, message, kind, head=head)
        return True

    async def _exchange(
        self,
        client: _Stream,
        http: h11.Connection,
        connection: _Upstream,
        method: str,
        parts,
        headers: list[tuple[bytes, bytes]],
    ) -> bool:
        """Forward one request to a connected upstream and its answer back, streaming
        both bodies. False when the client connection must close. _StaleUpstream when a
        reused connection broke before the answer and the request can be sent again (it
        had no body)."""
        up, upstream = connection.http, connection.stream
        has_body = http.their_state is h11.SEND_BODY
        forwarded = [(b"host", parts.netloc.encode("latin-1"))]
        forwarded += [
            (k, v) for k, v in routing.forwardable(headers) if k.lower() not in (b"host", b"expect")
        ]
        chunked = any(
            k.lower() == b"transfer-encoding" and b"chunked" in v.lower() for k, v in headers
        )
        if chunked:
            forwarded.append((b"transfer-encoding", b"chunked"))
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            await upstream.sendall(
                up.send(h11.Request(method=method, target=target, headers=forwarded))
            )
            if http.they_are_waiting_for_100_continue:
                await client.sendall(
                    http.send(h11.InformationalResponse(status_code=100, headers=[]))
                )
            while http.their_state is h11.SEND_BODY:
                event = await self._next(client, http, "request body")
                if isinstance(event, h11.Data):
                    self.metrics.request_bytes.inc(len(event.data))
                    await upstream.sendall(up.send(event))
                elif isinstance(event, h11.EndOfMessage):
                    await upstream.sendall(up.send(h11.EndOfMessage()))
                else:
                    return False  # the client closed mid-body
            if http.their_state is h11.DONE and up.our_state is h11.SEND_BODY:
                await upstream.sendall(up.send(h11.EndOfMessage()))
            while True:
                event = await self._next(upstream, up, "upstream answer")
                if isinstance(event, h11.Response):
                    break
                if isinstance(event, h11.ConnectionClosed):
                    raise h11.RemoteProtocolError("upstream closed without answering")
        except (h11.RemoteProtocolError, ConnectionError, OSError, StreamTimeout) as exc:
            if connection.reused and not has_body and not isinstance(exc, StreamTimeout):
                raise _StaleUpstream from None
            head = method == "HEAD"
            return await self._upstream_failed(
                client, http, "upstream", f"upstream {parts.netloc} failed: {exc}", head
            )
        response = h11.Response(
            status_code=event.status_code,
            headers=routing.forwardable(event.headers.raw_items()),
            reason=event.reason,
        )
        await client.sendall(http.send(response))
        sent = 0
        try:
            while True:
                try:
                    event = await self._next(upstream, up, "upstream body")
                except (h11.RemoteProtocolError, ConnectionError, OSError, StreamTimeout) as exc:
                    self.metrics.errors.labels("upstream_cut").inc()
                    log.info(
                        "upstream %s broke its answer after %d bytes: %s", parts.netloc, sent, exc
                    )
                    raise _UpstreamCut from None
                if isinstance(event, h11.Data):
                    sent += len(event.data)
                    for chunk in http.send_with_data_passthrough(event):
                        await client.sendall(chunk)
                elif isinstance(event, h11.EndOfMessage):
                    await client.sendall(http.send(h11.EndOfMessage()))
                    return True
                else:
                    raise _UpstreamCut
        finally:
            self.metrics.response_bytes.labels("direct").inc(sent)

    # -- CONNECT ---------------------------------------------------------------------

    async def _connect(self, stream: _Stream, http: h11.Connection, req: h11.Request) -> None:
        authority = req.target.decode("latin-1")
        try:
            host, port = routing.split_authority(authority, 443)
        except ValueError as exc:
            self.metrics.errors.labels("bad_request").inc()
            await self._answer(stream, http, 400, f"bad CONNECT target: {exc}", "bad_request")
            return
        self.metrics.requests.labels("connect").inc()
        forbidden = self._forbidden(authority, 443)
        if forbidden is not None:
            self.metrics.errors.labels("upstream_forbidden").inc()
            await self._answer(stream, http, 403, forbidden, "upstream_forbidden")
            return
        if self.leaves is None:
            await self._tunnel(stream, http, host, port)
            return
        # Hijack: answer 200, then be the TLS server for ``host`` ourselves.
        await stream.sendall(
            http.send(h11.Response(status_code=200, headers=[(b"server", SERVER)]))
        )
        pending, _closed = http.trailing_data
        assert isinstance(stream, SocketStream)
        stream.pending = pending
        context = self.leaves.context_for(host)
        tls = TLSStream(stream, context, server_side=True)
        try:
            await tls.handshake(self.request_timeout)
        except (ssl.SSLError, ConnectionError, OSError, StreamTimeout) as exc:
            self.metrics.errors.labels("client_tls").inc()
            log.info("TLS handshake with a client of CONNECT %s failed: %s", authority, exc)
            return
        await self._serve(tls, tunnel=routing.join_authority(host, port, 443))

    async def _tunnel(self, stream: _Stream, http: h11.Connection, host: str, port: int) -> None:
        """A plain CONNECT tunnel: bytes both ways until either side ends."""
        try:
            upstream = await open_connection(host, port, self.connect_timeout)
        except (OSError, TimeoutError) as exc:
            await self._upstream_failed(
                stream, http, "upstream_connect", f"cannot reach {host}:{port}: {exc}", False
            )
            return
        try:
            await stream.sendall(
                http.send(h11.Response(status_code=200, headers=[(b"server", SERVER)]))
            )
            pending, _closed = http.trailing_data
            if pending:
                await upstream.sendall(pending)
            assert isinstance(stream, SocketStream)
            await asyncio.gather(_pump(stream, upstream), _pump(upstream, stream))
        finally:
            upstream.close()


async def _pump(source: SocketStream, sink: SocketStream) -> None:
    """Copy until end of stream, then half-close the sink; an error ends both ways."""
    try:
        while True:
            data = await source.recv(None)
            if not data:
                break
            await sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.sock.shutdown(socket.SHUT_WR)
    except OSError:
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.sock.shutdown(socket.SHUT_RDWR)


def _range_spec(headers: list[tuple[bytes, bytes]]) -> RangeSpec | None:
    """The request's one byte range; None for none, or for a Range we do not serve
    (several ranges, another unit: the whole object is sent, as RFC 9110 allows)."""
    values = routing.header_values(headers, b"range")
    if not values:
        return None
    try:
        return parse_range_spec(values[-1])
    except RangeError:
        return None


class _Stored(enum.Enum):
    """What :meth:`ProxyServer._send_stored` did."""

    SENT = "sent"
    NOT_APPLICABLE = "not applicable"
    DAMAGED = "damaged"


class _RequestRate:
    """A token bucket of requests per second (burst: one second's worth); 0 = off."""

    def __init__(self, per_second: float) -> None:
        self.rate = per_second
        self.tokens = max(per_second, 1.0)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        if not self.rate:
            return True
        now = time.monotonic()
        self.tokens = min(max(self.rate, 1.0), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def _refusal(reason: str) -> bytes:
    """The whole answer to a connection over the limits (it is closed after it)."""
    body = reason.encode() + b"\n"
    return (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: %d\r\nconnection: close\r\nretry-after: 1\r\n"
        b"x-dragonfly-error-type: busy\r\nserver: %s\r\n\r\n" % (len(body), SERVER)
    ) + body
