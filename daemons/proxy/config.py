"""The ``proxy`` section of dfdaemon's configuration."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from d7y.core.proxy import (
    DEFAULT_FILTERED_QUERY_PARAMS,
    DEFAULT_RULE_REGEX,
    Rule,
    UpstreamAllowlist,
)
from d7y.daemons.config import ConfigError, Duration, field, section


@dataclasses.dataclass
class ProxyRuleConfig:
    regex: str = field(DEFAULT_RULE_REGEX, "regex over the URL without its query")
    use_tls: bool = field(False, "fetch the matching URL over https")
    redirect: str = field("", "replace the URL's host:port with this")
    filtered_query_params: list[str] | None = field(
        None, "query parameters left out of the task ID (null: proxy.filtered_query_params)"
    )


@dataclasses.dataclass
class RegistryMirrorConfig:
    addr: str = field(
        "https://index.docker.io",
        "the registry a mirror request (origin-form, no X-Dragonfly-Registry header, no "
        "ns query parameter) goes to; skopeo and podman send neither",
    )
    plain_http_registries: list[str] = field(
        [],
        "registry host[:port]s named by a bare ns query parameter that are reached over "
        "plain http (others get https)",
    )


@dataclasses.dataclass
class BasicAuthConfig:
    username: str = field(
        "",
        "forward-proxy and CONNECT requests must carry these credentials in "
        "Proxy-Authorization (407 otherwise); empty: no authentication",
    )
    password: str = field("", "the password of proxy.basic_auth.username")


@dataclasses.dataclass
class ProxyConfig:
    listen: str = field("127.0.0.1", "address of the proxy and registry mirror")
    port: int = field(4001, "port of the proxy and registry mirror (0 disables it)")
    rules: list[ProxyRuleConfig] = field(
        [ProxyRuleConfig()],
        "a GET whose URL (without query) matches the first rule's regex goes P2P; "
        "each rule: {regex, use_tls, redirect, filtered_query_params}; other requests "
        "go direct (a GET with X-Dragonfly-Use-P2P: true goes P2P too)",
        shown="[{regex: 'blobs/sha256.*'}]",
    )
    filtered_query_params: list[str] = field(
        list(DEFAULT_FILTERED_QUERY_PARAMS),
        "query parameters left out of a proxied task's ID (signatures of S3, GCS, OSS, "
        "OBS, COS, and ns)",
        shown="X-Amz-*, X-Goog-*, OSS/OBS/COS signature parameters, ns",
    )
    registry_mirror: RegistryMirrorConfig = section(RegistryMirrorConfig, "registry mirror")
    basic_auth: BasicAuthConfig = section(
        BasicAuthConfig,
        "optional basic authentication of forward-proxy requests (registry-mirror requests "
        "cannot carry it: bind the proxy to loopback or a trusted network)",
    )
    rate_limit: float = field(
        0.0,
        "requests per second the proxy accepts (a second's worth at once); more get "
        "429 (0 = no limit)",
    )
    ca_cert: Path | None = field(
        None,
        "PEM CA certificate: CONNECT tunnels are then terminated with a per-host leaf "
        "certificate it signs (write one with `d7y proxy ca init DIR`); unset: CONNECT is "
        "a plain tunnel (never P2P)",
    )
    ca_key: Path | None = field(None, "PEM private key of proxy.ca_cert")
    upstream_ca_bundle: Path | None = field(
        None,
        "PEM bundle trusted for upstream https (the proxy's and this peer's origin "
        "requests), besides the system's",
    )
    insecure_skip_verify: bool = field(
        False, "do not verify upstream https certificates (tests, private registries)"
    )
    upstream_allow: list[str] = field(
        [],
        "upstream hosts the proxy may reach (CIDRs, host names, *.suffix patterns; names "
        "are matched as written, not resolved); others get 403; empty: any host, as "
        "Dragonfly (set it when untrusted clients can reach the proxy)",
    )
    prefetch: bool = field(
        False,
        "on a P2P Range request, also fetch the whole task in the background once the "
        "range's pieces are in (the X-Dragonfly-Prefetch header overrides it per request)",
    )
    output_dirs: list[Path] = field(
        [],
        "directories under which X-Dragonfly-Output-Path may put objects (hard link or "
        "copy, never over an existing file); empty: the header is refused (403)",
    )
    upstream_max_idle_per_host: int = field(
        8,
        "kept-alive connections of the direct route parked per upstream (scheme, host, "
        "port) for the next request; 0: a new connection per request",
    )
    upstream_max_idle: int = field(
        256, "kept-alive upstream connections parked in all (the oldest is closed first)"
    )
    upstream_idle_timeout: Duration = field(
        Duration(30), "a parked upstream connection unused this long is closed"
    )
    connect_timeout: Duration = field(Duration(10), "longest wait to connect to an upstream")
    read_timeout: Duration = field(
        Duration(60), "an upstream (or P2P task) silent this long is given up (502)"
    )
    idle_timeout: Duration = field(
        Duration(60), "a client connection with no request for this long is closed"
    )
    request_timeout: Duration = field(
        Duration(10), "a request head that has begun must arrive whole within this"
    )
    max_header_size: int = field(
        65536, "largest request head accepted (431 above, as h11 counts it)"
    )
    max_connections: int = field(
        4096, "client connections open at once; more get a 503 (0 = no limit)"
    )
    max_connections_per_ip: int = field(
        1024, "client connections open at once from one address (0 = no limit)"
    )

    def compiled_rules(self) -> list[Rule]:
        """The rules as core objects (ConfigError names a bad regex)."""
        out = []
        for i, rule in enumerate(self.rules):
            try:
                out.append(
                    Rule(
                        regex=rule.regex,
                        use_tls=rule.use_tls,
                        redirect=rule.redirect,
                        filtered_query_params=None
                        if rule.filtered_query_params is None
                        else tuple(rule.filtered_query_params),
                    )
                )
            except ValueError as exc:
                raise ConfigError(f"config key 'proxy.rules[{i}].regex': {exc}") from None
        return out

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(
                f"config key 'proxy.port' must be a port in 0..65535, got {self.port}"
            )
        self.compiled_rules()
        if (self.ca_cert is None) != (self.ca_key is None):
            raise ConfigError(
                "config keys 'proxy.ca_cert' and 'proxy.ca_key' go together: set both "
                "(`d7y proxy ca init DIR` writes a pair) or neither"
            )
        for key in ("ca_cert", "ca_key", "upstream_ca_bundle"):
            path = getattr(self, key)
            if path is not None and not path.is_file():
                raise ConfigError(f"config key 'proxy.{key}': no file {str(path)!r}")
        if self.max_header_size < 1024:
            raise ConfigError(
                f"config key 'proxy.max_header_size' must be >= 1024, got {self.max_header_size}"
            )
        if self.rate_limit < 0:
            raise ConfigError(f"config key 'proxy.rate_limit' must be >= 0, got {self.rate_limit}")
        if self.basic_auth.password and not self.basic_auth.username:
            raise ConfigError("config key 'proxy.basic_auth.password' needs a username too")
        try:
            UpstreamAllowlist(self.upstream_allow)
        except ValueError as exc:
            raise ConfigError(f"config key 'proxy.upstream_allow': {exc}") from None
        for i, directory in enumerate(self.output_dirs):
            if not directory.is_absolute() or not directory.is_dir():
                raise ConfigError(
                    f"config key 'proxy.output_dirs[{i}]': {str(directory)!r} is not an "
                    f"absolute path of an existing directory"
                )
        for key in ("upstream_max_idle_per_host", "upstream_max_idle"):
            value = getattr(self, key)
            if value < 0:
                raise ConfigError(f"config key 'proxy.{key}' must be >= 0, got {value}")
        for key in ("connect_timeout", "read_timeout", "request_timeout"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"config key 'proxy.{key}' must be > 0")
