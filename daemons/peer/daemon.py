"""dfdaemon: the peer daemon's process, wiring storage, downloads, APIs and GC.

A :class:`d7y.daemons.service.Service` run by the shared lifecycle (signals, readiness,
metrics app): ``start()`` opens storage and binds every listener; ``drain()`` (on
SIGTERM or SIGINT) takes no new downloads and waits for those a dfget is attached to,
while uploads to other peers go on; ``stop()`` cancels the downloads left (pieces not
yet recorded are dropped; recorded ones are valid and resume next time), closes the
listeners, then storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid

from d7y.core import ids
from d7y.core import messages as m
from d7y.core.eviction import StoredTask, select_evictions
from d7y.daemons.peer.api import LocalAPI
from d7y.daemons.peer.config import PeerConfig
from d7y.daemons.peer.http_upload import HTTPUploadServer
from d7y.daemons.peer.limits import TokenBucket
from d7y.daemons.peer.metrics import PeerMetrics
from d7y.daemons.peer.p2p import P2PDownloader
from d7y.daemons.peer.piece_server import PieceServer
from d7y.daemons.peer.scheduler_client import SchedulerClient
from d7y.daemons.peer.storage import Storage
from d7y.daemons.peer.task_manager import DownloadError, DownloadRequest, TaskManager
from d7y.daemons.peer.task_store import TaskStore
from d7y.daemons.proxy.metrics import ProxyMetrics
from d7y.daemons.proxy.server import ProxyServer
from d7y.daemons.proxy.tls import upstream_context
from d7y.daemons.sources import RetryPolicy, Sources, SourceSettings
from d7y.daemons.tls import check_host_certificate, client_context, server_context

log = logging.getLogger("d7y.dfdaemon")


class PeerDaemon:
    name = "dfdaemon"

    def __init__(self, config: PeerConfig) -> None:
        self.config = config
        self.metrics = PeerMetrics()
        self.storage: Storage | None = None
        self.store: TaskStore | None = None
        self.sources: Sources | None = None
        self.manager: TaskManager | None = None
        self.api: LocalAPI | None = None
        self.http_upload: HTTPUploadServer | None = None
        self.piece_server: PieceServer | None = None
        self.scheduler: SchedulerClient | None = None
        self.proxy: ProxyServer | None = None
        self.scheduler_lookup = None  # a SchedulerLookup with manager.address only
        self._last_upload = (0, time.monotonic())
        self.host_id = ""
        self.peer_id = ""
        self._gc_task: asyncio.Task | None = None
        self._draining = False

    async def start(self) -> None:
        cfg = self.config
        self.storage = Storage(cfg.storage.data_dir, quota=int(cfg.storage.quota))
        retry = RetryPolicy(
            attempts=cfg.download.origin_retries,
            base_delay=float(cfg.download.origin_backoff),
            max_delay=float(cfg.download.origin_backoff_max),
        )
        # The local user's downloads (dfget, the proxy) trust what the proxy's upstreams
        # are trusted with: the system's CAs plus proxy.upstream_ca_bundle.
        upstream_ssl = upstream_context(
            cfg.proxy.upstream_ca_bundle, cfg.proxy.insecure_skip_verify
        )
        settings = SourceSettings(
            retry=retry,
            request_timeout=float(cfg.download.piece_timeout),
            s3=cfg.source.s3,
            oci=cfg.source.oci,
            ssl=upstream_ssl,
        )
        # Two sets of sources, two sets of connection pools: the local user's downloads
        # go anywhere, those a remote party caused (seed triggers) obey source.allow/deny.
        self.sources = Sources(settings)
        remote_sources = Sources(settings, policy=cfg.source_policy())
        piece_floor = 4 * 1024 * 1024
        download_limit = TokenBucket(
            cfg.download.rate_limit, max(cfg.download.rate_limit, piece_floor)
        )
        upload_limit = TokenBucket(cfg.upload.rate_limit, max(cfg.upload.rate_limit, piece_floor))
        # Arrows: the manager uses the store and owns the P2P path (set when a scheduler
        # is configured); the P2P path uses the store; the store knows neither of them
        # (GC frees room through its make_room hook).
        self.store = TaskStore(self.storage, metrics=self.metrics, make_room=self.collect_garbage)
        self.manager = TaskManager(
            self.store,
            self.sources,
            concurrency=cfg.download.concurrency,
            max_concurrent_tasks=cfg.download.max_concurrent_tasks,
            download_limiter=download_limit,
            metrics=self.metrics,
            remote_sources=remote_sources,
        )
        self.http_upload = HTTPUploadServer(
            self.storage,
            limiter=upload_limit,
            metrics=self.metrics,
            max_concurrent=cfg.upload.max_concurrent,
            pin=self.manager.pin,
            verify=self.manager.check_before_serving,
            idle_timeout=float(cfg.upload.idle_timeout),
            request_timeout=float(cfg.upload.request_timeout),
            max_connections=cfg.upload.max_connections,
            max_connections_per_ip=cfg.upload.max_connections_per_ip,
            download_token=cfg.upload.download_token,
        )
        await self.http_upload.start(cfg.upload_listen, cfg.upload.port)
        hostname = cfg.host.hostname or socket.gethostname()
        self.host_id = ids.host_id(cfg.host.ip, hostname, seed=cfg.seed_peer)
        # Under mutual TLS the scheduler holds this host to its certificate's identity.
        check_host_certificate(cfg.security.tls, self.host_id, seed=cfg.seed_peer)
        self.peer_id = ids.peer_id(cfg.host.ip, hostname, uuid.uuid4(), seed=cfg.seed_peer)
        self.piece_server = PieceServer(
            self.manager,
            limiter=upload_limit,
            metrics=self.metrics,
            max_concurrent=cfg.upload.max_concurrent,
            fair_window=float(cfg.upload.fair_window),
            max_frame=int(cfg.upload.max_frame),
            rate_chunk=int(cfg.upload.rate_chunk),
            peer_id=self.peer_id,
            host_id=self.host_id,
            corrupt=cfg.testing.corrupt_uploads,
            idle_timeout=float(cfg.upload.idle_timeout),
            request_timeout=float(cfg.upload.request_timeout),
            max_connections=cfg.upload.max_connections,
            max_connections_per_ip=cfg.upload.max_connections_per_ip,
            tls=server_context(cfg.security.tls),
        )
        if cfg.testing.corrupt_uploads:
            log.warning("testing.corrupt_uploads is on: every piece served is corrupted")
        await self.piece_server.start(cfg.upload_listen, cfg.upload.piece_port)
        if cfg.scheduler.address or cfg.manager.address:
            self._connect_scheduler(hostname)
        if cfg.proxy.port:
            self.proxy = ProxyServer(
                self.manager,
                cfg.proxy,
                ProxyMetrics(self.metrics.registry),
                upstream_ssl=upstream_ssl,
            )
            await self.proxy.start(cfg.proxy.listen, cfg.proxy.port)
        self.api = LocalAPI(self.manager, idle_timeout=float(cfg.api.idle_timeout))
        await self.api.start(cfg.socket_path)
        self._gc_task = asyncio.get_running_loop().create_task(self._gc_loop())

    def ready_details(self) -> dict[str, object]:
        cfg = self.config
        assert self.http_upload is not None and self.piece_server is not None
        return {
            "socket": cfg.socket_path,
            "upload_port": self.http_upload.port,
            "piece_port": self.piece_server.port,
            "proxy_port": self.proxy.port if self.proxy is not None else "off",
            "metrics_port": cfg.metrics.port or "off",
            "data_dir": cfg.storage.data_dir,
            "host_id": self.host_id,
            "scheduler": cfg.scheduler.address
            or (f"from-manager:{cfg.manager.address}" if cfg.manager.address else "none"),
            "download_policy": cfg.download.policy,
        }

    def render_metrics(self) -> bytes:
        return self.metrics.render()

    def _connect_scheduler(self, hostname: str) -> None:
        cfg = self.config
        # With only a manager, the lookup gives the address and starts the client.
        host, _, port = (cfg.scheduler.address or "unknown:0").rpartition(":")
        self.scheduler = SchedulerClient(
            host,
            int(port),
            announce=lambda: self._announcement(hostname),
            on_trigger=self._on_trigger,
            on_connected=lambda: self.manager.scheduler_connected(),
            announce_interval=float(cfg.scheduler.announce_interval),
            max_frame=int(cfg.upload.max_frame),
            tls=client_context(cfg.security.tls),
        )
        assert self.manager is not None and self.store is not None
        self.manager.p2p = P2PDownloader(
            self.store,
            self.scheduler,
            limiter=self.manager.limiter,
            metrics=self.metrics,
            ip=cfg.host.ip,
            hostname=hostname,
            host_id=self.host_id,
            seed=cfg.seed_peer,
            register_timeout=float(cfg.scheduler.register_timeout),
            download_config=cfg.download_loop_config(),
        )
        self.manager.p2p.client.tls = self.scheduler.tls  # parents' piece ports: same TLS
        if cfg.scheduler.address:
            self.scheduler.start()
        else:
            from d7y.daemons.peer.manager_lookup import SchedulerLookup

            this_host = {"hostname": hostname, "ip": cfg.host.ip, "idc": cfg.host.idc,
                         "location": cfg.host.location}  # fmt: skip
            self.scheduler_lookup = SchedulerLookup(cfg.manager, self.scheduler, this_host)
            self.scheduler_lookup.start()

    def _announcement(self, hostname: str) -> m.AnnounceHost:
        cfg = self.config
        assert self.http_upload is not None and self.piece_server is not None
        # Live load since the last announcement: the upload rate this host measured.
        sample = self.metrics.registry.get_sample_value
        uploaded = int(sample("d7y_peer_upload_bytes_total") or 0)
        clock = time.monotonic()
        last_bytes, last_clock = self._last_upload
        self._last_upload = (uploaded, clock)
        tx_bps = int((uploaded - last_bytes) * 8 / max(clock - last_clock, 1e-3))
        return m.AnnounceHost(
            host_id=self.host_id,
            ip=cfg.host.ip,
            hostname=hostname,
            port=self.http_upload.port,
            download_port=self.piece_server.port,
            idc=cfg.host.idc,
            location=cfg.host.location,
            host_type="seed" if cfg.seed_peer else "normal",
            upload_limit_bps=int(cfg.upload.rate_limit) * 8,
            max_tx_bandwidth_bps=_capacity(cfg.host.upload_bandwidth, cfg.upload.rate_limit),
            download_limit_bps=_capacity(cfg.host.download_bandwidth, cfg.download.rate_limit),
            tx_bandwidth_bps=tx_bps,
            concurrent_upload_limit=cfg.upload.max_concurrent,
            concurrent_upload_count=int(sample("d7y_peer_active_uploads") or 0),
            agent="d7y-dfdaemon",
        )

    def _on_trigger(self, trigger: m.TriggerSeed) -> None:
        """The scheduler asks this host to fetch a task: a seed peer from the origin; an
        ordinary peer (a preheat of scope all_peers) by an ordinary P2P download."""
        assert self.manager is not None
        if self._draining:
            log.info("seed trigger refused while draining task=%s", trigger.task_id)
            return
        request = DownloadRequest(
            url=trigger.url,
            headers=dict(trigger.headers),
            tag=trigger.tag,
            application=trigger.application,
            filtered_query_params=trigger.filtered_query_params,
            piece_length=trigger.piece_length or None,
        )
        try:
            task = self.manager.start(request, seed_trigger=self.config.seed_peer, remote=True)
        except DownloadError as exc:
            log.warning("cannot start triggered task task=%s error=%s", trigger.task_id, exc)
            return
        if task.id != trigger.task_id:
            log.warning("triggered task id mismatch expected=%s got=%s", trigger.task_id, task.id)
        log.info("seed triggered task=%s url=%s", task.id, trigger.url)

    async def drain(self) -> None:
        """Take no new downloads (dfget is told the daemon is shutting down, seed triggers
        are refused) and wait for the downloads a dfget is attached to."""
        self._draining = True
        if self.api is not None:
            await self.api.drain()

    async def stop(self) -> None:
        self._draining = True
        if self._gc_task is not None:
            self._gc_task.cancel()
        if self.api is not None:
            self.api.refuse_new_downloads()
        if self.proxy is not None:
            await self.proxy.stop()
        if self.http_upload is not None:
            await self.http_upload.stop()
        if self.piece_server is not None:
            await self.piece_server.stop()
        if self.scheduler_lookup is not None:
            await self.scheduler_lookup.stop()
        if self.scheduler is not None:
            await self.scheduler.close(leave_host=self.host_id)
        if self.manager is not None:
            await self.manager.close()
        if self.api is not None:
            # After the downloads: a handler waiting for one has its answer by now.
            await self.api.stop()
        if self.sources is not None:
            await self.sources.close()
        if self.storage is not None:
            self.storage.close()
        if self.api is not None:  # ours: a failed start must not take another daemon's
            with contextlib.suppress(FileNotFoundError):
                self.config.socket_path.unlink()

    # -- garbage collection ----------------------------------------------------------

    async def _gc_loop(self) -> None:
        while True:
            await asyncio.sleep(float(self.config.storage.gc_interval))
            try:
                await self.collect_garbage()
            except Exception:  # GC must never take the daemon down
                log.exception("gc round failed")

    async def collect_garbage(self, incoming: int = 0) -> list[str]:
        """One GC round; returns the evicted task IDs.

        ``incoming`` is the size of a task about to be stored: counting it as used makes
        the round free room for it (watermarks and TTL rules otherwise unchanged).
        """
        assert self.storage is not None and self.manager is not None
        storage, cfg = self.storage, self.config.storage

        def plan() -> list[str]:
            records = storage.meta.list_tasks()
            stored = []
            for record in records:
                path = storage.content_path(record.id)
                size = path.stat().st_blocks * 512 if path.exists() else 0
                stored.append(StoredTask(record.id, size, record.last_access))
            if cfg.quota:
                used, capacity = sum(t.size for t in stored), int(cfg.quota)
            else:
                used, capacity = storage.disk_usage()
            used += incoming
            return select_evictions(
                stored,
                now=time.time(),
                ttl=float(cfg.task_ttl),
                used=used,
                capacity=capacity,
                high_watermark=cfg.disk_high_watermark,
                low_watermark=cfg.disk_low_watermark,
                busy=self.manager.busy_task_ids(),
            )

        evict = await storage.run(plan)
        for task_id in evict:
            if task_id in self.manager.busy_task_ids():
                continue  # became busy while we planned
            await self.manager.delete_task(task_id)
            self.metrics.gc_evictions.inc()
            log.info("gc evicted task=%s", task_id)
        return evict


def _capacity(bandwidth_bps: int, rate_limit: int) -> int:
    """What a host can move, bits/s: its configured bandwidth, lowered by a rate limit
    (bytes/s, 0 = none)."""
    limit = int(rate_limit) * 8
    return min(bandwidth_bps, limit) if limit else bandwidth_bps
