"""The ``http`` and ``https`` sources: origins spoken to over HTTP.

:class:`OriginClient` is the only place that speaks HTTP to origins (the S3 and OCI
sources use it too, with their own credentials and error reading). It offers three
operations:

- :meth:`OriginClient.probe` learns the content length, whether Range works, the
  validators (ETag, Last-Modified) and the URL after redirects, with one
  ``GET Range: bytes=0-0`` (many origins mishandle HEAD, and a ranged GET tells us in one
  round trip whether Range is honoured).
- :meth:`OriginClient.fetch_range` reads one piece, ``Range: bytes=a-b``, into a buffer
  the caller owns, retrying transient faults with exponential backoff and jitter. It sends
  ``If-Range`` with the probed validator, so an object that changed between pieces is
  detected (the origin answers 200 instead of 206) instead of silently mixing versions.
- :meth:`OriginClient.stream` reads the whole body once, for origins without Range or
  without a known length; the caller cuts it into pieces. A broken stream cannot be
  resumed, so its faults are final.

:class:`HttpSource` is the :class:`~d7y.daemons.sources.base.Source` for http/https
URLs: the client above, with the zero-copy path of fast_range.py tried first for pieces.

Every failure is a :class:`SourceError` whose message is one line fit for dfget to print,
with ``status``, ``url`` and ``retryable`` for the code that decides what to do next.

Bytes are the origin's bytes: the session never decompresses, and ``Accept-Encoding:
identity`` is sent unless the user asked for an encoding, so ranges and lengths refer to
the same representation in every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import os
import random
import re
import ssl as ssl_module
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from http import HTTPStatus
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from d7y.daemons.sources.base import (
    BodySink,
    ContentChanged,
    HeadersLike,
    RetryPolicy,
    ShortRead,
    SourceError,
    SourceInfo,
    check_same_version,
    display_url,
)
from d7y.daemons.sources.fast_range import FastPathUnavailable, FastRangeFetcher

if TYPE_CHECKING:
    from d7y.daemons.sources import SourceSettings
    from d7y.daemons.sources.policy import SourcePolicy

__all__ = [
    "Authorizer",
    "HttpSource",
    "OriginClient",
    "OriginStream",
    "read_up_to",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

SUPPORTED_SCHEMES = ("http", "https")

# Hop-by-hop headers (RFC 9110 section 7.6.1) describe one connection, not the request;
# forwarding the user's copies would break our own connection handling.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)
# Headers this client controls: the byte range and every precondition. A user's
# If-None-Match would turn a piece into a body-less 304, and their Range would fight ours.
_CONTROLLED = frozenset(
    {
        "range",
        "if-range",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
    }
)

_RETRYABLE_4XX = frozenset({408, 429})
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)\s*/\s*(\d+|\*)\s*$", re.IGNORECASE)
# A probe answer whose body is at most this long is read to the end, so its connection
# goes back to the pool; a longer one (an origin that ignored Range) is dropped unread.
_PROBE_DRAIN_LIMIT = 64 * 1024


class Authorizer(Protocol):
    """Credentials for a source whose requests need them: S3 signs every request, an
    OCI registry hands out tokens after a 401 challenge."""

    async def authorize(self, method: str, url: str, headers: CIMultiDict[str]) -> None:
        """Add credentials to ``headers`` just before a request (and each retry) goes out."""
        ...

    async def challenge(self, url: str, resp: aiohttp.ClientResponse) -> bool:
        """The source answered 401: True when new credentials were obtained (the request
        is then sent once more), False to report the 401."""
        ...


#: Reads an error answer and says what went wrong in the source's own terms (S3's XML
#: error codes, a registry's JSON errors), or None to fall back to the HTTP status.
ErrorReader = Callable[[str, aiohttp.ClientResponse], Awaitable[SourceError | None]]


class OriginClient:
    """HTTP client for origins, shared by every task of a peer daemon.

    Owns one :class:`aiohttp.ClientSession` (created on first use, closed by
    :meth:`close`) unless one is given, in which case the caller closes it. Use it as an
    async context manager or call :meth:`close`.

    ``bytes_received`` counts every body byte read from origins (including bytes of
    attempts that later failed: they crossed the network), for the metrics endpoint;
    ``requests`` counts requests sent.
    """

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession | None = None,
        retry: RetryPolicy | None = None,
        request_timeout: float | None = 300.0,
        connect_timeout: float | None = 10.0,
        read_timeout: float | None = 30.0,
        max_redirects: int = 10,
        limit: int = 128,
        limit_per_host: int = 64,
        read_bufsize: int = 256 * 1024,
        ssl: ssl_module.SSLContext | bool = True,
        user_agent: str = "d7y-dfdaemon/0.1",
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        policy: SourcePolicy | None = None,
        authorizer: Authorizer | None = None,
        error_reader: ErrorReader | None = None,
    ) -> None:
        """Configure the client; no I/O happens here.

        ``request_timeout`` bounds one ranged request (headers and body), ``read_timeout``
        a silence while reading, ``connect_timeout`` the connection set-up; None disables
        one. ``limit``/``limit_per_host`` size the connection pool (at least 16 piece
        requests must run at once). ``ssl`` is passed to aiohttp (an SSLContext to trust a
        private CA, or False to skip verification). ``rng`` and ``sleep`` are injectable so
        tests can make backoff deterministic and instant. ``policy`` (a
        :class:`~d7y.daemons.sources.policy.SourcePolicy`) is checked for every
        request, every address connected to and every redirect; a client with a policy
        serves downloads that a remote party caused, one without serves the local user.
        ``authorizer`` and ``error_reader`` let the S3 and OCI sources reuse this client
        for their HTTP requests (see :class:`Authorizer` and :data:`ErrorReader`).
        """
        if max_redirects < 0:
            raise ValueError(f"max_redirects must be >= 0, got {max_redirects}")
        if limit < 16 or (limit_per_host and limit_per_host < 16):
            raise ValueError(
                f"connection limits must allow 16 concurrent requests, got limit={limit}, "
                f"limit_per_host={limit_per_host}"
            )
        if read_bufsize < 1024:
            raise ValueError(f"read_bufsize must be >= 1024, got {read_bufsize}")
        for name, value in (
            ("request_timeout", request_timeout),
            ("connect_timeout", connect_timeout),
            ("read_timeout", read_timeout),
        ):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 or None, got {value!r}")
        self._session = session
        self._owns_session = session is None
        self.retry = retry if retry is not None else RetryPolicy()
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_redirects = max_redirects
        self._limit = limit
        self._limit_per_host = limit_per_host
        self._read_bufsize = read_bufsize
        self._ssl = ssl
        self._user_agent = user_agent
        self._rng = rng if rng is not None else random.Random()
        self._sleep = sleep
        self.policy = policy
        self._authorizer = authorizer
        self._error_reader = error_reader
        self._closed = False
        self.bytes_received = 0
        self.requests = 0

    @classmethod
    def for_settings(
        cls,
        settings: SourceSettings | None,
        *,
        policy: SourcePolicy | None = None,
        authorizer: Authorizer | None = None,
        error_reader: ErrorReader | None = None,
    ) -> OriginClient:
        """A client configured as every source of a daemon is (``download.*``'s retry
        policy and request timeout, the TLS trust of ``settings.ssl``); the defaults
        without settings. The s3 and oci sources add their ``authorizer`` and
        ``error_reader``."""
        return cls(
            retry=settings.retry if settings is not None else None,
            request_timeout=settings.request_timeout if settings is not None else 300.0,
            ssl=settings.ssl if settings is not None else True,
            policy=policy,
            authorizer=authorizer,
            error_reader=error_reader,
        )

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> OriginClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session if this client created it (idempotent). Later requests
        raise RuntimeError."""
        self._closed = True
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _get_session(self) -> aiohttp.ClientSession:
        # Created lazily: a ClientSession binds to the running loop, and the client may be
        # constructed before the loop starts (config parsing).
        if self._closed:
            raise RuntimeError("OriginClient is closed")
        if self._session is None:
            resolver, traces = (
                self.policy.session_options() if self.policy is not None else (None, [])
            )
            connector = aiohttp.TCPConnector(
                limit=self._limit,
                limit_per_host=self._limit_per_host,
                ssl=self._ssl,
                resolver=resolver,
            )
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, trust_env=False, trace_configs=traces
            )
        elif self._session.closed:
            raise RuntimeError("the aiohttp session given to OriginClient is closed")
        return self._session

    # -- public operations ---------------------------------------------------------

    async def probe(self, url: str, headers: HeadersLike | None = None) -> SourceInfo:
        """Learn length, Range support, validators and the final URL of ``url``.

        One ``GET Range: bytes=0-0``, redirects followed, retried like a piece. A 200
        means the origin ignores Range (length from Content-Length, or None); its body is
        not read. Raises :class:`SourceError`.
        """
        _check_url(url)
        request_headers = self._headers(headers, {"Range": "bytes=0-0"})

        async def attempt() -> SourceInfo:
            async with self.request(url, request_headers) as resp:
                return await self._read_probe(url, resp)

        return await self.with_retries(url, attempt)

    async def fetch_range(
        self,
        url: str,
        headers: HeadersLike | None,
        offset: int,
        length: int,
        into: memoryview | bytearray,
        *,
        info: SourceInfo | None = None,
    ) -> None:
        """Read bytes [offset, offset + length) of ``url`` into ``into[:length]``.

        ``info`` is the probe's answer: its validator goes out as If-Range, and its
        length and ETag are checked against the response, so a changed object raises a
        non-retryable "content changed" error. Short reads resume with a request for the
        missing tail; connection faults, timeouts, 5xx, 408 and 429 are retried per
        :attr:`retry`. On failure ``into`` holds garbage. Raises :class:`SourceError`
        (:class:`ShortRead` when bytes were missing at the end).
        """
        _check_url(url)
        view = _writable_view(into)
        _check_range(offset, length, len(view))
        extra: dict[str, str] = {}
        validator = info.if_range if info is not None else None
        if validator is not None:
            extra["If-Range"] = validator
        base_headers = self._headers(headers, extra)
        timeout = self._timeout(bounded=True)
        done = 0  # bytes of the range already in `view`, kept across attempts

        async def attempt() -> None:
            nonlocal done
            start = offset + done
            want = length - done
            request_headers = base_headers.copy()
            request_headers["Range"] = f"bytes={start}-{start + want - 1}"
            async with self.request(url, request_headers, timeout) as resp:
                await self._check_range_response(url, resp, start, want, info, validator)
                try:
                    done += await self._read_into(url, resp, view, done, length, offset)
                except ShortRead as short:
                    done = short.received
                    raise

        await self.with_retries(url, attempt)

    def stream(self, url: str, headers: HeadersLike | None = None) -> OriginStream:
        """Open a plain GET of the whole object, for origins without Range.

        Use as ``async with client.stream(url, headers) as body: async for chunk in
        body: ...``. Opening (connect, status) is retried per :attr:`retry`; once the body
        has started nothing can be resumed, so a broken body raises a non-retryable
        :class:`SourceError` saying how many bytes arrived.
        """
        _check_url(url)
        return OriginStream(self, url, self._headers(headers, {}))

    # -- internals -----------------------------------------------------------------

    def _timeout(self, *, bounded: bool) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=self.request_timeout if bounded else None,
            sock_connect=self.connect_timeout,
            sock_read=self.read_timeout,
        )

    def _headers(self, headers: HeadersLike | None, extra: Mapping[str, str]) -> CIMultiDict[str]:
        out: CIMultiDict[str] = CIMultiDict()
        pairs = _header_pairs(headers)
        # Headers listed in the user's own Connection header are hop-by-hop too.
        named = {
            token.strip().lower()
            for name, value in pairs
            if name.lower() == "connection"
            for token in value.split(",")
        }
        for name, value in pairs:
            lowered = name.lower()
            if lowered in _HOP_BY_HOP or lowered in _CONTROLLED or lowered in named:
                continue
            out.add(name, value)
        out.setdefault("Accept-Encoding", "identity")
        out.setdefault("User-Agent", self._user_agent)
        for name, value in extra.items():
            out[name] = value
        return out

    @contextlib.asynccontextmanager
    async def request(
        self,
        url: str,
        headers: CIMultiDict[str],
        timeout: aiohttp.ClientTimeout | None = None,
        *,
        method: str = "GET",
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send one request (no retries: wrap it in :meth:`with_retries`); the response
        is released when the block ends. With an authorizer, credentials are added first,
        and a 401 it can answer is sent once more with the new ones."""
        if timeout is None:
            timeout = self._timeout(bounded=True)
        for challenged in (False, True):
            if self._authorizer is not None:
                await self._authorizer.authorize(method, url, headers)
            self.requests += 1
            async with self._get_session().request(
                method,
                url,
                headers=headers,
                # aiohttp stops at its max_redirects-th redirect (and 0 means no limit);
                # ours is the number of redirects followed, as curl's --max-redirs.
                allow_redirects=self.max_redirects > 0,
                max_redirects=self.max_redirects + 1,
                timeout=timeout,
                auto_decompress=False,
                read_bufsize=self._read_bufsize,
            ) as resp:
                if (
                    resp.status == 401
                    and not challenged
                    and self._authorizer is not None
                    and await self._authorizer.challenge(url, resp)
                ):
                    continue
                yield resp
                return

    async def check_status(
        self, url: str, resp: aiohttp.ClientResponse, *, ok: tuple[int, ...]
    ) -> None:
        """Raise the :class:`SourceError` an answer with a status not in ``ok`` means."""
        if resp.status in ok:
            return
        if self._error_reader is not None:
            error = await self._error_reader(url, resp)
            if error is not None:
                raise error
        _raise_for_status(url, resp, ok=ok)

    def headers(
        self, headers: HeadersLike | None, extra: Mapping[str, str] | None = None
    ) -> CIMultiDict[str]:
        """The user's headers as this client sends them (hop-by-hop and precondition
        headers dropped, identity encoding), with ``extra`` set on top."""
        return self._headers(headers, extra or {})

    async def with_retries(self, url: str, attempt: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``attempt`` until it succeeds, fails for good, or the retry policy says
        stop; aiohttp's errors become :class:`SourceError`."""
        failures = 0
        while True:
            try:
                try:
                    return await attempt()
                except TimeoutError as exc:  # first: aiohttp's timeouts are ClientErrors too
                    what = (
                        "connecting to"
                        if isinstance(exc, aiohttp.ConnectionTimeoutError)
                        else "waiting for"
                    )
                    raise SourceError(
                        f"origin timed out: {what} {display_url(url)}", url=url, retryable=True
                    ) from exc
                except aiohttp.ClientError as exc:
                    raise _translate(url, exc) from exc
            except SourceError as error:
                failures += 1
                if not error.retryable or failures >= self.retry.attempts:
                    if failures > 1:
                        error.message = f"{error.message} (after {failures} attempts)"
                        error.args = (error.message,)
                        error.attempts = failures
                    raise
                wait = self.retry.delay(failures, self._rng, error.retry_after)
                log.info(
                    "origin request failed, retrying in %.2fs (attempt %d of %d): %s",
                    wait,
                    failures + 1,
                    self.retry.attempts,
                    error,
                )
                await self._sleep(wait)

    async def _read_probe(self, url: str, resp: aiohttp.ClientResponse) -> SourceInfo:
        await self.check_status(url, resp, ok=(200, 206, 416))
        final_url = str(resp.url)
        etag = resp.headers.get("ETag")
        last_modified = resp.headers.get("Last-Modified")
        content_type = resp.headers.get("Content-Type")

        def info(length: int | None, ranged: bool) -> SourceInfo:
            return SourceInfo(
                url=url,
                final_url=final_url,
                content_length=length,
                supports_range=ranged,
                etag=etag,
                last_modified=last_modified,
                content_type=content_type,
            )

        parsed = _parse_content_range(resp.headers.get("Content-Range"))
        if resp.status == 206:
            if parsed is None or parsed[0] != 0 or parsed[2] is None:
                # A 206 we cannot read (or with an unknown total) gives no length to plan
                # pieces on: treat the origin as Range-less and stream it.
                return info(None, False)
            if resp.content_length is not None and resp.content_length <= _PROBE_DRAIN_LIMIT:
                await self._drain(resp)
            return info(parsed[2], True)
        if resp.status == 416:
            if parsed is not None and parsed[0] is None and parsed[2] == 0:
                return info(0, True)  # bytes=0-0 of an empty object: nothing to satisfy
            if parsed is not None and parsed[2]:
                raise SourceError(
                    f"origin answered 416 to bytes=0-0 of a {parsed[2]}-byte object at "
                    f"{display_url(url)}: its Range support is broken",
                    url=url,
                    status=416,
                )
            return info(None, False)  # no usable Content-Range: stream to learn
        # 200: Range ignored. Leave the body unread; releasing the response then closes
        # the connection unless the whole (small) body has already arrived.
        return info(resp.content_length, False)

    async def _drain(self, resp: aiohttp.ClientResponse) -> None:
        while chunk := await resp.content.readany():
            self.bytes_received += len(chunk)

    async def _check_range_response(
        self,
        url: str,
        resp: aiohttp.ClientResponse,
        start: int,
        want: int,
        info: SourceInfo | None,
        validator: str | None,
    ) -> None:
        asked = f"bytes={start}-{start + want - 1}"
        if resp.status == 200:
            if validator is not None and info is not None:
                # If-Range did not match: the origin sent the whole new object instead.
                check_same_version(
                    url,
                    info,
                    etag=resp.headers.get("ETag"),
                    last_modified=resp.headers.get("Last-Modified"),
                    total=resp.content_length,
                    status=200,
                )
                raise ContentChanged(
                    f"content changed at {display_url(url)}: the origin answered {asked} with "
                    f"the whole object (200), so If-Range {validator} ("
                    f"{'ETag' if validator == info.etag else 'Last-Modified'}) no longer "
                    f"matches",
                    url=url,
                    status=200,
                    validator="ETag" if validator == info.etag else "Last-Modified",
                )
            if start == 0 and resp.content_length == want:
                return  # the whole object was asked for and sent: same bytes
            raise SourceError(
                f"origin ignored Range {asked} for {display_url(url)} (answered 200)",
                url=url,
                status=200,
            )
        if resp.status == 416:
            raise SourceError(
                f"content changed at {display_url(url)}: origin answered 416 to {asked} "
                f"(Content-Range {resp.headers.get('Content-Range')})",
                url=url,
                status=416,
            )
        await self.check_status(url, resp, ok=(206,))
        parsed = _parse_content_range(resp.headers.get("Content-Range"))
        if parsed is None or parsed[0] != start or parsed[1] != start + want - 1:
            raise SourceError(
                f"origin answered Content-Range {resp.headers.get('Content-Range')!r} to "
                f"{asked} for {display_url(url)}",
                url=url,
                status=206,
            )
        if info is not None:
            check_same_version(
                url,
                info,
                etag=resp.headers.get("ETag"),
                last_modified=resp.headers.get("Last-Modified"),
                total=parsed[2],
                status=206,
            )
        if resp.content_length is not None and resp.content_length > want:
            raise SourceError(
                f"origin announced {resp.content_length} bytes for {asked} ({want} bytes) "
                f"from {display_url(url)}",
                url=url,
                status=206,
            )

    async def _read_into(
        self,
        url: str,
        resp: aiohttp.ClientResponse,
        view: memoryview,
        done: int,
        length: int,
        offset: int,
    ) -> int:
        """Copy the body into ``view[done:length]``; return how many bytes were copied."""
        pos = done
        content = resp.content

        def short(cause: str) -> ShortRead:
            return ShortRead(
                f"{cause} after {pos} of {length} bytes of {_range_text(offset, length)} "
                f"from {display_url(url)}",
                url=url,
                status=resp.status,
                received=pos,
                expected=length,
            )

        try:
            # readany hands over the chunks the parser produced, one at a time: each is
            # copied into place and dropped, so memory stays at the socket buffers.
            while chunk := await content.readany():
                n = len(chunk)
                self.bytes_received += n
                if pos + n > length:
                    raise SourceError(
                        f"origin sent more than the {length} bytes of "
                        f"{_range_text(offset, length)} from {display_url(url)}",
                        url=url,
                        status=resp.status,
                    )
                view[pos : pos + n] = chunk
                pos += n
        except TimeoutError as exc:
            raise short("origin stopped sending (timed out)") from exc
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            raise short("origin closed the connection") from exc
        if pos < length:
            raise short("origin ended the body")
        return pos - done


class OriginStream:
    """A plain GET of a whole object, as an async context manager and chunk iterator.

    After entering, ``content_length`` is the announced length (None when chunked),
    ``final_url`` the URL after redirects, ``received`` the bytes read so far. Chunks are
    memoryviews over immutable bytes: they stay valid after the next one is read.
    """

    def __init__(self, client: OriginClient, url: str, headers: CIMultiDict[str]) -> None:
        self._client = client
        self.url = url
        self._headers = headers
        self._cm: Any = None
        self._resp: aiohttp.ClientResponse | None = None
        self.content_length: int | None = None
        self.final_url: str | None = None
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.received = 0

    async def __aenter__(self) -> OriginStream:
        client = self._client
        url = self.url

        async def attempt() -> tuple[Any, aiohttp.ClientResponse]:
            cm = client.request(url, self._headers, client._timeout(bounded=False))
            resp = await cm.__aenter__()
            try:
                await client.check_status(url, resp, ok=(200,))
            except BaseException:
                await cm.__aexit__(None, None, None)
                raise
            return cm, resp

        self._cm, self._resp = await client.with_retries(url, attempt)
        self.content_length = self._resp.content_length
        self.final_url = str(self._resp.url)
        self.etag = self._resp.headers.get("ETag")
        self.last_modified = self._resp.headers.get("Last-Modified")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        cm, self._cm, self._resp = self._cm, None, None
        if cm is not None:
            # Releasing a response whose body was not read to the end closes its
            # connection, so an abandoned or cancelled stream never poisons the pool.
            await cm.__aexit__(exc_type, exc, tb)

    def __aiter__(self) -> AsyncIterator[memoryview]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[memoryview]:
        resp = self._resp
        if resp is None:
            raise RuntimeError("OriginStream must be entered (async with) before iterating")
        expected = self.content_length
        of = f" of {expected}" if expected is not None else ""
        while True:
            try:
                chunk = await resp.content.readany()
            except TimeoutError as exc:
                raise SourceError(
                    f"origin stopped sending (timed out) after {self.received}{of} bytes of "
                    f"{display_url(self.url)}; without Range support the download cannot resume",
                    url=self.url,
                    status=resp.status,
                ) from exc
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                raise SourceError(
                    f"origin closed the connection after {self.received}{of} bytes of "
                    f"{display_url(self.url)}; without Range support the download cannot resume",
                    url=self.url,
                    status=resp.status,
                ) from exc
            if not chunk:
                break
            self.received += len(chunk)
            self._client.bytes_received += len(chunk)
            yield memoryview(chunk)
        if expected is not None and self.received != expected:
            raise SourceError(
                f"origin sent {self.received} bytes of {display_url(self.url)} but announced "
                f"Content-Length {expected}",
                url=self.url,
                status=resp.status,
            )


# -- helpers -------------------------------------------------------------------------


async def read_up_to(content: aiohttp.StreamReader, limit: int) -> bytes:
    """A response body's first ``limit`` bytes (the whole body when it is shorter).

    ``StreamReader.read(n)`` returns as soon as *some* bytes have arrived, so a small body
    the network delivers in two parts (a token, a manifest, an error document) would be
    cut at the first; this reads until the limit or the end of the body."""
    body = bytearray()
    while len(body) < limit:
        chunk = await content.read(limit - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


def _check_url(url: str) -> None:
    """Reject what no request should be made for, before any I/O."""
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, got {type(url).__name__}: {url!r}")
    try:
        parsed = URL(url)
    except ValueError as exc:
        raise SourceError(f"invalid URL {url!r}: {exc}", url=url) from exc
    scheme = parsed.scheme.lower()
    supported = f"only {' and '.join(SUPPORTED_SCHEMES)} are supported"
    if not scheme:
        raise SourceError(
            f"URL {url!r} has no scheme: {supported} (e.g. http://host/path)", url=url
        )
    if scheme not in SUPPORTED_SCHEMES:
        raise SourceError(
            f"unsupported URL scheme {scheme!r} in {display_url(url)}: {supported}", url=url
        )
    if not parsed.host:
        raise SourceError(f"invalid URL {display_url(url)}: no host", url=url)


def _check_range(offset: int, length: int, capacity: int) -> None:
    for name, value in (("offset", offset), ("length", length)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {value!r}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if length < 1:
        raise ValueError(f"length must be >= 1 (a byte range cannot be empty), got {length}")
    if capacity < length:
        raise ValueError(f"buffer holds {capacity} bytes, too small for length {length}")


def _writable_view(into: memoryview | bytearray) -> memoryview:
    try:
        view = memoryview(into)
    except TypeError as exc:
        raise TypeError(
            f"into must be a writable buffer (bytearray, memoryview, mmap), got "
            f"{type(into).__name__}"
        ) from exc
    if view.readonly:
        raise TypeError(f"into must be writable, got a read-only {type(into).__name__}")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _header_pairs(headers: HeadersLike | None) -> list[tuple[str, str]]:
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    pairs: list[tuple[str, str]] = []
    for item in items:
        try:
            name, value = item
        except (TypeError, ValueError):
            raise TypeError(f"headers must be (name, value) pairs, got {item!r}") from None
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"header name and value must be str, got {name!r}: {value!r}")
        if not name or any(c in name for c in " \t\r\n:") or any(c in value for c in "\r\n\0"):
            raise ValueError(
                f"invalid header {name!r}: {value!r}: names are tokens without spaces or ':' "
                f"and values cannot contain line breaks"
            )
        pairs.append((name, value.strip()))
    return pairs


def _parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None] | None:
    """``bytes a-b/N`` -> (a, b, N); ``*`` parts are None; None when unparseable."""
    if value is None:
        return None
    match = _CONTENT_RANGE.match(value)
    if match is None:
        return None
    first, last, total = match.groups()
    return (
        int(first) if first is not None else None,
        int(last) if last is not None else None,
        int(total) if total != "*" else None,
    )


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _raise_for_status(url: str, resp: aiohttp.ClientResponse, *, ok: tuple[int, ...]) -> None:
    status = resp.status
    if status in ok:
        return
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = resp.reason or ""
    retryable = status >= 500 or status in _RETRYABLE_4XX
    text = f"origin returned {status} {phrase}".rstrip() + f" for {display_url(url)}"
    if 300 <= status < 400:
        text += " (redirect not followed)"
    raise SourceError(
        text,
        url=url,
        status=status,
        retryable=retryable,
        retry_after=_parse_retry_after(resp.headers.get("Retry-After")) if retryable else None,
    )


def _translate(url: str, exc: aiohttp.ClientError) -> SourceError:
    shown = display_url(url)
    if isinstance(exc, aiohttp.TooManyRedirects):
        return SourceError(f"origin redirected too many times starting at {shown}", url=url)
    if isinstance(
        exc, aiohttp.NonHttpUrlRedirectClientError | aiohttp.InvalidUrlRedirectClientError
    ):
        return SourceError(f"origin redirected {shown} to an unsupported URL ({exc})", url=url)
    if isinstance(exc, aiohttp.InvalidURL):
        return SourceError(f"invalid URL {shown}: {exc}", url=url)
    if isinstance(exc, aiohttp.ClientSSLError):
        # A certificate that does not verify will not verify on the next attempt either.
        return SourceError(f"TLS error with origin {shown}: {_reason(exc)}", url=url)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return SourceError(
            f"cannot connect to origin {shown}: {_reason(exc)}", url=url, retryable=True
        )
    return SourceError(
        f"origin connection failed for {shown}: {_reason(exc)}", url=url, retryable=True
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        if isinstance(os_error.errno, int) and os_error.errno > 0:
            return os.strerror(os_error.errno)  # "Connection refused", not asyncio's text
        return os_error.strerror or str(os_error) or type(exc).__name__
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _range_text(offset: int, length: int) -> str:
    return f"bytes={offset}-{offset + length - 1}"


class HttpSource:
    """The source for ``http://`` and ``https://`` URLs: pieces through the zero-copy
    fast path when the origin allows it (plain http, a clean 206), else through
    :class:`OriginClient`, which also owns the probe, the stream, retries and errors."""

    schemes = SUPPORTED_SCHEMES

    def __init__(
        self, settings: SourceSettings | None = None, *, policy: SourcePolicy | None = None
    ) -> None:
        self.policy = policy
        self.client = OriginClient.for_settings(settings, policy=policy)
        self.fast_range = FastRangeFetcher(policy=policy)

    @property
    def bytes_received(self) -> int:
        return self.client.bytes_received + self.fast_range.bytes_received

    @classmethod
    def check_url(cls, url: str) -> None:
        """Nothing to check before the request: a bad http URL is reported by the
        request itself, as it always was."""

    async def probe(self, url: str, headers: HeadersLike | None = None) -> SourceInfo:
        return await self.client.probe(url, headers)

    async def fetch_range(
        self,
        url: str,
        headers: HeadersLike | None,
        offset: int,
        length: int,
        into: memoryview | bytearray,
        *,
        info: SourceInfo | None = None,
    ) -> None:
        try:
            plain = headers if headers is None or isinstance(headers, Mapping) else dict(headers)
            await self.fast_range.fetch(url, plain, offset, length, memoryview(into), info=info)
        except FastPathUnavailable as why:
            log.debug("fast path unavailable url=%s reason=%s", display_url(url), why)
            await self.client.fetch_range(url, headers, offset, length, into, info=info)

    async def fetch_range_to(
        self,
        url: str,
        headers: HeadersLike | None,
        offset: int,
        length: int,
        sink: BodySink,
        *,
        info: SourceInfo | None = None,
    ) -> None:
        """The range into ``sink`` as it arrives (the fast path's body thread); when the
        fast path cannot serve it, the client fetches it whole and hands it over."""
        try:
            plain = headers if headers is None or isinstance(headers, Mapping) else dict(headers)
            await self.fast_range.fetch_to(url, plain, offset, length, sink, info=info)
            return
        except FastPathUnavailable as why:
            log.debug("fast path unavailable url=%s reason=%s", display_url(url), why)
        buffer = bytearray(length)
        await self.client.fetch_range(url, headers, offset, length, buffer, info=info)
        sink.restart()
        await asyncio.get_running_loop().run_in_executor(None, sink.write, memoryview(buffer))

    def stream(self, url: str, headers: HeadersLike | None = None) -> OriginStream:
        return self.client.stream(url, headers)

    async def close(self) -> None:
        self.fast_range.close()
        await self.client.close()
