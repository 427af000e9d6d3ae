"""Task, host and peer identifiers, following Dragonfly v2.

A task ID names the bytes behind a URL. It is the SHA-256 (lower-case hex) of the
concatenation of

    canonical URL + tag + application + str(piece_length) + "STANDARD"

where each optional part is left out when it is not given, and the canonical URL is the
URL with its filtered query parameters (signatures that change per request, such as S3's
``X-Amz-Signature``) removed and the remaining parameters sorted by key. "STANDARD" is the
task type Dragonfly's client appends for ordinary URL downloads; keeping it makes our IDs
equal to Dragonfly's for the same inputs, so a mixed deployment shares tasks.

Host IDs are ``ip-hostname``; peer IDs ``ip-hostname-uuid``. Seed peers get a ``-seed``
suffix on both, so a scheduler can tell them apart from the ID alone. The UUID is an
argument (core holds no random state): daemons pass ``uuid.uuid4()``.
"""

from __future__ import annotations

import hashlib
import uuid as uuid_mod
from collections.abc import Iterable
from urllib.parse import quote_plus, unquote_plus, urlsplit, urlunsplit

from d7y.core.pieces import validate_piece_length

TASK_TYPE_STANDARD = "STANDARD"
SEED_SUFFIX = "seed"

#: Query parameters dropped before hashing by default: the request-signing parameters of
#: Amazon S3 (SigV4), Google Cloud Storage (V4 signing) and Alibaba OSS. They differ on
#: every pre-signed URL for the same object, so keeping them would split one object into
#: many tasks. Matching is exact and case-sensitive, as in Dragonfly.
DEFAULT_FILTERED_QUERY_PARAMS: tuple[str, ...] = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
    "X-Amz-User-Agent",
    "X-Goog-Algorithm",
    "X-Goog-Credential",
    "X-Goog-Date",
    "X-Goog-Expires",
    "X-Goog-SignedHeaders",
    "X-Goog-Signature",
    "OSSAccessKeyId",
    "Expires",
    "Signature",
    "SecurityToken",
)

# Go's url.QueryEscape leaves exactly these bytes alone (and turns space into '+').
# Dragonfly's scheduler and client both escape that way, so we do too.
_QUERY_SAFE = "-._~"


def _query_escape(text: str) -> str:
    return quote_plus(text, safe=_QUERY_SAFE)


def canonical_url(url: str, filtered_query_params: Iterable[str] | None = None) -> str:
    """Return ``url`` with the filtered query parameters removed and the rest sorted.

    With an empty filter list the URL is returned unchanged (as Dragonfly does). Otherwise
    the scheme and host are lower-cased, query segments containing ';' are dropped, the
    remaining ``key=value`` pairs are sorted by key (values of one key keep their order)
    and re-escaped as Go's ``url.QueryEscape``, and a bare ``/`` path is trimmed.
    ``None`` selects :data:`DEFAULT_FILTERED_QUERY_PARAMS`.
    """
    _check_url(url)
    filters = set(
        DEFAULT_FILTERED_QUERY_PARAMS if filtered_query_params is None else filtered_query_params
    )
    for name in filters:
        if not isinstance(name, str):
            raise TypeError(f"filtered query parameter {name!r} must be a str")
    if not filters:
        return url

    parts = urlsplit(url)
    pairs: list[tuple[str, str]] = []
    for segment in parts.query.split("&") if parts.query else ():
        if ";" in segment or not segment:
            continue
        key, _, value = segment.partition("=")
        key, value = unquote_plus(key), unquote_plus(value)
        if key not in filters:
            pairs.append((key, value))
    pairs.sort(key=lambda kv: kv[0])  # stable: same-key values keep their order
    query = "&".join(f"{_query_escape(k)}={_query_escape(v)}" for k, v in pairs)
    path = parts.path or "/"
    result = urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, query, parts.fragment))
    if path == "/" and result.endswith("/"):
        result = result[:-1]
    return result


def _check_url(url: object) -> None:
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, got {type(url).__name__}: {url!r}")
    parts = urlsplit(url)
    if not parts.scheme or not (parts.netloc or parts.path):
        raise ValueError(f"url {url!r} is not absolute: give a scheme, e.g. https://host/path")


def _check_optional_str(name: str, value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a str or None, got {type(value).__name__}: {value!r}")


def task_id(
    url: str,
    *,
    tag: str | None = None,
    application: str | None = None,
    piece_length: int | None = None,
    filtered_query_params: Iterable[str] | None = None,
) -> str:
    """The task ID for a URL download (SHA-256 hex; see the module docstring).

    ``piece_length`` is only the user's explicit choice (it must be >= 4 MiB); leave it
    ``None`` when the piece length is derived from the content length, so that every
    peer computes the same ID before it knows the length. An empty tag or application
    counts as absent, as in Dragonfly.
    """
    _check_optional_str("tag", tag)
    _check_optional_str("application", application)
    hasher = hashlib.sha256(canonical_url(url, filtered_query_params).encode())
    if tag:
        hasher.update(tag.encode())
    if application:
        hasher.update(application.encode())
    if piece_length is not None:
        hasher.update(str(validate_piece_length(piece_length)).encode())
    hasher.update(TASK_TYPE_STANDARD.encode())
    return hasher.hexdigest()


def content_task_id(content: str) -> str:
    """The task ID given by the content a client names instead of the URL (Dragonfly's
    X-Dragonfly-Content-For-Calculating-Task-ID): the SHA-256 hex of its UTF-8 bytes,
    nothing else mixed in, so every client naming the same content shares the task."""
    if not isinstance(content, str) or not content:
        raise ValueError(f"content for the task ID must be a non-empty str, got {content!r}")
    return hashlib.sha256(content.encode()).hexdigest()


def _check_host(ip: object, hostname: object) -> None:
    for name, value in (("ip", ip), ("hostname", hostname)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty str, got {value!r}")


def host_id(ip: str, hostname: str, *, seed: bool = False) -> str:
    """``ip-hostname``, with ``-seed`` appended for a seed peer's host."""
    _check_host(ip, hostname)
    return f"{ip}-{hostname}-{SEED_SUFFIX}" if seed else f"{ip}-{hostname}"


def peer_id(ip: str, hostname: str, peer_uuid: uuid_mod.UUID | str, *, seed: bool = False) -> str:
    """``ip-hostname-uuid``, with ``-seed`` appended for a seed peer.

    ``peer_uuid`` comes from the caller (``uuid.uuid4()`` in a daemon, a seeded RNG in the
    simulator) because core keeps no random state.
    """
    _check_host(ip, hostname)
    try:
        text = str(uuid_mod.UUID(str(peer_uuid)))
    except ValueError:
        raise ValueError(f"peer_uuid {peer_uuid!r} is not a UUID") from None
    return f"{ip}-{hostname}-{text}-{SEED_SUFFIX}" if seed else f"{ip}-{hostname}-{text}"
