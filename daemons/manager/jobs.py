"""Preheat jobs: from a request to seed peers holding the bytes.

The flow follows Dragonfly's (manager -> job queue -> the cluster's scheduler -> its seed
peer downloads the task):

1. ``POST /api/v1/jobs`` stores the job PENDING (:meth:`JobService.create`).
2. The resolver loop here takes PENDING jobs (RUNNING from then on): an image's manifest
   is fetched from its registry and turned into blob URLs (oci.py), a file is its one
   URL. Each URL becomes one task per target cluster, with the task ID every dfget and
   dfdaemon computes for it (URL minus filtered query parameters, tag), queued for the
   cluster (job_queue.py). A cluster without an active scheduler fails its tasks at once.
3. A scheduler of the cluster claims tasks over its manager connection
   (``POST /api/v1/schedulers/{id}/jobs/claim``, a long poll, at most
   ``job_rate_limit`` tasks a second per cluster), makes its seed peer fetch each one,
   and reports SUCCESS or FAILURE with the seed peer and the error
   (``POST /api/v1/schedulers/{id}/jobs/report``). With ``scope`` ``all_seed_peers``
   (every seed peer) or ``all_peers`` (every host the scheduler knows) it reports one
   result per host, each stored as its own row.
4. When every task is done the job is SUCCESS, or FAILURE if any failed. A sweep fails
   what is unfinished at the job's deadline (``args.timeout``, by default
   ``job.preheat_timeout``) and queues again the tasks of a scheduler that stopped (up
   to ``job.max_attempts`` times).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aiohttp
import msgspec
from sqlalchemy import exc as sa_exc
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from d7y.core import ids
from d7y.daemons.manager import schemas as s
from d7y.daemons.manager.job_queue import JobQueue, QueueUnavailable
from d7y.daemons.manager.models import Cluster, Job, JobTask, Scheduler
from d7y.daemons.manager.oci import ImageResolver, ResolveError

log = logging.getLogger("d7y.manager")

PENDING, RUNNING, SUCCESS, FAILURE = "PENDING", "RUNNING", "SUCCESS", "FAILURE"
DONE = (SUCCESS, FAILURE)
REDACTED = "******"
#: Header names whose values are credentials: shown redacted in a job's args.
SECRET_HEADERS = {"authorization", "proxy-authorization", "cookie"}
#: Jobs resolved at once (each is a few registry requests).
RESOLVE_CONCURRENCY = 4
SWEEP_INTERVAL = 1.0


class JobService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        queue: JobQueue,
        *,
        keepalive_timeout: float,
        preheat_timeout: float,
        registry_timeout: float,
        max_attempts: int,
    ) -> None:
        self.sessions = sessions
        self.queue = queue
        self.keepalive_timeout = keepalive_timeout
        self.preheat_timeout = preheat_timeout
        self.registry_timeout = registry_timeout
        self.max_attempts = max_attempts
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._resolving: set[asyncio.Task] = set()
        self._slots = asyncio.Semaphore(RESOLVE_CONCURRENCY)
        self._http: aiohttp.ClientSession | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        await self.queue.start()
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.registry_timeout)
        )
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._resolve_forever()),
            loop.create_task(self._sweep_forever()),
        ]

    async def stop(self) -> None:
        for task in [*self._tasks, *self._resolving]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._resolving, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        await self.queue.close()

    def wake(self) -> None:
        """A job was stored: look for PENDING jobs now."""
        self._wake.set()

    # -- the API's side ----------------------------------------------------------------

    async def create(self, session: AsyncSession, body: s.JobCreate, user_id: int) -> Job:
        now = time.time()
        job = Job(
            type=body.type,
            state=PENDING,
            args=msgspec.to_builtins(body.args),
            scheduler_cluster_ids=list(dict.fromkeys(body.scheduler_cluster_ids)),
            user_id=user_id,
            deadline=now + (body.args.timeout or self.preheat_timeout),
            created_at=now,
            updated_at=now,
        )
        session.add(job)
        await session.flush()
        log.info(
            "job created id=%d type=%s url=%s clusters=%s",
            job.id, body.args.type, " ".join(body.args.all_urls()),
            job.scheduler_cluster_ids or "all",
        )  # fmt: skip
        return job

    async def tasks_of(self, session: AsyncSession, job_ids: list[int]) -> dict[int, list[JobTask]]:
        found: dict[int, list[JobTask]] = {i: [] for i in job_ids}
        if job_ids:
            rows = await session.scalars(
                select(JobTask).where(JobTask.job_id.in_(job_ids)).order_by(JobTask.id)
            )
            for row in rows:
                found[row.job_id].append(row)
        return found

    async def claim(
        self, scheduler_id: int, cluster_id: int, max_tasks: int, wait: float
    ) -> list[dict[str, Any]]:
        """Up to ``max_tasks`` queued tasks of the cluster for this scheduler, waiting up
        to ``wait`` seconds for the first; the cluster's job_rate_limit holds."""
        deadline = time.monotonic() + wait
        while True:
            async with self.sessions() as session:
                cluster = await session.get(Cluster, cluster_id)
            if cluster is None:  # deleted meanwhile: nothing is queued for it
                return []
            limit = int((cluster.scheduler_cluster_config or {}).get("job_rate_limit", 10))
            granted, retry_after = await self.queue.take(cluster_id, max_tasks, limit)
            left = deadline - time.monotonic()
            if granted == 0:
                if left <= 0:
                    return []
                await asyncio.sleep(min(retry_after, left))
                continue
            candidates = await self.queue.pop(cluster_id, granted, max(left, 0.0))
            claimed = await self._claim_rows(scheduler_id, cluster_id, candidates)
            if len(claimed) < granted:
                await self.queue.give_back(cluster_id, granted - len(claimed))
            if claimed or time.monotonic() >= deadline:
                return claimed

    async def _claim_rows(
        self, scheduler_id: int, cluster_id: int, candidates: list[int]
    ) -> list[dict[str, Any]]:
        if not candidates:
            return []
        now = time.time()
        claimed = []
        async with self.sessions() as session, session.begin():
            for task_id in candidates:
                result = await session.execute(
                    update(JobTask)
                    .where(
                        JobTask.id == task_id,
                        JobTask.cluster_id == cluster_id,
                        JobTask.state == PENDING,
                    )
                    .values(
                        state=RUNNING,
                        scheduler_id=scheduler_id,
                        claimed_at=now,
                        attempts=JobTask.attempts + 1,
                        updated_at=now,
                    )
                )
                if result.rowcount == 1:
                    claimed.append(task_id)
            if not claimed:
                return []
            rows = list(await session.scalars(select(JobTask).where(JobTask.id.in_(claimed))))
            jobs = {
                j.id: j
                for j in await session.scalars(
                    select(Job).where(Job.id.in_({r.job_id for r in rows}))
                )
            }
        answer = []
        for row in sorted(rows, key=lambda r: r.id):
            job = jobs.get(row.job_id)
            args = job.args if job is not None else {}
            answer.append({
                "id": row.id, "job_id": row.job_id, "url": row.url, "task_id": row.task_id,
                "tag": row.tag, "filtered_query_params": row.filtered_query_params,
                "headers": row.headers,
                # Kept in the job's args (the same for all its tasks), not in the task row.
                "application": args.get("application", ""),
                "piece_length": args.get("piece_length") or 0,
                "scope": args.get("scope", "single_seed_peer"),
                "timeout": max(1.0, (job.deadline if job else now) - now),
            })  # fmt: skip
            log.info(
                "preheat task claimed id=%d job=%d scheduler=%d url=%s",
                row.id, row.job_id, scheduler_id, row.url,
            )  # fmt: skip
        return answer

    async def report(
        self, session: AsyncSession, scheduler_id: int, body: s.JobReport
    ) -> dict[str, int]:
        """Record a scheduler's results; a task it no longer holds (requeued after it
        was thought gone, or its job deleted) is ignored and counted as such."""
        now = time.time()
        recorded, ignored, jobs = 0, 0, set()
        taken: dict[int, JobTask] = {}  # rows this report ended, by ID
        for item in body.tasks:
            if item.id in taken:
                # Another target of the same task (scope all_seed_peers / all_peers):
                # its own result row, a copy of the task's.
                first = taken[item.id]
                row = self._task(
                    first.job_id, first.cluster_id, first.url, first.task_id, first.tag,
                    first.filtered_query_params, first.headers, RUNNING, "", now,
                )  # fmt: skip
                row.scheduler_id, row.attempts, row.claimed_at = (
                    scheduler_id,
                    first.attempts,
                    first.claimed_at,
                )
                session.add(row)
            else:
                row = await session.get(JobTask, item.id)
                if row is None or row.scheduler_id != scheduler_id or row.state != RUNNING:
                    ignored += 1
                    continue
                taken[item.id] = row
            row.state, row.seed_peer, row.error, row.updated_at = (
                item.state,
                item.seed_peer,
                item.error if item.state == FAILURE else "",
                now,
            )
            recorded += 1
            jobs.add(row.job_id)
            log.info(
                "preheat task %s id=%d job=%d seed_peer=%s%s",
                item.state, row.id, row.job_id, item.seed_peer,
                f" error={item.error}" if item.error else "",
            )  # fmt: skip
        await session.flush()
        for job_id in jobs:
            await self.settle(session, job_id)
        return {"recorded": recorded, "ignored": ignored}

    async def settle(self, session: AsyncSession, job_id: int) -> None:
        """SUCCESS or FAILURE once every task of the job is done."""
        job = await session.get(Job, job_id)
        if job is None or job.state in DONE:
            return
        states = list(await session.scalars(select(JobTask.state).where(JobTask.job_id == job_id)))
        if not states or any(state not in DONE for state in states):
            return
        job.state = FAILURE if FAILURE in states else SUCCESS
        job.updated_at = time.time()
        log.info("job %s id=%d tasks=%d", job.state, job.id, len(states))

    # -- resolving: job -> tasks ---------------------------------------------------------

    async def _resolve_forever(self) -> None:
        while True:
            try:
                await self._resolve_pending()
            except (sa_exc.SQLAlchemyError, OSError, TimeoutError) as exc:
                log.warning("job resolver: database error (will retry): %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), SWEEP_INTERVAL)
            self._wake.clear()

    async def _resolve_pending(self) -> None:
        async with self.sessions() as session, session.begin():
            pending = list(await session.scalars(
                select(Job.id).where(Job.state == PENDING).order_by(Job.id).limit(100)
            ))  # fmt: skip
            taken = []
            for job_id in pending:
                result = await session.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.state == PENDING)
                    .values(state=RUNNING, updated_at=time.time())
                )
                if result.rowcount == 1:
                    taken.append(job_id)
        for job_id in taken:
            task = asyncio.get_running_loop().create_task(self._resolve_one(job_id))
            self._resolving.add(task)
            task.add_done_callback(self._resolving.discard)

    async def _resolve_one(self, job_id: int) -> None:
        async with self._slots:
            try:
                await self._resolve(job_id)
            except (sa_exc.SQLAlchemyError, OSError, TimeoutError, QueueUnavailable) as exc:
                # The job stays RUNNING; the sweep fails what is unfinished at its deadline.
                log.warning("job %d: cannot store or queue its tasks: %s", job_id, exc)
            except Exception:
                log.exception("job %d: resolving crashed", job_id)

    async def _resolve(self, job_id: int) -> None:
        async with self.sessions() as session:
            job = await session.get(Job, job_id)
            if job is None:
                return
            args = msgspec.convert(job.args, s.PreheatArgs)
            cluster_ids = job.scheduler_cluster_ids or list(
                await session.scalars(select(Cluster.id).order_by(Cluster.id))
            )
        urls, headers, error = args.all_urls(), dict(args.headers), ""
        if not cluster_ids:
            error = f"{urls[0]}: there is no scheduler cluster to preheat in; create one"
        elif args.type == "image":
            resolver = ImageResolver(
                self._http, username=args.username, password=args.password, headers=headers
            )
            try:
                image = await resolver.resolve(args.url, args.platform)
                urls, headers = image.blob_urls, image.headers
            except ResolveError as exc:
                error = str(exc)
                log.info("job %d: image not resolved: %s", job_id, error)
        filtered = s.split_filtered_query_params(args.filtered_query_params)
        now = time.time()
        queued: dict[int, list[JobTask]] = {}
        async with self.sessions() as session, session.begin():
            job = await session.get(Job, job_id)
            if job is None:
                return  # deleted meanwhile
            if args.password:
                # Used; not kept (the registry token in the tasks' headers is short-lived).
                job.args = {**job.args, "password": ""}
            if error:
                first = cluster_ids[0] if cluster_ids else 0
                session.add(
                    self._task(job_id, first, urls[0], "", args.tag, filtered, {}, FAILURE,
                               error, now)
                )  # fmt: skip
            else:
                since = now - self.keepalive_timeout
                for cluster_id in cluster_ids:
                    active = await session.scalar(
                        select(Scheduler.id)
                        .where(Scheduler.cluster_id == cluster_id)
                        .where(Scheduler.last_keepalive_at > since)
                        .limit(1)
                    )
                    why = "" if active is not None else (
                        f"scheduler cluster {cluster_id} has no active scheduler to preheat "
                        f"with; start one with manager.cluster_id: {cluster_id}"
                    )  # fmt: skip
                    for url in urls:
                        row = self._task(
                            job_id, cluster_id, url,
                            preheat_task_id(url, args, filtered),
                            args.tag, filtered, headers, FAILURE if why else PENDING, why, now,
                        )  # fmt: skip
                        session.add(row)
                        if not why:
                            queued.setdefault(cluster_id, []).append(row)
            job.updated_at = now
            await session.flush()
            await self.settle(session, job_id)
        for cluster_id, rows in queued.items():
            await self.queue.push(cluster_id, [r.id for r in rows])
        log.info(
            "job resolved id=%d urls=%d clusters=%s%s",
            job_id, 0 if error else len(urls), cluster_ids, f" error={error}" if error else "",
        )  # fmt: skip

    @staticmethod
    def _task(job_id, cluster_id, url, task_id, tag, filtered, headers, state, error, now):
        return JobTask(
            job_id=job_id, cluster_id=cluster_id, url=url, task_id=task_id, tag=tag,
            filtered_query_params=filtered, headers=headers, state=state, seed_peer="",
            error=error, scheduler_id=None, attempts=0, claimed_at=0.0, created_at=now,
            updated_at=now,
        )  # fmt: skip

    # -- the sweep: deadlines and schedulers that stopped ---------------------------------

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except (sa_exc.SQLAlchemyError, OSError, TimeoutError, QueueUnavailable) as exc:
                log.warning("job sweep failed (will retry): %s", exc)
            await asyncio.sleep(SWEEP_INTERVAL)

    async def sweep(self) -> None:
        now = time.time()
        requeue: dict[int, list[int]] = {}
        async with self.sessions() as session, session.begin():
            late = list(await session.scalars(
                select(Job).where(Job.state.in_((PENDING, RUNNING)), Job.deadline <= now)
            ))  # fmt: skip
            for job in late:
                timeout = f"{job.deadline - job.created_at:g}s"
                setting = (
                    "args.timeout" if (job.args or {}).get("timeout") else ("job.preheat_timeout")
                )
                for row in await session.scalars(
                    select(JobTask).where(JobTask.job_id == job.id, JobTask.state.not_in(DONE))
                ):
                    row.state, row.updated_at = FAILURE, now
                    row.error = f"timed out: not done within {timeout} ({setting})"
                job.state, job.updated_at = FAILURE, now
                log.info("job FAILURE id=%d: timed out after %s", job.id, timeout)
            since = now - self.keepalive_timeout
            alive = set(await session.scalars(
                select(Scheduler.id).where(Scheduler.last_keepalive_at > since)
            ))  # fmt: skip
            held = await session.scalars(select(JobTask).where(JobTask.state == RUNNING))
            touched = set()
            for row in held:
                if row.scheduler_id in alive:
                    continue
                touched.add(row.job_id)
                if row.attempts < self.max_attempts:
                    row.state, row.scheduler_id, row.updated_at = PENDING, None, now
                    requeue.setdefault(row.cluster_id, []).append(row.id)
                    log.info("preheat task requeued id=%d: its scheduler stopped", row.id)
                else:
                    row.state, row.updated_at = FAILURE, now
                    row.error = (
                        f"its scheduler stopped before finishing, {row.attempts} times "
                        "(job.max_attempts)"
                    )
            await session.flush()
            for job_id in touched:
                await self.settle(session, job_id)
        for cluster_id, task_ids in requeue.items():
            await self.queue.push(cluster_id, task_ids)


def preheat_task_id(url: str, args: s.PreheatArgs, filtered: list[str] | None) -> str:
    """The task ID dfget computes for ``url`` with the job's tag, application, piece
    length and filtered query parameters (``--tag``, ``--application``,
    ``--piece-length``, ``--filtered-query-param``)."""
    return ids.task_id(
        url,
        tag=args.tag or None,
        application=args.application or None,
        piece_length=args.piece_length,
        filtered_query_params=filtered,
    )


# -- serialization -----------------------------------------------------------------------


def redacted_args(args: dict[str, Any]) -> dict[str, Any]:
    out = dict(args)
    if out.get("password"):
        out["password"] = REDACTED
    headers = out.get("headers") or {}
    out["headers"] = {
        k: (REDACTED if k.lower() in SECRET_HEADERS else v) for k, v in headers.items()
    }
    return out


def job_out(job: Job, tasks: list[JobTask], iso) -> dict[str, Any]:
    return {
        "id": job.id,
        "type": job.type,
        "state": job.state,
        "args": redacted_args(job.args),
        "scheduler_cluster_ids": job.scheduler_cluster_ids,
        "result": {
            "tasks": [
                {
                    "url": t.url,
                    "task_id": t.task_id,
                    "seed_peer": t.seed_peer,
                    "state": t.state,
                    "error": t.error,
                }
                for t in tasks
            ]
        },
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
    }
