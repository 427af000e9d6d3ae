"""The proxy's Prometheus metrics, registered on the peer daemon's registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.requests = Counter(
            "d7y_proxy_requests",
            "Requests handled by the proxy, by route (p2p, direct, connect)",
            ["route"],
            registry=r,
        )
        self.response_bytes = Counter(
            "d7y_proxy_response_bytes",
            "Body bytes sent to proxy clients, by route (p2p, direct)",
            ["route"],
            registry=r,
        )
        self.request_bytes = Counter(
            "d7y_proxy_request_bytes", "Request body bytes forwarded upstream", registry=r
        )
        self.errors = Counter(
            "d7y_proxy_errors",
            "Requests the proxy answered with an error or cut short, by error type",
            ["type"],
            registry=r,
        )
        self.p2p_fallbacks = Counter(
            "d7y_proxy_p2p_fallbacks",
            "P2P requests whose origin answered an error status, repeated direct so the "
            "client gets the origin's own answer (401 challenges, 404s)",
            registry=r,
        )
        self.active = Gauge("d7y_proxy_active_requests", "Proxy requests in progress", registry=r)
        self.upstream_connections = Counter(
            "d7y_proxy_upstream_connections",
            "Connections the direct route opened to upstreams (kept-alive ones are reused)",
            registry=r,
        )
        self.upstream_idle = Gauge(
            "d7y_proxy_upstream_idle_connections",
            "Kept-alive upstream connections of the direct route waiting for reuse",
            registry=r,
        )
        self.certificates = Counter(
            "d7y_proxy_certificates_issued",
            "Leaf certificates made for hijacked CONNECT hosts",
            registry=r,
        )
