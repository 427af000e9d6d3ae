"""Scheduler daemon configuration (YAML + ``D7Y_SCHEDULER_<SECTION>__<KEY>``)."""

from __future__ import annotations

import dataclasses
import os
from typing import Literal

from d7y.daemons.config import ConfigError, Duration, field, load, section
from d7y.daemons.service import SchedulerLifecycleConfig
from d7y.daemons.tls import SecurityConfig
from d7y.daemons.tls import validate as validate_tls

ENV_PREFIX = "D7Y_SCHEDULER"


@dataclasses.dataclass
class ServerConfig:
    listen: str = field("0.0.0.0", "address of the scheduler's protocol port")
    port: int = field(8002, "protocol port (Dragonfly's scheduler port)")
    max_frame: int = field(1024 * 1024, "largest frame body accepted, bytes")
    idle_timeout: Duration = field(
        Duration(300),
        "a connection that sends no frame for this long is closed (dfdaemon announces its "
        "host every scheduler.announce_interval, 30s, which keeps its connection open); "
        "0 = never",
    )
    request_timeout: Duration = field(
        Duration(30),
        "a frame that has begun must arrive whole within this, or the "
        "connection is closed; 0 = no limit",
    )
    max_connections: int = field(
        10000, "connections open at once; more are refused with a 'busy' Error (0 = no limit)"
    )
    max_connections_per_ip: int = field(
        1024, "connections open at once from one IP address; more are refused (0 = no limit)"
    )


@dataclasses.dataclass
class SchedulingConfig:
    policy: Literal["d7y", "dragonfly"] = field(
        "d7y",
        "scheduling rules: d7y (ours) or dragonfly (Dragonfly v2 as it ships); peers "
        "should run the same download.policy",
    )
    algorithm: Literal["load_aware", "base", "random"] = field(
        "load_aware", "parent evaluator: Dragonfly's load-aware default, its older base, random"
    )
    filter_parent_limit: int = field(
        0, "peers sampled as candidate parents per round (0: the policy's, 40 / dragonfly 15)"
    )
    candidate_parent_limit: int = field(
        0, "parents handed to a peer per round (0: the policy's, 4 / dragonfly 3)"
    )
    max_parents: int = field(0, "parents a peer holds at once (0: the policy's, 12 / dragonfly 3)")
    retry_limit: int = field(5, "scheduling rounds before a peer gives up")
    retry_back_to_source_limit: int = field(4, "failed rounds before back-to-source")
    retry_interval: Duration = field(
        Duration(0), "wait between rounds, with jitter (0: the policy's, 0.2 s / dragonfly 0.5 s)"
    )
    back_to_source_limit: int = field(200, "peers of one task allowed back to source")
    sample_servable_only: Literal["policy", "on", "off"] = field(
        "policy",
        "sample candidates only among peers able to serve (policy: on for d7y, off for dragonfly)",
    )
    seed: int = field(0, "random seed of the scheduler's decisions (0: from the OS)")


@dataclasses.dataclass
class GCConfig:
    interval: Duration = field(Duration(60), "how often expired peers, tasks, hosts go")
    peer_ttl: Duration = field(Duration(24 * 3600), "a peer is dropped after this long")
    host_ttl: Duration = field(Duration(3600), "a host that stopped announcing is dropped")
    task_ttl: Duration = field(Duration(24 * 3600), "an idle task is dropped")


@dataclasses.dataclass
class ManagerConfig:
    address: str = field("", "the manager's REST address (host:8080); empty: run without a manager")
    token: str = field(
        "", "personal access token with scope 'cluster' (better given as "
        "D7Y_SCHEDULER_MANAGER__TOKEN than in the file)",
    )  # fmt: skip
    cluster_id: int = field(1, "the cluster this scheduler serves (1: cluster-1, the default)")
    hostname: str = field("", "host name registered; empty: the machine's")
    ip: str = field("127.0.0.1", "address peers reach this scheduler at")
    advertise_port: int = field(0, "port registered; 0: server.port as bound")
    idc: str = field("", "IDC registered (peers in it prefer this cluster)")
    location: str = field("", "location registered, '|'-separated (e.g. eu|de|fra)")
    keepalive_interval: Duration = field(Duration(5), "how often to tell the manager it lives")
    config_interval: Duration = field(
        Duration(60), "how often to fetch the cluster's config and apply its parent limits"
    )
    preheat_concurrency: int = field(
        8,
        "preheat tasks of the cluster this scheduler runs at once (its seed peers fetch "
        "them); it takes them from the manager's job queue",
    )


@dataclasses.dataclass
class MetricsConfig:
    listen: str = field("127.0.0.1", "address of /metrics and /healthy")
    port: int = field(8000, "port of /metrics and /healthy (0 disables)")


@dataclasses.dataclass
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = field(
        "info", "log level; debug logs every scheduling decision"
    )
    format: Literal["text", "json"] = field("text", "key=value text or JSON lines")


@dataclasses.dataclass
class SchedulerDaemonConfig:
    server: ServerConfig = section(ServerConfig, "protocol listener")
    scheduling: SchedulingConfig = section(SchedulingConfig, "the algorithm's limits")
    gc: GCConfig = section(GCConfig, "expiry of peers, tasks and hosts")
    manager: ManagerConfig = section(ManagerConfig, "registration with the manager")
    metrics: MetricsConfig = section(MetricsConfig, "Prometheus metrics and health")
    security: SecurityConfig = section(SecurityConfig, "TLS on the protocol port")
    log: LogConfig = section(LogConfig, "logging")
    lifecycle: SchedulerLifecycleConfig = section(
        SchedulerLifecycleConfig, "readiness signal and graceful drain on SIGTERM/SIGINT"
    )

    def validate(self) -> None:
        for key, value in (
            ("server.port", self.server.port),
            ("metrics.port", self.metrics.port),
        ):
            if not 0 <= value <= 65535:
                raise ConfigError(f"config key {key!r} must be a port in 0..65535, got {value}")
        for key in ("max_connections", "max_connections_per_ip"):
            if getattr(self.server, key) < 0:
                raise ConfigError(f"config key 'server.{key}' must be >= 0 (0 = no limit)")
        for key in ("filter_parent_limit", "candidate_parent_limit", "max_parents"):
            if getattr(self.scheduling, key) < 0:
                raise ConfigError(
                    f"config key 'scheduling.{key}' must be >= 1, or 0 for the policy's value"
                )
        if self.manager.preheat_concurrency < 1:
            raise ConfigError("config key 'manager.preheat_concurrency' must be >= 1")
        if self.manager.address and self.manager.cluster_id < 1:
            raise ConfigError("config key 'manager.cluster_id' must be >= 1")
        validate_tls(self.security.tls)
        if self.scheduling.retry_limit < 1:
            raise ConfigError("config key 'scheduling.retry_limit' must be >= 1")
        if (
            self.scheduling.filter_parent_limit
            and self.scheduling.candidate_parent_limit > self.scheduling.filter_parent_limit
        ):
            raise ConfigError(
                "config key 'scheduling.candidate_parent_limit' cannot exceed "
                "'scheduling.filter_parent_limit'"
            )


def load_scheduler_config(path: str | os.PathLike | None = None, *, env=None, overrides=None):
    return load(SchedulerDaemonConfig, path, env=env, env_prefix=ENV_PREFIX, overrides=overrides)
