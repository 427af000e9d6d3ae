"""What every back-to-source source shares: the interface, the probe's answer, the errors.

A *source* is where a task's bytes come from when no peer has them: an HTTP origin, an
S3 bucket, an OCI registry. The download path above (task_manager.py) sees only the
:class:`Source` interface:

- ``probe(url, headers)`` learns the length, whether byte ranges can be read, and the
  validators that name this version of the object (:class:`SourceInfo`);
- ``fetch_range(url, headers, offset, length, into, info=...)`` reads one piece into a
  buffer the caller owns, and fails with :class:`ContentChanged` when the object is no
  longer the version the probe saw;
- ``stream(url, headers)`` reads the whole object once, for sources without ranges.

Every failure is a :class:`SourceError` whose message is one line fit for dfget to print
(it names the URL and what to do). ``bad_input`` marks errors in the URL itself (a bad
bucket name, an unparseable reference): dfget exits 2 (usage) for those and 4 (origin
error) for everything else.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from yarl import URL

__all__ = [
    "ContentChanged",
    "HeadersLike",
    "RetryPolicy",
    "ShortRead",
    "Source",
    "SourceError",
    "SourceInfo",
    "SourceStream",
    "check_same_version",
    "display_url",
]

#: What callers may pass as request headers: a mapping, or (name, value) pairs when a
#: header repeats (dfget's -H is repeatable).
HeadersLike = Mapping[str, str] | Iterable[tuple[str, str]]


class SourceError(Exception):
    """A request to a source failed.

    ``str(error)`` is one line fit for dfget to print. ``status`` is the protocol status
    when the source answered (None for connection faults, timeouts and bad input), ``url``
    the URL asked for, ``retryable`` whether trying again later could succeed,
    ``attempts`` how many requests were made before giving up, ``bad_input`` whether the
    URL itself is wrong (no request can succeed; dfget's usage exit code).
    """

    def __init__(
        self,
        message: str,
        *,
        url: str,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        attempts: int = 1,
        bad_input: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.url = url
        self.status = status
        self.retryable = retryable
        #: Seconds the source asked us to wait (Retry-After), when it said so.
        self.retry_after = retry_after
        self.attempts = attempts
        self.bad_input = bad_input

    def __str__(self) -> str:
        return self.message


class ShortRead(SourceError):
    """The source sent fewer bytes than the range asked for (closed early, stalled, or
    announced a short body). Retryable: the missing tail can be asked for again.

    ``received`` and ``expected`` count bytes of the requested range.
    """

    def __init__(self, message: str, *, url: str, received: int, expected: int, **kw: Any) -> None:
        kw.setdefault("retryable", True)
        super().__init__(message, url=url, **kw)
        self.received = received
        self.expected = expected


class ContentChanged(SourceError):
    """The object changed at the source since the probe: an answer carries another
    validator (ETag, Last-Modified) or length than the probe saw, or the origin answered
    If-Range with the whole new object. Never retryable: pieces of two versions must not
    be put together. ``validator`` names what changed (``ETag``, ``Last-Modified``,
    ``length``)."""

    def __init__(self, message: str, *, url: str, validator: str, **kw: Any) -> None:
        super().__init__(message, url=url, **kw)
        self.validator = validator


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What a probe learned about an object.

    ``final_url`` is the URL later requests go to (after HTTP redirects; for an OCI tag,
    the blob's digest URL, so every piece reads the same blob). ``content_length`` is
    None when the source did not say (stream it and count). ``supports_range`` is true
    only when pieces can be read with :meth:`Source.fetch_range`.
    """

    url: str
    final_url: str
    content_length: int | None
    supports_range: bool
    etag: str | None = None
    last_modified: str | None = None
    content_type: str | None = None
    #: A digest of the whole content the source vouches for (``sha256:<hex>``: an OCI
    #: blob's name); the download checks the bytes against it once they are all in.
    digest: str | None = None

    @property
    def if_range(self) -> str | None:
        """The validator to send as If-Range, or None when there is no usable one.

        RFC 9110 section 13.1.5 allows only a strong ETag or a Last-Modified date; a weak
        ETag (``W/"..."``) never matches, so it would turn every piece into a 200.
        """
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How transient faults are retried: up to ``attempts`` requests in all, waiting
    ``base_delay * 2**(n-1)`` (capped at ``max_delay``) with jitter between them. A
    Retry-After the source sends is honoured up to ``max_retry_after`` seconds."""

    attempts: int = 5
    base_delay: float = 0.1
    max_delay: float = 5.0
    max_retry_after: float = 30.0

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise TypeError(f"RetryPolicy.attempts must be an int, got {self.attempts!r}")
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be >= 1, got {self.attempts}")
        for name in ("base_delay", "max_delay", "max_retry_after"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0:
                raise ValueError(f"RetryPolicy.{name} must be a number >= 0, got {value!r}")

    def delay(self, failures: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``failures``-th failed attempt.

        Equal jitter (a uniform draw in [d/2, d]) spreads the retries of many peers that
        failed together while keeping a minimum wait; a Retry-After the source sent
        raises the wait to that value, capped.
        """
        ceiling = min(self.max_delay, self.base_delay * (2 ** (failures - 1)))
        wait = rng.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_retry_after))
        return wait


class SourceStream(Protocol):
    """A whole object read once: ``async with source.stream(url) as body: async for
    chunk in body``. After entering, ``content_length`` is the announced length (None
    when unknown); ``received`` counts bytes read so far."""

    content_length: int | None
    received: int

    async def __aenter__(self) -> SourceStream: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def __aiter__(self) -> AsyncIterator[memoryview]: ...


class Source(Protocol):
    """One kind of back-to-source, for the URL schemes in ``schemes``.

    One instance serves every task of a daemon that uses its schemes (it owns connection
    pools); a source made with a fetch policy (source.allow / source.deny) applies it to
    every address it connects to, for every request it makes.
    """

    schemes: tuple[str, ...]

    @property
    def bytes_received(self) -> int:
        """Body bytes read from the source so far (for metrics and tests)."""
        ...

    @classmethod
    def check_url(cls, url: str) -> None:
        """Raise :class:`SourceError` (``bad_input``) for a URL no request can serve,
        without any I/O."""
        ...

    async def probe(self, url: str, headers: HeadersLike | None = None) -> SourceInfo: ...

    async def fetch_range(
        self,
        url: str,
        headers: HeadersLike | None,
        offset: int,
        length: int,
        into: memoryview | bytearray,
        *,
        info: SourceInfo | None = None,
    ) -> None: ...

    def stream(self, url: str, headers: HeadersLike | None = None) -> SourceStream: ...

    async def close(self) -> None: ...


def check_same_version(
    url: str,
    info: SourceInfo,
    *,
    etag: str | None,
    last_modified: str | None,
    total: int | None,
    status: int,
) -> None:
    """Raise :class:`ContentChanged` when an answer describes another version of the
    object than the probe ``info`` did: another length (the Content-Range total), ETag
    or Last-Modified. A validator the answer leaves out is not compared (many servers
    send them only sometimes); one it sends must be the probe's."""
    changes = []
    if info.content_length is not None and total is not None and total != info.content_length:
        changes.append(("length", f"{info.content_length} bytes", f"{total} bytes"))
    if info.etag and etag and etag != info.etag:
        changes.append(("ETag", info.etag, etag))
    if info.last_modified and last_modified and last_modified != info.last_modified:
        changes.append(("Last-Modified", info.last_modified, last_modified))
    if changes:
        what = "; ".join(f"{name} was {was}, is now {now}" for name, was, now in changes)
        raise ContentChanged(
            f"content changed at {display_url(url)} during the download: {what}",
            url=url,
            status=status,
            validator=changes[0][0],
        )


def display_url(url: str) -> str:
    """The URL for messages, without a password it may carry."""
    try:
        parsed = URL(url)
    except ValueError:
        return url
    if parsed.password is not None:
        return str(parsed.with_password("***"))
    return url
