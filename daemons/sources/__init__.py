"""Back-to-source sources, one module per URL scheme, behind one interface.

A peer fetches a task "back to source" when no other peer has it. Where the bytes come
from depends on the URL's scheme:

======================  ==========================================================
``http``, ``https``     an HTTP origin (http.py; the zero-copy range path: fast_range.py)
``s3``                  ``s3://bucket/key`` on S3 or an S3-compatible store (s3.py)
``oci``                 a blob of an OCI registry, ``oci://registry/repo:tag`` or
                        ``oci://registry/repo@sha256:<hex>`` (oci.py)
======================  ==========================================================

Each is a :class:`~d7y.daemons.sources.base.Source` (probe, fetch a range, stream the
whole body); its failures are :class:`SourceError`. :class:`Sources` holds the sources
of one daemon for one fetch policy (policy.py: the SSRF guard for downloads a remote
party caused), each created on first use, and :func:`open_source` makes one for a URL.
A new scheme is a new module with a ``Source`` class, listed in ``_SOURCE_CLASSES``.
"""

from __future__ import annotations

import dataclasses
import ssl as ssl_module

from d7y.daemons.sources.base import (
    BodySink,
    ContentChanged,
    HeadersLike,
    RangeToSink,
    RetryPolicy,
    ShortRead,
    Source,
    SourceError,
    SourceInfo,
    SourceStream,
    display_url,
)
from d7y.daemons.sources.http import HttpSource
from d7y.daemons.sources.oci import OciConfig, OciSource
from d7y.daemons.sources.policy import SourcePolicy, SourceRefused
from d7y.daemons.sources.s3 import S3Config, S3Source

__all__ = [
    "SUPPORTED_SCHEMES",
    "BodySink",
    "ContentChanged",
    "HeadersLike",
    "OciConfig",
    "RangeToSink",
    "RetryPolicy",
    "S3Config",
    "ShortRead",
    "Source",
    "SourceError",
    "SourceInfo",
    "SourcePolicy",
    "SourceRefused",
    "SourceSettings",
    "SourceStream",
    "Sources",
    "check_url",
    "open_source",
    "scheme_of",
]

_SOURCE_CLASSES: tuple[type, ...] = (HttpSource, S3Source, OciSource)
_BY_SCHEME: dict[str, type] = {scheme: cls for cls in _SOURCE_CLASSES for scheme in cls.schemes}
SUPPORTED_SCHEMES: tuple[str, ...] = tuple(_BY_SCHEME)


@dataclasses.dataclass(frozen=True)
class SourceSettings:
    """What every source of a daemon is configured with: the retry policy and request
    timeout of download.*, and the source.s3.* and source.oci.* keys."""

    retry: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    request_timeout: float | None = 300.0
    s3: S3Config = dataclasses.field(default_factory=S3Config)
    oci: OciConfig = dataclasses.field(default_factory=OciConfig)
    #: TLS for https origins: True (the system's CAs), or a context that also trusts
    #: proxy.upstream_ca_bundle (or skips verification: proxy.insecure_skip_verify).
    ssl: ssl_module.SSLContext | bool = True


def scheme_of(url: str) -> str:
    """The URL's scheme, lower-cased, when a source serves it; else a ``bad_input``
    :class:`SourceError` that names the scheme and the ones there are."""
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, got {type(url).__name__}: {url!r}")
    scheme, sep, _ = url.partition(":")
    scheme = scheme.lower()
    names = ", ".join(SUPPORTED_SCHEMES[:-1]) + f" or {SUPPORTED_SCHEMES[-1]}"
    if not sep or not scheme:
        raise SourceError(
            f"URL {url!r} has no scheme: use {names} (e.g. https://host/path, s3://bucket/key)",
            url=url,
            bad_input=True,
        )
    if scheme not in _BY_SCHEME:
        raise SourceError(
            f"unsupported URL scheme {scheme!r} in {display_url(url)}: use {names}",
            url=url,
            bad_input=True,
        )
    return scheme


def check_url(url: str) -> None:
    """Refuse, without any I/O, a URL no source can serve: an unknown scheme, or what
    its source finds wrong in it (a bad bucket name, an unparseable reference)."""
    _BY_SCHEME[scheme_of(url)].check_url(url)


def open_source(
    url: str, *, settings: SourceSettings | None = None, policy: SourcePolicy | None = None
) -> Source:
    """A new source for ``url``'s scheme (close it when done). ``policy``: the fetch
    policy every request must pass (downloads a remote party caused)."""
    cls = _BY_SCHEME[scheme_of(url)]
    return cls(settings or SourceSettings(), policy=policy)


class Sources:
    """The sources of one daemon for one fetch policy, each made on first use and kept
    (they own connection pools). Downloads the local user asked for use a set without a
    policy; those a remote party caused, a set with one."""

    def __init__(
        self, settings: SourceSettings | None = None, *, policy: SourcePolicy | None = None
    ) -> None:
        self.settings = settings or SourceSettings()
        self.policy = policy
        self._open: dict[type, Source] = {}

    def for_url(self, url: str) -> Source:
        """The source that serves ``url`` (a ``bad_input`` SourceError for a scheme no
        source serves)."""
        cls = _BY_SCHEME[scheme_of(url)]
        source = self._open.get(cls)
        if source is None:
            source = self._open[cls] = cls(self.settings, policy=self.policy)
        return source

    @property
    def bytes_received(self) -> int:
        return sum(source.bytes_received for source in self._open.values())

    async def close(self) -> None:
        opened, self._open = list(self._open.values()), {}
        for source in opened:
            await source.close()
