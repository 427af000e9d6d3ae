"""The upload server's read-only HTTP endpoint: a stored task's bytes, with Range.

    GET|HEAD /download/<task_id>     200 with the whole content, or 206 for one range

Only finished (verified) tasks are served; an unknown or unfinished task is a 404 with a
one-line reason. The stored pieces a response would carry are checked against their
digests first (once per start of the daemon and change of the file, see verify.py); a
damaged one is a 503 with the reason, never a corrupt byte. Requests are parsed with h11
(sans-IO) and bodies leave through the stream layer (d7y.daemons.stream), with
sendfile(2) on a plain connection: the bytes go from the page cache to the socket without
entering Python, which is what lets this endpoint keep pace with nginx. Keep-alive is
supported; each connection serves one request at a time. Every status line carries its
reason phrase (``HTTP/1.1 200 OK``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
from collections.abc import Awaitable, Callable
from http import HTTPStatus

import h11

from d7y.core.http_range import RangeError, parse_range
from d7y.daemons.framing import ReadTimeout
from d7y.daemons.listener import Listener
from d7y.daemons.peer.limits import TokenBucket
from d7y.daemons.peer.metrics import PeerMetrics
from d7y.daemons.peer.storage import TASK_SUCCEEDED, Storage
from d7y.daemons.stream import Stream

log = logging.getLogger("d7y.dfdaemon.http")

RECV_SIZE = 64 * 1024
#: With a rate limit, the body goes out in slices of this size, each paid for first.
LIMITED_SLICE = 1024 * 1024
SERVER = b"d7y-dfdaemon"


def _refusal(reason: str) -> bytes:
    """The whole answer to a connection over the limits (it is closed after it)."""
    body = reason.encode() + b"\n"
    return (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: %d\r\nconnection: close\r\nretry-after: 1\r\nserver: %s\r\n\r\n"
        % (len(body), SERVER)
    ) + body


def _response(status: int, headers: list[tuple[bytes, bytes]]) -> h11.Response:
    """A response head with the status's standard reason phrase (h11 sends none)."""
    return h11.Response(
        status_code=status, headers=headers, reason=HTTPStatus(status).phrase.encode()
    )


class SendfileBody:
    """Stands in for body bytes in h11 (which only needs their length) while the real
    bytes travel by sendfile."""

    __slots__ = ("length",)

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length


class HTTPUploadServer:
    def __init__(
        self,
        storage: Storage,
        *,
        limiter: TokenBucket | None = None,
        metrics: PeerMetrics | None = None,
        max_concurrent: int = 64,
        pin=None,
        verify: Callable[[str, int, int], Awaitable[str | None]] | None = None,
        idle_timeout: float = 60.0,
        request_timeout: float = 10.0,
        max_connections: int = 0,
        max_connections_per_ip: int = 0,
        download_token: str = "",
    ) -> None:
        self.storage = storage
        # upload.download_token: the bearer token /download asks of every client.
        self._authorization = b"Bearer " + download_token.encode() if download_token else None
        # (task_id, offset, length) -> None when the stored bytes are good, else why
        # not (TaskManager.check_before_serving).
        self._verify = verify
        # Between requests a connection may wait idle_timeout; once a request head has
        # begun it must arrive (with any body) within request_timeout (slowloris).
        self.idle_timeout = idle_timeout or None
        self.request_timeout = request_timeout or None
        self.limiter = limiter or TokenBucket(0)
        self.metrics = metrics or PeerMetrics()
        self._slots = asyncio.Semaphore(max_concurrent)
        self._pin = pin or (lambda _task_id: contextlib.nullcontext())
        self._listener = Listener(
            lambda stream, _address: self._serve(stream),
            name="HTTP upload port",
            max_connections=max_connections,
            max_connections_per_ip=max_connections_per_ip,
            refusal=_refusal,
        )

    @property
    def port(self) -> int:
        return self._listener.port

    async def start(self, host: str, port: int) -> None:
        await self._listener.start(host, port)

    async def stop(self) -> None:
        await self._listener.stop()

    async def _receive(self, stream: Stream, http: h11.Connection, deadline: float | None) -> None:
        """Feed h11 the next bytes: within ``deadline`` (loop time) while a request is
        on its way, else within the idle timeout. ReadTimeout when they do not come."""
        loop = asyncio.get_running_loop()
        if deadline is not None:
            timeout, what = max(deadline - loop.time(), 0.0), "a request that has begun"
        else:
            timeout, what = self.idle_timeout, "a new request"
        try:
            async with asyncio.timeout(timeout):
                data = await stream.recv(RECV_SIZE)
        except TimeoutError:
            raise ReadTimeout(f"no {what} within {timeout or 0:g}s") from None
        http.receive_data(data)

    async def _serve(self, stream: Stream) -> None:
        loop = asyncio.get_running_loop()
        http = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        deadline: float | None = None  # set by a request's first bytes
        try:
            while True:
                event = http.next_event()
                if event is h11.NEED_DATA:
                    await self._receive(stream, http, deadline)
                    if deadline is None and self.request_timeout is not None:
                        deadline = loop.time() + self.request_timeout
                    continue
                if isinstance(event, h11.Request):
                    if deadline is None and self.request_timeout is not None:
                        # Pipelined behind the previous one: its body, if any, is bounded too.
                        deadline = loop.time() + self.request_timeout
                    await self._handle(stream, http, event, deadline)
                    deadline = None
                elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    if http.our_state is h11.DONE and http.their_state is h11.DONE:
                        http.start_next_cycle()
                        continue
                    return
                if http.our_state is h11.MUST_CLOSE or http.their_state is h11.MUST_CLOSE:
                    return
        except h11.RemoteProtocolError as exc:
            # h11 refuses to answer when it cannot (e.g. the request line was never
            # complete): then the close is the answer.
            with contextlib.suppress(OSError, h11.LocalProtocolError):
                await self._simple(stream, http, exc.error_status_hint, f"bad request: {exc}")
        except ReadTimeout as exc:
            log.debug("closing HTTP upload connection: %s", exc)
        except (OSError, EOFError) as exc:
            log.debug("HTTP upload connection ended: %s", exc)  # the client went away
        except Exception:
            # A bug, not the client's doing: say where, drop this connection, keep serving.
            log.exception("http upload connection crashed")
        finally:
            stream.close()

    async def _simple(
        self,
        stream: Stream,
        http: h11.Connection,
        status: int,
        message: str,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
        *,
        head: bool = False,
    ) -> None:
        """A short text answer (errors), with the reason on one line; the answer to a
        HEAD request has the same headers and no body."""
        body = message.encode() + b"\n"
        headers = [
            *(extra_headers or []),
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"server", SERVER),
        ]
        data = http.send(_response(status, headers))
        if not head:
            data += http.send(h11.Data(data=body))
        data += http.send(h11.EndOfMessage())
        await stream.send_all(data)

    async def _drain_request_body(
        self, stream: Stream, http: h11.Connection, deadline: float | None
    ) -> None:
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                await self._receive(stream, http, deadline)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return

    async def _handle(
        self, stream: Stream, http: h11.Connection, req: h11.Request, deadline: float | None
    ) -> None:
        await self._drain_request_body(stream, http, deadline)
        # Methods are case-sensitive (RFC 9110), and h11 frames the answer by the exact
        # bytes: upper-casing here once made "head" look like HEAD to us but not to h11,
        # whose answer then lacked its body (found by the fuzzer).
        method = req.method
        head = method == b"HEAD"
        path = req.target.decode("latin-1").split("?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            await self._simple(
                stream, http, 405, f"method {method.decode()} not allowed: use GET", head=head
            )
            return
        if self._authorization is not None and not self._authorized(req):
            challenge = [(b"www-authenticate", b'Bearer realm="d7y download"')]
            await self._simple(
                stream,
                http,
                401,
                "this endpoint needs 'Authorization: Bearer <token>' (upload.download_token)",
                challenge,
                head=head,
            )
            return
        prefix = "/download/"
        if not path.startswith(prefix):
            await self._simple(
                stream, http, 404, f"no such path {path}: use /download/<task_id>", head=head
            )
            return
        task_id = path[len(prefix) :]
        record = await self.storage.run(self.storage.meta.get_task, task_id) if task_id else None
        if record is None or record.state != TASK_SUCCEEDED or record.content_length is None:
            state = "unknown" if record is None else record.state
            await self._simple(
                stream, http, 404, f"task {task_id!r} is not available ({state})", head=head
            )
            return
        length = record.content_length
        range_header = next((v for k, v in req.headers if k == b"range"), None)
        status, start, count = 200, 0, length
        headers = [(b"server", SERVER), (b"accept-ranges", b"bytes")]
        if range_header is not None:
            try:
                selected = parse_range(range_header.decode("latin-1"), length)
            except RangeError as exc:
                extra = [(b"content-range", f"bytes */{length}".encode())]
                if exc.unsatisfiable:
                    await self._simple(stream, http, 416, str(exc), extra, head=head)
                else:
                    await self._simple(stream, http, 400, str(exc), head=head)
                return
            status, start, count = 206, selected.start, selected.length
            headers.append((b"content-range", selected.content_range(length).encode()))
        headers += [
            (b"content-type", b"application/octet-stream"),
            (b"content-length", str(count).encode()),
        ]
        async with self._slots:
            with self._pin(task_id):
                if method == b"GET":
                    problem = await self._check_stored(task_id, start, count)
                    if problem is not None:
                        await self._simple(stream, http, 503, problem, head=head)
                        return
                try:
                    fd = os.open(self.storage.content_path(task_id), os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    await self._simple(
                        stream, http, 404, f"task {task_id!r} content is gone", head=head
                    )
                    return
                try:
                    await stream.send_all(http.send(_response(status, headers)))
                    if method == b"GET" and count:
                        # h11 tracks the body length; the bytes themselves go by sendfile.
                        http.send_with_data_passthrough(h11.Data(data=SendfileBody(count)))
                        self.metrics.active_uploads.inc()
                        try:
                            await self._send_body(stream, fd, start, count)
                        finally:
                            self.metrics.active_uploads.dec()
                    await stream.send_all(http.send(h11.EndOfMessage()))
                finally:
                    os.close(fd)

    def _authorized(self, req: h11.Request) -> bool:
        given = next((v for k, v in req.headers if k == b"authorization"), b"")
        # Constant time: how much of a guess matched must not show in the answer's timing.
        return hmac.compare_digest(given, self._authorization or b"")

    async def _check_stored(self, task_id: str, start: int, count: int) -> str | None:
        """Whether the stored bytes [start, start + count) may be served: None when
        their pieces match their digests, else a one-line reason."""
        if self._verify is None or count == 0:
            return None
        return await self._verify(task_id, start, count)

    async def _send_body(self, stream: Stream, fd: int, start: int, count: int) -> None:
        if self.limiter.unlimited:
            await stream.send_file(fd, start, count)
            self.metrics.bytes_uploaded.inc(count)
            return
        sent = 0
        while sent < count:
            step = min(LIMITED_SLICE, count - sent)
            await self.limiter.take(step)
            await stream.send_file(fd, start + sent, step)
            sent += step
            self.metrics.bytes_uploaded.inc(step)
