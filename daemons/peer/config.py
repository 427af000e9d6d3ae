"""dfdaemon configuration: every key, its default and what it does.

Loaded by :func:`load_peer_config` from YAML (``--config``, default
``/etc/d7y/dfdaemon.yaml`` when it exists) with environment overrides
``D7Y_DFDAEMON_<SECTION>__<KEY>`` (for example ``D7Y_DFDAEMON_DOWNLOAD__CONCURRENCY=8``).
docs/configuration.md is generated from these definitions (``d7y config-docs dfdaemon``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Literal

from d7y.core.pieces import MIN_PIECE_LENGTH
from d7y.core.scheduling.download import DownloadConfig as LoopConfig
from d7y.daemons.config import ConfigError, Duration, Size, field, load, section
from d7y.daemons.proxy.config import ProxyConfig
from d7y.daemons.service import LifecycleConfig
from d7y.daemons.sources import OciConfig, S3Config, SourcePolicy
from d7y.daemons.tls import SecurityConfig
from d7y.daemons.tls import validate as validate_tls

DEFAULT_CONFIG_PATH = Path("/etc/d7y/dfdaemon.yaml")
ENV_PREFIX = "D7Y_DFDAEMON"


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/d7y/dfdaemon`` or ``~/.local/share/d7y/dfdaemon``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "d7y" / "dfdaemon"


@dataclasses.dataclass
class HostConfig:
    ip: str = field("127.0.0.1", "address other peers and the scheduler use to reach this host")
    hostname: str = field("", "host name in IDs; empty means the machine's hostname")
    idc: str = field("", "data centre name, used by the scheduler to prefer near parents")
    location: str = field("", "'|'-separated location, e.g. 'cn|hz|zone-a'")
    upload_bandwidth: int = field(
        10_000_000_000,
        "upload capacity in bits/s announced to the scheduler (its max_tx; upload.rate_limit "
        "lowers it)",
    )
    download_bandwidth: int = field(
        10_000_000_000,
        "download capacity in bits/s announced to the scheduler (download.rate_limit lowers "
        "it); the d7y policy gives a parent about upload/download children",
    )


@dataclasses.dataclass
class StorageConfig:
    data_dir: Path = field(
        default_data_dir(),
        "where content and metadata.db live",
        shown="$XDG_DATA_HOME/d7y/dfdaemon or ~/.local/share/d7y/dfdaemon",
    )
    task_ttl: Duration = field(Duration(6 * 3600), "a task unused this long is removed by GC")
    gc_interval: Duration = field(Duration(60), "how often GC runs")
    disk_high_watermark: float = field(
        0.8, "GC starts when the data dir's filesystem is fuller than this fraction"
    )
    disk_low_watermark: float = field(0.6, "GC evicts least recently used tasks down to this")
    quota: Size = field(
        Size(0), "absolute limit for stored content (0 = use the filesystem watermarks)"
    )


@dataclasses.dataclass
class DownloadConfig:
    policy: Literal["d7y", "dragonfly"] = field(
        "d7y",
        "the P2P download loop's rules: d7y (ours) or dragonfly (Dragonfly's client: 8 "
        "pieces in flight, announcement order, 360 s stream timeout, new parents only once "
        "every parent is gone); use the scheduler's scheduling.policy",
    )
    concurrency: int = field(16, "pieces fetched at once per task")
    max_concurrent_tasks: int = field(16, "tasks downloading at once; more wait in line")
    rate_limit: Size = field(Size(0), "download bytes/s for the whole daemon (0 = unlimited)")
    piece_timeout: Duration = field(Duration(60), "give up on one origin request after this")
    parent_piece_timeout: Duration = field(
        Duration(0),
        "a piece request to a parent times out after this at the least (0: the policy's, "
        "30 s growing with the measured piece time / dragonfly 360 s)",
    )
    cut_through: bool | None = field(
        None,
        "cut-through relaying: announce a piece to children as soon as it starts arriving "
        "from a parent and stream it on as its bytes land (the child still checks the "
        "whole piece's digest); children use such pieces only with this on too "
        "(docs/protocol.md); null: the policy's, on for d7y, off for dragonfly (its "
        "client relays whole pieces)",
    )
    origin_retries: int = field(5, "attempts per origin request (connection errors, 5xx)")
    origin_backoff: Duration = field(Duration(0.1), "first retry delay; doubles per attempt")
    origin_backoff_max: Duration = field(Duration(5), "longest retry delay")


@dataclasses.dataclass
class UploadConfig:
    listen: str = field(
        "",
        "address of the upload servers (piece protocol and HTTP); empty: host.ip, the "
        "address announced to the scheduler (0.0.0.0 listens on every interface)",
    )
    port: int = field(4000, "HTTP read-only endpoint serving task bytes with Range")
    download_token: str = field(
        "",
        "when set, GET /download/<task_id> on the HTTP endpoint needs 'Authorization: "
        "Bearer <token>' (peers use the piece port and are not affected); empty: open",
    )
    piece_port: int = field(4005, "framed piece protocol for other peers")
    rate_limit: Size = field(Size(0), "upload bytes/s for the whole daemon (0 = unlimited)")
    rate_chunk: Size = field(
        Size(0),
        "with rate_limit: a piece is sent in chunks of this many bytes, each paced by the "
        "limit, like a link of that rate (0: each piece waits for its turn, then goes out "
        "at once); a relay that receives pieces cut-through passes them on as they flow",
    )
    max_concurrent: int = field(64, "pieces served at once; more get a 'busy' error")
    fair_window: Duration = field(
        Duration(0.1),
        "while some child got 'busy' within this window, a child served within it yields a "
        "freed upload slot ('busy' too), so children that hold slots cannot starve the "
        "others; about the children's busy back-off. 0 = first come, first served",
    )
    max_frame: Size = field(Size(1024 * 1024), "largest protocol frame body accepted")
    idle_timeout: Duration = field(
        Duration(60),
        "an upload connection (piece protocol or HTTP) with no request for this long is "
        "closed; a piece connection subscribed to a running task is not idle; 0 = never",
    )
    request_timeout: Duration = field(
        Duration(10),
        "a request that has begun (a frame, an HTTP request head) must arrive whole within "
        "this, or the connection is closed; 0 = no limit",
    )
    max_connections: int = field(
        4096, "connections open at once on each upload port; more are refused (0 = no limit)"
    )
    max_connections_per_ip: int = field(
        1024,
        "connections open at once from one IP address on each upload port; more are refused "
        "(0 = no limit)",
    )


@dataclasses.dataclass
class APIConfig:
    socket: Path | None = field(
        None, "unix socket of the local API (default <data_dir>/dfdaemon.sock)"
    )
    idle_timeout: Duration = field(
        Duration(60),
        "a local API connection with no request in progress for this long (or that sends "
        "only part of a request head) is closed; must be > 0",
    )


@dataclasses.dataclass
class MetricsConfig:
    listen: str = field("127.0.0.1", "address of /metrics and /healthy")
    port: int = field(4002, "port of /metrics and /healthy (0 disables)")


@dataclasses.dataclass
class SchedulerClientConfig:
    address: str = field("", "scheduler host:port; empty: no scheduler, always back to source")
    announce_interval: Duration = field(Duration(30), "how often the host announces itself")
    register_timeout: Duration = field(
        Duration(30), "longest wait for the scheduler's answer to a registration"
    )
    stall_timeout: Duration = field(
        Duration(0),
        "a P2P download with nothing in flight and no piece for this long falls back to "
        "the origin (0: the policy's, 120 s / dragonfly never)",
    )


@dataclasses.dataclass
class ManagerLinkConfig:
    address: str = field(
        "",
        "the manager's REST address (host:8080); when set and scheduler.address is empty, "
        "the scheduler is the first healthy one the manager lists for this host",
    )
    token: str = field(
        "", "personal access token with scope 'cluster' (better as D7Y_DFDAEMON_MANAGER__TOKEN)"
    )
    refresh_interval: Duration = field(
        Duration(60), "how often to ask the manager for this host's schedulers"
    )


@dataclasses.dataclass
class SourceConfig:
    allow: list[str] = field(
        [],
        "origins a download caused by a remote party (a seed peer triggered by the "
        "scheduler) may reach although they are internal: CIDRs (10.0.0.0/8), addresses, "
        "host names or *.suffix patterns; loopback, private, link-local and cloud metadata "
        "addresses are refused unless listed here. Downloads asked for on this machine "
        "(dfget) are never restricted",
    )
    deny: list[str] = field(
        [],
        "origins a download caused by a remote party may never reach, public or not "
        "(same forms as source.allow); deny wins over allow",
    )
    s3: S3Config = section(
        S3Config, "s3:// URLs: endpoint, region and credentials (else the AWS env and files)"
    )
    oci: OciConfig = section(OciConfig, "oci:// URLs: registry credentials and plain-HTTP hosts")


@dataclasses.dataclass
class TestingConfig:
    corrupt_uploads: bool = field(
        False, "TEST ONLY: flip a byte in every piece served to peers (fault injection)"
    )


@dataclasses.dataclass
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = field("info", "log level")
    format: Literal["text", "json"] = field("text", "key=value text or one JSON object a line")


@dataclasses.dataclass
class PeerConfig:
    seed_peer: bool = field(
        False, "run as a seed peer: the scheduler triggers it to fetch tasks from the origin"
    )
    host: HostConfig = section(HostConfig, "how this host is named and placed")
    storage: StorageConfig = section(StorageConfig, "content, metadata and garbage collection")
    download: DownloadConfig = section(DownloadConfig, "fetching pieces")
    upload: UploadConfig = section(UploadConfig, "serving pieces to peers and tools")
    api: APIConfig = section(APIConfig, "local API for dfget")
    metrics: MetricsConfig = section(MetricsConfig, "Prometheus metrics and health")
    proxy: ProxyConfig = section(ProxyConfig, "HTTP proxy and registry mirror")
    scheduler: SchedulerClientConfig = section(SchedulerClientConfig, "the scheduler")
    manager: ManagerLinkConfig = section(ManagerLinkConfig, "finding schedulers via the manager")
    source: SourceConfig = section(
        SourceConfig,
        "back-to-source: the outbound fetch policy for downloads a remote party caused "
        "(SSRF guard, every scheme) and the settings of the s3 and oci sources",
    )
    security: SecurityConfig = section(
        SecurityConfig, "TLS on the piece port and to the scheduler and other peers"
    )
    testing: TestingConfig = section(TestingConfig, "fault injection for tests")
    log: LogConfig = section(LogConfig, "logging")
    lifecycle: LifecycleConfig = section(
        LifecycleConfig, "readiness signal and graceful drain on SIGTERM/SIGINT"
    )

    def source_policy(self) -> SourcePolicy:
        """The fetch policy of ``source.allow`` / ``source.deny`` (ValueError names a
        bad entry)."""
        return SourcePolicy(allow=self.source.allow, deny=self.source.deny)

    def download_loop_config(self) -> LoopConfig:
        """The core download loop's rules: ``download.policy`` with the timeouts this
        config sets (0 keeps the policy's)."""
        fields: dict[str, float] = {}
        if self.download.parent_piece_timeout:
            fields["piece_timeout"] = float(self.download.parent_piece_timeout)
        if self.scheduler.stall_timeout:
            fields["stall_timeout"] = float(self.scheduler.stall_timeout)
        cut_through = self.download.cut_through
        if cut_through is None:
            cut_through = self.download.policy == "d7y"
        return LoopConfig(policy=self.download.policy, cut_through=cut_through, **fields)

    @property
    def upload_listen(self) -> str:
        """Where the upload servers listen: upload.listen, else the announced address."""
        return self.upload.listen or self.host.ip

    @property
    def socket_path(self) -> Path:
        return self.api.socket or self.storage.data_dir / "dfdaemon.sock"

    def validate(self) -> None:
        """Cross-field checks the types cannot express; ConfigError names the key."""

        def positive(key: str, value: float) -> None:
            if value <= 0:
                raise ConfigError(f"config key {key!r} must be > 0, got {value}")

        positive("download.concurrency", self.download.concurrency)
        positive("download.max_concurrent_tasks", self.download.max_concurrent_tasks)
        positive("download.piece_timeout", self.download.piece_timeout)
        positive("download.origin_retries", self.download.origin_retries)
        positive("upload.max_concurrent", self.upload.max_concurrent)
        positive("api.idle_timeout", self.api.idle_timeout)
        for key in ("max_connections", "max_connections_per_ip"):
            if getattr(self.upload, key) < 0:
                raise ConfigError(f"config key 'upload.{key}' must be >= 0 (0 = no limit)")
        if self.upload.max_frame < 4096:
            raise ConfigError(
                f"config key 'upload.max_frame' must be >= 4KiB, got {int(self.upload.max_frame)}"
            )
        for key in ("upload.port", "upload.piece_port", "metrics.port"):
            section_name, name = key.split(".")
            port = getattr(getattr(self, section_name), name)
            if not 0 <= port <= 65535:
                raise ConfigError(f"config key {key!r} must be a port in 0..65535, got {port}")
        low, high = self.storage.disk_low_watermark, self.storage.disk_high_watermark
        if not 0 < low < high <= 1:
            raise ConfigError(
                f"config keys 'storage.disk_low_watermark' ({low}) and "
                f"'storage.disk_high_watermark' ({high}) need 0 < low < high <= 1"
            )
        if self.scheduler.address:
            host, sep, port = self.scheduler.address.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(
                    f"config key 'scheduler.address' must be host:port, got "
                    f"{self.scheduler.address!r}"
                )
        self.proxy.validate()
        try:
            self.source_policy()
        except ValueError as exc:
            raise ConfigError(f"config key {exc}") from None
        validate_tls(self.security.tls)
        if 0 < self.storage.quota < MIN_PIECE_LENGTH:
            raise ConfigError(
                f"config key 'storage.quota' must be 0 or >= 4MiB, got {int(self.storage.quota)}"
            )


def load_peer_config(
    path: str | os.PathLike | None = None, *, env=None, overrides=None
) -> PeerConfig:
    """Load the dfdaemon config; the default path is used only when it exists."""
    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    return load(PeerConfig, path, env=env, env_prefix=ENV_PREFIX, overrides=overrides)
