"""The proxy's decisions, sans-IO: where a request goes and whether it goes P2P.

dfdaemon's proxy (port 4001) sees three kinds of request, as Dragonfly's does:

- absolute-form (``GET http://host/path``): a forward-proxy request for that URL;
- origin-form (``GET /v2/...``) outside a CONNECT tunnel: a registry-mirror request, whose
  upstream is the ``X-Dragonfly-Registry`` header, else the ``ns`` query parameter (a
  bare host gets https; ``docker.io`` means Docker Hub's registry), else the configured
  mirror address;
- origin-form inside a hijacked CONNECT tunnel: a request for ``https://<tunnel host>``.

Then the first rule whose regex matches the URL without its query decides for a GET:
it goes through P2P (the task is shared with every peer); so does a GET with
``X-Dragonfly-Use-P2P: true``. Everything else goes direct, streamed both ways.

Nothing here does I/O; the daemon (d7y.daemons.proxy.server) parses with h11 and calls
these functions.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import posixpath
import re
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit, urlunsplit

from d7y.core.ids import DEFAULT_FILTERED_QUERY_PARAMS as TASK_DEFAULT_FILTERED

#: Query parameters left out of the task ID of a proxied download by default: the
#: signatures of S3, GCS, OSS (the task ID's own defaults), of Huawei OBS and Tencent COS,
#: and ``ns`` (containerd names the mirrored registry with it; it is not the object's).
DEFAULT_FILTERED_QUERY_PARAMS: tuple[str, ...] = (
    *TASK_DEFAULT_FILTERED,
    "AccessKeyId",
    "X-Obs-Date",
    "X-Obs-Security-Token",
    "q-sign-algorithm",
    "q-ak",
    "q-sign-time",
    "q-key-time",
    "q-header-list",
    "q-url-param-list",
    "q-signature",
    "x-cos-security-token",
    "ns",
)

DEFAULT_RULE_REGEX = r"blobs/sha256.*"

#: Docker Hub's name (as containerd's ``ns`` gives it) and where its registry API lives.
DOCKER_HUB_NAMES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
DOCKER_HUB_REGISTRY = "https://registry-1.docker.io"

# Hop-by-hop headers (RFC 9110 7.6.1) describe one connection: never forwarded.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
DRAGONFLY_PREFIX = b"x-dragonfly-"


class ProxyRequestError(ValueError):
    """A request the proxy cannot serve as asked; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """One entry of ``proxy.rules``: a matching GET goes P2P."""

    regex: str
    use_tls: bool = False
    redirect: str = ""
    filtered_query_params: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "_pattern", re.compile(self.regex))
        except re.error as exc:
            raise ValueError(f"rule regex {self.regex!r} does not compile: {exc}") from None

    def matches(self, url: str) -> bool:
        return self._pattern.search(url_without_query(url)) is not None  # type: ignore[attr-defined]


@dataclasses.dataclass(frozen=True)
class DragonflyOptions:
    """The X-Dragonfly-* request headers the proxy honours."""

    tag: str = ""
    application: str = ""
    priority: int = 0
    filtered_query_params: tuple[str, ...] | None = None
    piece_length: int | None = None
    use_p2p: bool = False
    registry: str = ""
    #: On a Range request, also fetch the whole task in the background (None: the
    #: proxy's ``prefetch`` setting decides).
    prefetch: bool | None = None
    #: Absolute path the whole object is also written to (a hard link to the task's
    #: content when the filesystem allows, else a copy); "" for none.
    output_path: str = ""
    #: The output must be a hard link: fail rather than copy.
    force_hard_link: bool = False
    #: The task ID is the SHA-256 of this text instead of the URL's (Dragonfly's
    #: X-Dragonfly-Content-For-Calculating-Task-ID); "" for the URL's.
    content_for_task_id: str = ""


@dataclasses.dataclass(frozen=True)
class Route:
    """What to do with one request: ``url`` is the upstream URL; ``p2p`` says whether it
    is served from a task (``rule`` is the rule that matched, if any)."""

    url: str
    p2p: bool
    rule: Rule | None = None


def url_without_query(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def header_values(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[str]:
    return [v.decode("latin-1") for k, v in headers if k.lower() == name]


def _one(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str:
    values = header_values(headers, name)
    return values[-1].strip() if values else ""


def parse_dragonfly_headers(headers: Sequence[tuple[bytes, bytes]]) -> DragonflyOptions:
    """Read the X-Dragonfly-* request headers; ProxyRequestError names a bad one."""
    priority_text = _one(headers, b"x-dragonfly-priority")
    piece_text = _one(headers, b"x-dragonfly-piece-length")
    filtered_text = header_values(headers, b"x-dragonfly-filtered-query-params")
    use_p2p = _one(headers, b"x-dragonfly-use-p2p").lower()
    prefetch = _boolean(headers, b"x-dragonfly-prefetch", "X-Dragonfly-Prefetch")
    force_hard_link = _boolean(
        headers, b"x-dragonfly-force-hard-link", "X-Dragonfly-Force-Hard-Link"
    )
    output_path = _one(headers, b"x-dragonfly-output-path")
    if output_path and (
        not posixpath.isabs(output_path) or "\x00" in output_path or output_path.endswith("/")
    ):
        raise ProxyRequestError(
            f"X-Dragonfly-Output-Path {output_path[:200]!r} is not an absolute file path: "
            f"give e.g. /var/lib/app/blob.bin"
        )
    if force_hard_link and not output_path:
        raise ProxyRequestError(
            "X-Dragonfly-Force-Hard-Link: true needs X-Dragonfly-Output-Path (the path to link)"
        )
    try:
        priority = int(priority_text) if priority_text else 0
    except ValueError:
        raise ProxyRequestError(
            f"X-Dragonfly-Priority {priority_text!r} is not an integer: send e.g. 0..6"
        ) from None
    try:
        piece_length = int(piece_text) if piece_text else None
    except ValueError:
        raise ProxyRequestError(
            f"X-Dragonfly-Piece-Length {piece_text!r} is not a byte count: send e.g. 4194304"
        ) from None
    if use_p2p not in ("", "true", "false"):
        raise ProxyRequestError(f"X-Dragonfly-Use-P2P {use_p2p!r} must be true or false")
    filtered = None
    if filtered_text:
        filtered = tuple(p.strip() for v in filtered_text for p in v.split(",") if p.strip())
    return DragonflyOptions(
        tag=_one(headers, b"x-dragonfly-tag"),
        application=_one(headers, b"x-dragonfly-application"),
        priority=priority,
        filtered_query_params=filtered,
        piece_length=piece_length,
        use_p2p=use_p2p == "true",
        registry=_one(headers, b"x-dragonfly-registry"),
        prefetch=prefetch,
        output_path=posixpath.normpath(output_path) if output_path else "",
        force_hard_link=bool(force_hard_link),
        content_for_task_id=_one(headers, b"x-dragonfly-content-for-calculating-task-id"),
    )


def _boolean(headers: Sequence[tuple[bytes, bytes]], name: bytes, shown: str) -> bool | None:
    """A true/false header (any case); None when absent."""
    text = _one(headers, name).lower()
    if not text:
        return None
    if text not in ("true", "false"):
        raise ProxyRequestError(f"{shown} {text[:100]!r} must be true or false")
    return text == "true"


def _normalize_registry(value: str, plain_http: Iterable[str] = ()) -> str:
    """``https://r.example``, ``http://127.0.0.1:5000`` or a bare host (https, unless
    listed in ``plain_http``); Docker Hub's names map to its registry API."""
    value = value.strip().rstrip("/")
    if "://" not in value:
        if value.lower() in DOCKER_HUB_NAMES:
            return DOCKER_HUB_REGISTRY
        scheme = "http" if value in set(plain_http) else "https"
        value = f"{scheme}://{value}"
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ProxyRequestError(
            f"registry {value!r} is not an http(s) address: give e.g. https://registry.example"
        )
    return f"{parts.scheme}://{parts.netloc}"


def _drop_query_param(query: str, name: str) -> str:
    return "&".join(p for p in query.split("&") if p and p.split("=", 1)[0] != name)


def upstream_url(
    target: str,
    headers: Sequence[tuple[bytes, bytes]],
    *,
    tunnel_authority: str | None,
    mirror_addr: str,
    plain_http_registries: Iterable[str] = (),
) -> str:
    """The absolute URL a request is for.

    ``target`` is the request target; ``tunnel_authority`` the ``host:port`` of the
    CONNECT tunnel the request came through (None outside one)."""
    if target.startswith(("http://", "https://")):
        parts = urlsplit(target)
        if not parts.hostname:
            raise ProxyRequestError(f"request target {target!r} has no host")
        return target
    if not target.startswith("/"):
        raise ProxyRequestError(
            f"request target {target[:200]!r} is neither a path nor an absolute http(s) URL"
        )
    if tunnel_authority is not None:
        # The tunnel's host, not the Host header: the certificate the client accepted
        # was made for it, so nothing inside the tunnel may send the request elsewhere.
        host = tunnel_authority.removesuffix(":443")
        return f"https://{host}{target}"
    path, _, query = target.partition("?")
    registry = _one(headers, b"x-dragonfly-registry")
    if not registry:
        for part in query.split("&"):
            key, _, value = part.partition("=")
            if key == "ns" and value:
                registry = value
                break
    base = _normalize_registry(registry or mirror_addr, plain_http_registries)
    query = _drop_query_param(query, "ns")
    return f"{base}{path}" + (f"?{query}" if query else "")


def route(
    method: str,
    url: str,
    options: DragonflyOptions,
    rules: Sequence[Rule],
) -> Route:
    """Whether a request goes P2P (and to which URL), or direct."""
    if method != "GET":
        return Route(url, p2p=False)
    for rule in rules:
        if rule.matches(url):
            return Route(rewrite_for_rule(url, rule), p2p=True, rule=rule)
    return Route(url, p2p=options.use_p2p)


def rewrite_for_rule(url: str, rule: Rule) -> str:
    """The rule's ``use_tls`` makes the download https; its ``redirect`` replaces the
    host (and port)."""
    parts = urlsplit(url)
    scheme = "https" if rule.use_tls else parts.scheme
    netloc = rule.redirect or parts.netloc
    return urlunsplit((scheme, netloc, parts.path, parts.query, ""))


def filtered_query_params(
    options: DragonflyOptions, rule: Rule | None, default: Sequence[str]
) -> list[str]:
    """The header's list wins, then the rule's, then the proxy's default."""
    if options.filtered_query_params is not None:
        return list(options.filtered_query_params)
    if rule is not None and rule.filtered_query_params is not None:
        return list(rule.filtered_query_params)
    return list(default)


def forwardable(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """End-to-end request or response headers: hop-by-hop ones (and those a Connection
    header names) and X-Dragonfly-* dropped; repeated headers kept, in order."""
    pairs = list(headers)
    named = {
        token.strip().lower().encode("latin-1")
        for name, value in pairs
        if name.lower() == b"connection"
        for token in value.decode("latin-1").split(",")
    }
    return [
        (name, value)
        for name, value in pairs
        if name.lower() not in HOP_BY_HOP
        and name.lower() not in named
        and not name.lower().startswith(DRAGONFLY_PREFIX)
    ]


#: Request headers that shape a transfer (the task fetches whole objects itself).
_NOT_FOR_TASKS = frozenset({b"host", b"range", b"if-range", b"accept-encoding", b"content-length"})


def task_headers(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The request headers a P2P task sends to the origin on back-to-source
    (Authorization included, so registry tokens reach the registry); repeated ones are
    joined with ", " as RFC 9110 allows."""
    out: dict[str, str] = {}
    for name, value in forwardable(headers):
        if name.lower() in _NOT_FOR_TASKS:
            continue
        key = name.decode("latin-1")
        text = value.decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


class UpstreamAllowlist:
    """Which upstream hosts the proxy may reach (``proxy.upstream_allow``).

    Empty: any host, as Dragonfly's proxy. Otherwise a host must be an address inside
    one of the CIDRs, or a name listed exactly or matched by a ``*.suffix`` pattern;
    a name is judged as written, never resolved (so a refused one costs no DNS query).
    It keeps a proxy reachable by hostile clients (a fuzzer, a shared network) from
    being a relay into the rest of the network."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.names: list[str] = []
        for entry in entries:
            text = str(entry).strip().lower()
            try:
                self.networks.append(ipaddress.ip_network(text, strict=False))
                continue
            except ValueError:
                pass
            labels = text.removeprefix("*.").split(".")
            if not text or not all(re.fullmatch(r"[a-z0-9_-]{1,63}", label) for label in labels):
                raise ValueError(
                    f"{entry!r} is neither a CIDR (127.0.0.0/8), an address, a host name "
                    f"(registry.internal) nor a pattern (*.corp.example)"
                )
            self.names.append(text)

    def __bool__(self) -> bool:
        return bool(self.networks or self.names)

    def allows(self, host: str) -> bool:
        if not self:
            return True
        host = host.strip("[]").rstrip(".").lower()
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return any(
                host == name or (name.startswith("*.") and host.endswith(name[1:]))
                for name in self.names
            )
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)


def split_authority(authority: str, default_port: int) -> tuple[str, int]:
    """``host:port`` (IPv6 in brackets) into host and port; ValueError names it."""
    parts = urlsplit(f"//{authority}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{authority[:200]!r} has a bad port") from None
    if not parts.hostname:
        raise ValueError(f"{authority[:200]!r} has no host")
    return parts.hostname, port or default_port


def join_authority(host: str, port: int, default_port: int) -> str:
    """``host[:port]`` for a URL (an IPv6 address in brackets; the default port left
    out), the inverse of :func:`split_authority`."""
    shown = f"[{host}]" if ":" in host else host
    return shown if port == default_port else f"{shown}:{port}"
