"""Prometheus metrics of the peer daemon, on a registry of its own (not the global one,
so several daemons can live in one test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Task durations span a 1-byte file on loopback to many GiB over a WAN.
_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class PeerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.bytes_from_origin = Counter(
            "d7y_peer_download_origin_bytes", "Piece bytes fetched from origins", registry=r
        )
        self.bytes_from_peers = Counter(
            "d7y_peer_download_peer_bytes", "Piece bytes fetched from other peers", registry=r
        )
        self.bytes_uploaded = Counter(
            "d7y_peer_upload_bytes", "Bytes served to peers and HTTP clients", registry=r
        )
        self.pieces = Counter("d7y_peer_pieces", "Pieces stored, by source", ["source"], registry=r)
        self.piece_failures = Counter(
            "d7y_peer_piece_failures", "Piece fetch attempts that failed", registry=r
        )
        self.corrupt_pieces = Counter(
            "d7y_peer_corrupt_pieces",
            "Stored pieces whose bytes failed their CRC-32 check when read back (each is "
            "dropped and fetched again)",
            registry=r,
        )
        self.tasks = Counter("d7y_peer_tasks", "Finished tasks by result", ["result"], registry=r)
        self.task_duration = Histogram(
            "d7y_peer_task_duration_seconds",
            "Wall time of task downloads",
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.active_tasks = Gauge("d7y_peer_active_tasks", "Tasks downloading now", registry=r)
        self.active_uploads = Gauge("d7y_peer_active_uploads", "Uploads in progress", registry=r)
        self.gc_evictions = Counter("d7y_peer_gc_evictions", "Tasks removed by GC", registry=r)
        self.piece_requests = Counter(
            "d7y_peer_piece_requests",
            "Requests on the piece port, by message type",
            ["message"],
            registry=r,
        )
        self.subscriptions = Gauge(
            "d7y_peer_subscriptions", "Children subscribed to tasks running here", registry=r
        )
        self.pushes = Counter(
            "d7y_peer_have_pieces_pushed", "HavePieces frames pushed to subscribers", registry=r
        )

        self.relayed_pieces = Counter(
            "d7y_peer_relayed_pieces",
            "Pieces served while still being received here (cut-through relaying)",
            registry=r,
        )
        self.active_relays = Gauge(
            "d7y_peer_active_relays",
            "Pieces being served while still being received here (cut-through relaying)",
            registry=r,
        )
        self.relays_aborted = Counter(
            "d7y_peer_relays_aborted",
            "Relayed pieces cut off because this daemon's own transfer of them failed",
            registry=r,
        )

    def render(self) -> bytes:
        """The text exposition format for GET /metrics."""
        return generate_latest(self.registry)
