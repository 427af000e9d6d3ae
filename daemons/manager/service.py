"""``d7y manager``: the REST API on the service lifecycle, and the liveness sweep.

Start: the data dir and its session key, the database (migrated to the newest schema,
seeded on first start), the REST API on ``server.port``; the lifecycle adds /metrics
and /healthy on ``metrics.port``. A sweep marks schedulers and seed peers whose
keepalives stopped inactive in the database (the API already treats them so by the
time of their last keepalive; the column is for whoever reads the tables directly).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from importlib import metadata

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from d7y.daemons.manager import auth, db
from d7y.daemons.manager.api import API, ManagerApi, json_response
from d7y.daemons.manager.config import ManagerConfig
from d7y.daemons.manager.console import console_routes
from d7y.daemons.manager.console.jobs_access import ServiceJobs
from d7y.daemons.manager.job_api import JobHandlers
from d7y.daemons.manager.job_queue import JobQueue, RedisJobQueue, SqlJobQueue
from d7y.daemons.manager.jobs import JobService
from d7y.daemons.manager.models import ACTIVE, INACTIVE, Scheduler, SeedPeer
from d7y.daemons.manager.openapi import DOCS_PAGE, build_document
from d7y.daemons.manager.response_cache import ResponseCache

log = logging.getLogger("d7y.manager")
#: A request still running when the manager stops gets this long.
SHUTDOWN_GRACE = 5.0


class ManagerError(Exception):
    """The manager cannot start (its message is for the operator)."""


class ManagerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "d7y_manager_requests", "REST requests answered", ["method", "route", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.active = Gauge(
            "d7y_manager_active_members", "schedulers and seed peers alive now", ["kind"],
            registry=self.registry,
        )  # fmt: skip


class ManagerService:
    name = "manager"

    def __init__(self, config: ManagerConfig) -> None:
        self.config = config
        self.metrics = ManagerMetrics()
        self.engine: AsyncEngine | None = None
        self.api: ManagerApi | None = None
        self.jobs: JobService | None = None
        self.cache: ResponseCache | None = None
        self._runner: web.AppRunner | None = None
        self._sweeper: asyncio.Task | None = None
        self.port = 0

    async def start(self) -> None:
        config = self.config
        # Their INFO/DEBUG lines are per statement or per plugin: noise at our debug level.
        for noisy in ("aiosqlite", "alembic.runtime.plugins", "asyncio"):
            logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))
        logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
        try:
            config.data_dir.mkdir(parents=True, exist_ok=True)
            key = auth.load_or_create_key(config.data_dir / "session.key")
        except OSError as exc:
            raise ManagerError(
                f"cannot use data_dir {str(config.data_dir)!r}: {exc.strerror}; "
                "set data_dir to a writable directory"
            ) from None
        self.engine = db.create_engine(
            config.database_url(),
            pool_size=config.database.pool_size,
            connect_timeout=float(config.database.connect_timeout),
        )
        sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        where = _redacted(config.database_url())
        try:
            await db.migrate(self.engine)
            await db.seed(sessions, token_ttl=float(config.auth.seeded_token_ttl))
        except (sa_exc.SQLAlchemyError, OSError, TimeoutError) as exc:
            raise ManagerError(
                f"cannot open the database {where}: {exc.__class__.__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}; check database.url"
            ) from None
        self.jobs = JobService(
            sessions,
            self._job_queue(sessions),
            keepalive_timeout=float(config.keepalive.timeout),
            preheat_timeout=float(config.job.preheat_timeout),
            registry_timeout=float(config.job.registry_timeout),
            max_attempts=config.job.max_attempts,
        )
        try:
            await self.jobs.start()
        except Exception as exc:  # redis: refused connection, bad password, no package
            await self.engine.dispose()
            shown = getattr(self.jobs.queue, "shown", "")
            raise ManagerError(
                f"cannot use the job queue ({self.jobs.queue.name}) at {shown}: "
                f"{exc.__class__.__name__}: {str(exc).rstrip('.')}; check redis.address"
            ) from None
        self.cache = self._response_cache()
        try:
            await self.cache.start()
        except Exception as exc:
            await self.jobs.stop()
            await self.engine.dispose()
            raise ManagerError(
                f"cannot use the response cache at {self.cache.shown}: "
                f"{exc.__class__.__name__}: {exc}; check redis.address"
            ) from None
        self.api = ManagerApi(
            sessions,
            key,
            cache=self.cache,
            session_ttl=float(config.auth.session_ttl),
            keepalive_timeout=float(config.keepalive.timeout),
            on_request=self._count,
            extra_routes=JobHandlers(self.jobs).routes(),
        )
        app = build_application(self.api, max_body=config.server.max_body, jobs=self.jobs)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, config.server.listen, config.server.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._where = where
        self._sweeper = asyncio.create_task(self._sweep_forever(sessions))

    def _response_cache(self) -> ResponseCache:
        redis = self.config.redis
        return ResponseCache(
            redis.address, password=redis.password, db=redis.db, prefix=redis.key_prefix,
            ttl=float(redis.cache_ttl),
        )  # fmt: skip

    def _job_queue(self, sessions: async_sessionmaker) -> JobQueue:
        redis = self.config.redis
        if redis.address:
            return RedisJobQueue(
                redis.address, password=redis.password, db=redis.db, prefix=redis.key_prefix
            )
        return SqlJobQueue(sessions)

    def ready_details(self) -> dict[str, object]:
        return {
            "port": self.port,
            "database": self._where,
            "job_queue": self.jobs.queue.name if self.jobs else "",
            "data_dir": self.config.data_dir,
        }

    def render_metrics(self) -> bytes:
        return generate_latest(self.metrics.registry)

    async def drain(self) -> None:
        """Requests in hand finish in stop() (the runner's shutdown grace)."""

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._runner is not None:
            await self._runner.cleanup()
        if self.jobs is not None:
            await self.jobs.stop()
        if self.cache is not None:
            await self.cache.close()
        if self.engine is not None:
            await self.engine.dispose()

    def _count(self, method: str, route: str, status: int) -> None:
        self.metrics.requests.labels(method, route, str(status)).inc()

    async def _sweep_forever(self, sessions: async_sessionmaker) -> None:
        timeout = float(self.config.keepalive.timeout)
        interval = min(5.0, timeout / 3)
        while True:
            try:
                await self._sweep(sessions, timeout)
            except (sa_exc.SQLAlchemyError, OSError, TimeoutError) as exc:
                log.warning("liveness sweep failed (will retry): %s", exc.__class__.__name__)
            await asyncio.sleep(interval)

    async def _sweep(self, sessions: async_sessionmaker, timeout: float) -> None:
        since = time.time() - timeout
        async with sessions() as session, session.begin():
            for model, kind in ((Scheduler, "scheduler"), (SeedPeer, "seed_peer")):
                stale = list(await session.scalars(
                    select(model).where(model.state == ACTIVE, model.last_keepalive_at <= since)
                ))  # fmt: skip
                for row in stale:
                    log.info(
                        "%s inactive id=%d hostname=%s: no keepalive for %gs",
                        kind,
                        row.id,
                        row.hostname,
                        timeout,
                    )
                if stale:
                    await session.execute(
                        update(model)
                        .where(model.id.in_([r.id for r in stale]))
                        .values(state=INACTIVE)
                    )
                alive = await session.scalar(
                    select(func.count()).select_from(model).where(model.last_keepalive_at > since)
                )
                self.metrics.active.labels(kind).set(alive or 0)


def build_application(
    api: ManagerApi, *, max_body: int, jobs: JobService | None = None
) -> web.Application:
    """The REST API with its OpenAPI document and the docs page, and the console at /
    (its preheat pages on ``jobs``)."""
    document = build_document(api.routes, _version())

    async def openapi(_request: web.Request) -> web.Response:
        return json_response(document)

    async def docs(_request: web.Request) -> web.Response:
        return web.Response(text=DOCS_PAGE, content_type="text/html")

    return api.build_app(
        max_body=max_body,
        extra_routes=[
            web.get(f"{API}/openapi.json", openapi),
            web.get("/api/docs", docs),
            *console_routes(api, ServiceJobs(jobs) if jobs is not None else None),
        ],
    )


def _redacted(url: str) -> str:
    """The URL without its password, for logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _version() -> str:
    try:
        return metadata.version("d7y")
    except metadata.PackageNotFoundError:
        return "0"
