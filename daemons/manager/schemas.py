"""Request bodies of the REST API, as msgspec types: decoding is validation.

Every constraint is declared here once (``Meta(ge=..., le=...)``); msgspec's error names
the field by its JSON path and the allowed range (``Expected `int` <= 20, got 50 - at
`$.scheduler_cluster_config.candidate_parent_limit```), unknown fields are refused, and
the same types give the OpenAPI document its schemas (see openapi.py). Ranges and
defaults are Dragonfly's (manager/types/cluster.go, scheduler.go, seed_peer.go).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

Name = Annotated[str, Meta(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9._-]+$")]
Hostname = Annotated[str, Meta(min_length=1, max_length=256)]
Port = Annotated[int, Meta(ge=1, le=65535)]
Text = Annotated[str, Meta(max_length=1024)]
Scope = Literal["job", "cluster"]
Role = Literal["root", "guest"]


class ValidationFailed(ValueError):
    """A value msgspec's types cannot express (a CIDR, a regular expression); the
    message names the field like msgspec's does."""


class Struct(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=False):
    pass


class Scopes(Struct):
    idc: Text = ""
    location: Text = ""
    cidrs: list[str] = msgspec.field(default_factory=list)
    hostnames: list[str] = msgspec.field(default_factory=list)


class SchedulerClusterConfig(Struct):
    candidate_parent_limit: Annotated[int, Meta(ge=1, le=20)] = 4
    filter_parent_limit: Annotated[int, Meta(ge=10, le=1000)] = 40
    job_rate_limit: Annotated[int, Meta(ge=1, le=1_000_000)] = 10


class SeedPeerClusterConfig(Struct):
    load_limit: Annotated[int, Meta(ge=1, le=5000)] = 300


class PeerClusterConfig(Struct):
    load_limit: Annotated[int, Meta(ge=1, le=2000)] = 50
    block_list: list[Hostname] = msgspec.field(default_factory=list)


class ClusterCreate(Struct):
    name: Name
    bio: Text = ""
    scopes: Scopes = msgspec.field(default_factory=Scopes)
    is_default: bool = False
    scheduler_cluster_config: SchedulerClusterConfig = msgspec.field(
        default_factory=SchedulerClusterConfig
    )
    seed_peer_cluster_config: SeedPeerClusterConfig = msgspec.field(
        default_factory=SeedPeerClusterConfig
    )
    peer_cluster_config: PeerClusterConfig = msgspec.field(default_factory=PeerClusterConfig)


class ClusterUpdate(Struct):
    """A partial update: the fields given replace the stored ones whole."""

    name: Name | UnsetType = UNSET
    bio: Text | UnsetType = UNSET
    scopes: Scopes | UnsetType = UNSET
    is_default: bool | UnsetType = UNSET
    scheduler_cluster_config: SchedulerClusterConfig | UnsetType = UNSET
    seed_peer_cluster_config: SeedPeerClusterConfig | UnsetType = UNSET
    peer_cluster_config: PeerClusterConfig | UnsetType = UNSET


class SchedulerRegister(Struct):
    """What a scheduler tells the manager when it starts (and may repeat)."""

    hostname: Hostname
    ip: Annotated[str, Meta(min_length=1, max_length=64)]
    port: Port
    cluster_id: Annotated[int, Meta(ge=1)]
    idc: Text = ""
    location: Text = ""
    features: list[Annotated[str, Meta(max_length=64)]] = msgspec.field(default_factory=list)


class SeedPeerRegister(Struct):
    hostname: Hostname
    ip: Annotated[str, Meta(min_length=1, max_length=64)]
    port: Port
    download_port: Port
    cluster_id: Annotated[int, Meta(ge=1)]
    type: Literal["super", "strong", "weak"] = "super"
    idc: Text = ""
    location: Text = ""


class SchedulerSearch(Struct):
    """Who asks for schedulers: a dfdaemon's host."""

    hostname: Hostname
    ip: Annotated[str, Meta(min_length=1, max_length=64)]
    idc: Text = ""
    location: Text = ""


class SignIn(Struct):
    name: Name
    password: Annotated[str, Meta(min_length=1, max_length=1024)]


class UserCreate(Struct):
    name: Name
    password: Annotated[str, Meta(min_length=8, max_length=1024)]
    email: Text = ""
    role: Role = "guest"


class UserUpdate(Struct):
    email: Text | UnsetType = UNSET
    role: Role | UnsetType = UNSET
    state: Literal["enable", "disable"] | UnsetType = UNSET


class PasswordReset(Struct):
    old_password: Annotated[str, Meta(min_length=1, max_length=1024)]
    new_password: Annotated[str, Meta(min_length=8, max_length=1024)]


class TokenCreate(Struct):
    name: Name
    scopes: Annotated[list[Scope], Meta(min_length=1)]
    #: Lifetime in seconds from now; at most ten years.
    expires_in: Annotated[int, Meta(ge=60, le=10 * 365 * 86400)]
    bio: Text = ""


class TokenUpdate(Struct):
    state: Literal["active", "inactive"] | UnsetType = UNSET
    bio: Text | UnsetType = UNSET


# -- jobs ---------------------------------------------------------------------------------

#: Dragonfly's manifest URL form (pkg/oci/reference.go): <scheme>://<registry>/v2/<repo>/manifests/<ref>
MANIFEST_URL = re.compile(r"^(https?)://([^/]+)/v2/(.+)/manifests/([^/]+)$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_PLATFORM = re.compile(r"^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$")
JobState = Literal["PENDING", "RUNNING", "SUCCESS", "FAILURE"]


PreheatScope = Literal["single_seed_peer", "all_seed_peers", "all_peers"]
#: The most URLs one file preheat may name (each is one task per cluster).
MAX_PREHEAT_URLS = 1000
#: The longest a preheat may take (seconds): a week.
MAX_PREHEAT_TIMEOUT = 7 * 24 * 3600
#: Dragonfly's piece length bounds for a user's choice (core/pieces.py): 4 MiB..1 GiB.
MIN_PIECE_LENGTH, MAX_PIECE_LENGTH = 4 << 20, 1 << 30


class PreheatArgs(Struct):
    """What to preheat. ``file``: ``url`` is one file, or ``urls`` several (one of the
    two). ``image``: ``url`` is a manifest URL; its config and layers are preheated.
    ``filtered_query_params``: names left out of the task ID, separated by ``&``
    (Dragonfly's form) or ``,``; empty: the default list (S3, GCS, OSS signatures).
    ``tag``, ``application`` and ``piece_length`` take part in the task ID as in dfget
    (``--tag``, ``--application``, ``--piece-length``): give the same ones a later
    download uses. ``platform``: ``os/arch[/variant]`` chosen from a manifest list or
    index (empty: linux/amd64). ``scope``: which hosts of each cluster download
    (``single_seed_peer``: the seed peer the task hashes to; ``all_seed_peers``: every
    seed peer; ``all_peers``: every host, seed or not, the scheduler knows).
    ``timeout``: seconds the job may take (unset: the manager's job.preheat_timeout)."""

    type: Literal["image", "file"]
    url: Annotated[str, Meta(max_length=8192)] = ""
    urls: Annotated[
        list[Annotated[str, Meta(min_length=1, max_length=8192)]],
        Meta(max_length=MAX_PREHEAT_URLS),
    ] = msgspec.field(default_factory=list)
    tag: Annotated[str, Meta(max_length=256)] = ""
    application: Annotated[str, Meta(max_length=256)] = ""
    piece_length: Annotated[int, Meta(ge=MIN_PIECE_LENGTH, le=MAX_PIECE_LENGTH)] | None = None
    filtered_query_params: Annotated[str, Meta(max_length=8192)] = ""
    headers: Annotated[dict[str, Annotated[str, Meta(max_length=8192)]], Meta(max_length=256)] = (
        msgspec.field(default_factory=dict)
    )
    username: Annotated[str, Meta(max_length=1024)] = ""
    password: Annotated[str, Meta(max_length=1024)] = ""
    platform: Annotated[str, Meta(max_length=64)] = ""
    scope: PreheatScope = "single_seed_peer"
    timeout: Annotated[float, Meta(ge=1, le=MAX_PREHEAT_TIMEOUT)] | None = None

    def all_urls(self) -> list[str]:
        """The URLs to preheat as given (an image's is its manifest), duplicates once."""
        return list(dict.fromkeys(self.urls)) if self.urls else [self.url]


class JobCreate(Struct):
    type: Literal["preheat"]
    args: PreheatArgs
    #: The clusters whose seed peers preheat; empty: every cluster.
    scheduler_cluster_ids: Annotated[list[Annotated[int, Meta(ge=1)]], Meta(max_length=100)] = (
        msgspec.field(default_factory=list)
    )


class JobQuery(Struct):
    page: int = 1
    per_page: int = 50
    state: JobState | None = None
    type: Literal["preheat"] | None = None


class JobClaim(Struct):
    """A scheduler asks for preheat tasks of its cluster; the manager answers as soon as
    there are some, or after ``wait`` seconds with none."""

    max_tasks: Annotated[int, Meta(ge=1, le=1000)] = 16
    wait: Annotated[float, Meta(ge=0, le=30)] = 5.0


class JobTaskReport(Struct):
    id: Annotated[int, Meta(ge=1)]
    state: Literal["SUCCESS", "FAILURE"]
    seed_peer: Annotated[str, Meta(max_length=512)] = ""
    error: Annotated[str, Meta(max_length=8192)] = ""


class JobReport(Struct):
    """Results of claimed tasks. A task of scope ``all_seed_peers`` or ``all_peers`` has
    one item per host that downloaded it (the same ``id``): each becomes a result row."""

    tasks: Annotated[list[JobTaskReport], Meta(min_length=1, max_length=1000)]


def split_filtered_query_params(text: str) -> list[str] | None:
    """``"Expires&Signature"`` -> the names; ``""`` -> None (the default filter list)."""
    names = [n.strip() for n in re.split(r"[&,]", text) if n.strip()]
    return names or None


def check_preheat_args(args: PreheatArgs, path: str = "$.args") -> None:
    """What the types cannot say: a URL the seed peers can fetch, a manifest URL for an
    image, header names and values that fit in a request, a platform of os/arch."""
    from urllib.parse import urlsplit

    if bool(args.url) == bool(args.urls):
        raise ValidationFailed(
            "give either url (one file or an image's manifest) or urls (several files), "
            f"not {'both' if args.url else 'neither'} - at `{path}.url`"
        )
    if args.urls and args.type != "file":
        raise ValidationFailed(
            f"urls is for type file; an image preheat takes its manifest in url - at `{path}.urls`"
        )
    for index, url in enumerate(args.urls or [args.url]):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            where = f"{path}.urls[{index}]" if args.urls else f"{path}.url"
            raise ValidationFailed(f"{url!r} is not an http(s) URL with a host - at `{where}`")
    if args.type == "image" and not MANIFEST_URL.match(args.url):
        raise ValidationFailed(
            f"{args.url!r} is not a manifest URL; an image preheat needs "
            f"<scheme>://<registry>/v2/<repo>/manifests/<tag or digest> - at `{path}.url`"
        )
    for name, value in args.headers.items():
        if not _HEADER_NAME.match(name) or len(name) > 256:
            raise ValidationFailed(f"{name!r} is not an HTTP header name - at `{path}.headers`")
        if "\r" in value or "\n" in value:
            raise ValidationFailed(
                f"the value of header {name!r} holds a line break - at `{path}.headers`"
            )
    names = split_filtered_query_params(args.filtered_query_params) or []
    if any(len(n) > 256 for n in names) or len(names) > 256:
        raise ValidationFailed(
            f"at most 256 names of at most 256 characters each - at `{path}.filtered_query_params`"
        )
    if args.platform and not _PLATFORM.match(args.platform):
        raise ValidationFailed(
            f"{args.platform!r} is not os/arch[/variant] (e.g. linux/amd64) - at `{path}.platform`"
        )
    if (args.username or args.password) and args.type != "image":
        raise ValidationFailed(
            "username and password are for a registry (type image); for a file put an "
            f"Authorization header in headers - at `{path}.username`"
        )


def check_scopes(scopes: Scopes, path: str = "$.scopes") -> None:
    """CIDRs must parse and hostnames must be regular expressions (Dragonfly skips bad
    ones silently at match time; refusing them at write time is kinder)."""
    for i, cidr in enumerate(scopes.cidrs):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ValidationFailed(
                f"{cidr!r} is not a CIDR (write e.g. 10.0.0.0/8) - at `{path}.cidrs[{i}]`"
            ) from None
    for i, pattern in enumerate(scopes.hostnames):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValidationFailed(
                f"{pattern!r} is not a regular expression ({exc}) - at `{path}.hostnames[{i}]`"
            ) from None


def check_ip(ip: str, path: str = "$.ip") -> None:
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise ValidationFailed(f"{ip!r} is not an IP address - at `{path}`") from None


REQUEST_TYPES: tuple[type, ...] = (
    ClusterCreate,
    ClusterUpdate,
    SchedulerRegister,
    SeedPeerRegister,
    SchedulerSearch,
    SignIn,
    UserCreate,
    UserUpdate,
    PasswordReset,
    TokenCreate,
    TokenUpdate,
    PreheatArgs,
    JobCreate,
    JobClaim,
    JobTaskReport,
    JobReport,
)
