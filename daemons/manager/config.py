"""Manager configuration (YAML + ``D7Y_MANAGER_<SECTION>__<KEY>``)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Literal

from d7y.daemons.config import ConfigError, Duration, field, load, section
from d7y.daemons.service import LifecycleConfig

ENV_PREFIX = "D7Y_MANAGER"


@dataclasses.dataclass
class ServerConfig:
    listen: str = field("0.0.0.0", "address of the REST API (/api/v1) and the API docs")
    port: int = field(8080, "port of the REST API (Dragonfly's manager port)")
    max_body: int = field(1024 * 1024, "largest request body accepted, bytes (413 above)")


@dataclasses.dataclass
class DatabaseConfig:
    url: str = field(
        "",
        "SQLAlchemy URL of the database; empty: SQLite in data_dir/manager.db. PostgreSQL: "
        "postgresql+asyncpg://user:password@host:5432/d7y (a bare postgresql:// gets asyncpg)",
    )
    pool_size: int = field(5, "connections kept open to PostgreSQL (SQLite: unused)")
    connect_timeout: Duration = field(
        Duration(5), "a connection to the database not made within this fails the request (503)"
    )


@dataclasses.dataclass
class AuthConfig:
    session_ttl: Duration = field(
        Duration(24 * 3600), "a session token from sign-in expires after this long"
    )
    seeded_token_ttl: Duration = field(
        Duration(365 * 86400), "lifetime of the personal access token created from $D7Y_PAT"
    )


@dataclasses.dataclass
class KeepaliveConfig:
    timeout: Duration = field(
        Duration(15),
        "a scheduler or seed peer with no keepalive for this long is inactive (they send "
        "one every 5s); inactive ones are not given to peers",
    )


@dataclasses.dataclass
class RedisConfig:
    address: str = field(
        "",
        "Redis for the job queue, host:port or redis://[:password@]host:port/db; empty: "
        "jobs are queued in the database (SQL)",
    )
    password: str = field("", "Redis password (better given as D7Y_MANAGER_REDIS__PASSWORD)")
    db: int = field(0, "Redis database number")
    key_prefix: str = field("d7y:", "prefix of every key the manager writes in Redis")
    cache_ttl: Duration = field(
        Duration(60),
        "with Redis: how long an answer of GET /api/v1/clusters stays cached (a write to "
        "a cluster drops the cached answers at once); 0 turns the response cache off",
    )


@dataclasses.dataclass
class JobConfig:
    preheat_timeout: Duration = field(
        Duration(30 * 60),
        "a preheat job whose tasks are not all done within this fails (the unfinished "
        "ones with 'timed out')",
    )
    registry_timeout: Duration = field(
        Duration(30), "one request to a registry (manifest, token) while resolving an image"
    )
    max_attempts: int = field(
        3, "times a preheat task is handed out again after its scheduler stopped mid-way"
    )


@dataclasses.dataclass
class MetricsConfig:
    listen: str = field("127.0.0.1", "address of /metrics and /healthy")
    port: int = field(8000, "port of /metrics and /healthy (0 disables)")


@dataclasses.dataclass
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = field("info", "log level")
    format: Literal["text", "json"] = field("text", "key=value text or JSON lines")


@dataclasses.dataclass
class ManagerConfig:
    data_dir: Path = field(
        Path("/var/lib/d7y/manager"),
        "the manager's own files: the SQLite database (when database.url is empty) and "
        "session.key, the key that signs session tokens",
    )
    server: ServerConfig = section(ServerConfig, "REST API listener")
    database: DatabaseConfig = section(DatabaseConfig, "where the state lives")
    auth: AuthConfig = section(AuthConfig, "sessions and tokens")
    keepalive: KeepaliveConfig = section(KeepaliveConfig, "scheduler and seed-peer liveness")
    redis: RedisConfig = section(
        RedisConfig, "optional Redis: the job queue and the response cache"
    )
    job: JobConfig = section(JobConfig, "preheat jobs")
    metrics: MetricsConfig = section(MetricsConfig, "Prometheus metrics and health")
    log: LogConfig = section(LogConfig, "logging")
    lifecycle: LifecycleConfig = section(
        LifecycleConfig, "readiness signal and graceful drain on SIGTERM/SIGINT"
    )

    def validate(self) -> None:
        for key, value in (("server.port", self.server.port), ("metrics.port", self.metrics.port)):
            if not 0 <= value <= 65535:
                raise ConfigError(f"config key {key!r} must be a port in 0..65535, got {value}")
        if self.database.pool_size < 1:
            raise ConfigError("config key 'database.pool_size' must be >= 1")
        if float(self.keepalive.timeout) <= 0:
            raise ConfigError("config key 'keepalive.timeout' must be > 0 (e.g. 15s)")
        if float(self.job.preheat_timeout) <= 0:
            raise ConfigError("config key 'job.preheat_timeout' must be > 0 (e.g. 30m)")
        if float(self.job.registry_timeout) <= 0:
            raise ConfigError("config key 'job.registry_timeout' must be > 0 (e.g. 30s)")
        if self.job.max_attempts < 1:
            raise ConfigError("config key 'job.max_attempts' must be >= 1")
        if self.redis.db < 0:
            raise ConfigError("config key 'redis.db' must be >= 0")
        url = self.database.url
        if url and not url.startswith(("sqlite", "postgresql", "postgres://")):
            raise ConfigError(
                f"config key 'database.url': {url.split('@')[-1]!r} is neither sqlite nor "
                "postgresql; write e.g. postgresql+asyncpg://user:pw@host:5432/d7y"
            )

    def database_url(self) -> str:
        """The async SQLAlchemy URL: the configured one with its async driver, or SQLite
        in the data dir."""
        url = self.database.url
        if not url:
            return f"sqlite+aiosqlite:///{self.data_dir / 'manager.db'}"
        for plain in ("postgresql://", "postgres://"):
            if url.startswith(plain):
                return "postgresql+asyncpg://" + url[len(plain) :]
        if url.startswith("sqlite://"):
            return "sqlite+aiosqlite://" + url[len("sqlite://") :]
        return url


def load_manager_config(path: str | os.PathLike | None = None, *, env=None, overrides=None):
    return load(ManagerConfig, path, env=env, env_prefix=ENV_PREFIX, overrides=overrides)
