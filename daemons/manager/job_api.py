"""The REST routes of jobs: ``/api/v1/jobs`` for people and tools (scope ``job``), and
the two a scheduler calls for its cluster's preheat tasks (``/api/v1/schedulers/{id}/
jobs/claim`` and ``.../report``, scope ``cluster`` like its registration). The work is
in jobs.py; these parse, check and answer."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from d7y.daemons.manager import responses as out
from d7y.daemons.manager import schemas as s
from d7y.daemons.manager.api import (
    API,
    OAPI,
    ApiError,
    ListQuery,
    Route,
    db,
    get_or_404,
    iso,
    json_response,
    list_response,
    paged,
    path_id,
    principal,
    read_body,
    read_query,
)
from d7y.daemons.manager.job_queue import QueueUnavailable
from d7y.daemons.manager.jobs import JobService, job_out
from d7y.daemons.manager.models import Cluster, Job, JobTask, Scheduler


async def check_clusters_exist(session: AsyncSession, body: s.JobCreate) -> None:
    """Every cluster a job names exists (422 naming the first that does not); shared
    with the console's preheat form."""
    for index, cluster_id in enumerate(body.scheduler_cluster_ids):
        if await session.get(Cluster, cluster_id) is None:
            raise ApiError(
                422,
                "invalid",
                f"scheduler_cluster_ids[{index}]: cluster {cluster_id} does not exist; "
                f"list them with GET {API}/clusters",
                f"scheduler_cluster_ids[{index}]",
            )


class JobHandlers:
    def __init__(self, service: JobService) -> None:
        self.service = service

    def routes(self) -> list[Route]:
        i = "{id:\\d+}"
        return [
            Route("GET", f"{API}/jobs", self.list_jobs,
                  "list jobs, newest first (filter by state or type)", query=s.JobQuery,
                  response="array", returns=out.JobOut),
            Route("POST", f"{API}/jobs", self.create_job,
                  "create a preheat job: its URL (a file, or an image's manifest) is fetched "
                  "by the seed peers of the clusters", body=s.JobCreate, returns=out.JobOut),
            Route("GET", f"{API}/jobs/{i}", self.get_job, "one job with its per-task results",
                  returns=out.JobOut),
            Route("DELETE", f"{API}/jobs/{i}", self.delete_job,
                  "delete a job and its results (tasks still queued are dropped)",
                  response="none"),
            # Dragonfly's open API paths for the same operations.
            Route("GET", f"{OAPI}/jobs", self.list_jobs, "list jobs (as GET /api/v1/jobs)",
                  query=s.JobQuery, response="array", returns=out.JobOut,
                  operation_id="oapi_list_jobs"),
            Route("POST", f"{OAPI}/jobs", self.create_job,
                  "create a preheat job (as POST /api/v1/jobs)", body=s.JobCreate,
                  returns=out.JobOut, operation_id="oapi_create_job"),
            Route("GET", f"{OAPI}/jobs/{i}", self.get_job, "one job (as GET /api/v1/jobs/{id})",
                  returns=out.JobOut, operation_id="oapi_get_job"),
            Route("POST", f"{API}/schedulers/{i}/jobs/claim", self.claim_tasks,
                  "a scheduler takes queued preheat tasks of its cluster (waits up to "
                  "`wait` seconds for some)", body=s.JobClaim, response="array",
                  returns=out.ClaimedTaskOut),
            Route("POST", f"{API}/schedulers/{i}/jobs/report", self.report_tasks,
                  "a scheduler reports how its preheat tasks ended", body=s.JobReport,
                  returns=out.JobReportOut),
        ]  # fmt: skip

    async def list_jobs(self, request: web.Request) -> web.Response:
        query: s.JobQuery = read_query(request, s.JobQuery)
        if query.page < 1:
            raise ApiError(
                422, "invalid", f"query parameter page must be >= 1, got {query.page}", "page"
            )
        if not 1 <= query.per_page <= 1000:
            raise ApiError(
                422,
                "invalid",
                f"query parameter per_page must be in 1..1000, got {query.per_page}",
                "per_page",
            )
        statement = select(Job).order_by(Job.id.desc())
        if query.state is not None:
            statement = statement.where(Job.state == query.state)
        if query.type is not None:
            statement = statement.where(Job.type == query.type)
        session = db(request)
        rows, total = await paged(
            session, statement, ListQuery(page=query.page, per_page=query.per_page)
        )
        tasks = await self.service.tasks_of(session, [j.id for j in rows])
        return list_response([job_out(j, tasks[j.id], iso) for j in rows], total)

    async def create_job(self, request: web.Request) -> web.Response:
        body: s.JobCreate = await read_body(request, s.JobCreate)
        session = db(request)
        await check_clusters_exist(session, body)
        job = await self.service.create(session, body, principal(request).user_id)
        request.setdefault("after_commit", []).append(self.service.wake)
        return json_response(job_out(job, [], iso), status=201)

    async def get_job(self, request: web.Request) -> web.Response:
        session = db(request)
        job = await get_or_404(session, Job, path_id(request), "job")
        tasks = await self.service.tasks_of(session, [job.id])
        return json_response(job_out(job, tasks[job.id], iso))

    async def delete_job(self, request: web.Request) -> web.Response:
        session = db(request)
        job = await get_or_404(session, Job, path_id(request), "job")
        await session.execute(delete(JobTask).where(JobTask.job_id == job.id))
        await session.delete(job)
        return web.Response(status=204)

    async def _scheduler(self, request: web.Request) -> Scheduler:
        row = await db(request).get(Scheduler, path_id(request))
        if row is None:
            raise ApiError(
                404, "not_found", f"scheduler {path_id(request)} does not exist; register again"
            )
        return row

    async def claim_tasks(self, request: web.Request) -> web.Response:
        body: s.JobClaim = await read_body(request, s.JobClaim)
        scheduler = await self._scheduler(request)
        scheduler_id, cluster_id = scheduler.id, scheduler.cluster_id
        # Hold no database connection while waiting for work.
        await db(request).commit()
        try:
            tasks = await self.service.claim(scheduler_id, cluster_id, body.max_tasks, body.wait)
        except QueueUnavailable as exc:
            raise ApiError(503, "queue_unavailable", f"{exc}; retry later") from None
        return list_response(tasks, len(tasks))

    async def report_tasks(self, request: web.Request) -> web.Response:
        body: s.JobReport = await read_body(request, s.JobReport)
        scheduler = await self._scheduler(request)
        return json_response(await self.service.report(db(request), scheduler.id, body))
