"""The preheat pages' access to jobs: the jobs service (jobs.py) and the API's own checks,
answering the API's JSON objects (job_out), so the pages show what GET /api/v1/jobs/{id}
shows."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from d7y.daemons.manager import auth
from d7y.daemons.manager import schemas as s
from d7y.daemons.manager.api import iso
from d7y.daemons.manager.console import forms
from d7y.daemons.manager.job_api import check_clusters_exist
from d7y.daemons.manager.jobs import JobService, job_out
from d7y.daemons.manager.models import Job
from d7y.daemons.manager.operations import get_or_404

#: The list page shows this many of the newest jobs.
LIST_LIMIT = 100


class ServiceJobs:
    def __init__(self, service: JobService) -> None:
        self.service = service

    async def create(
        self, session: AsyncSession, who: auth.Principal, body: dict[str, Any]
    ) -> dict[str, Any]:
        job_body: s.JobCreate = forms.decode(body, s.JobCreate)
        await check_clusters_exist(session, job_body)
        job = await self.service.create(session, job_body, who.user_id)
        return job_out(job, [], iso)

    async def list(self, session: AsyncSession, who: auth.Principal) -> list[dict[str, Any]]:
        rows = list(await session.scalars(select(Job).order_by(Job.id.desc()).limit(LIST_LIMIT)))
        tasks = await self.service.tasks_of(session, [j.id for j in rows])
        return [job_out(j, tasks[j.id], iso) for j in rows]

    async def get(self, session: AsyncSession, who: auth.Principal, job_id: int) -> dict[str, Any]:
        job = await get_or_404(session, Job, job_id, "job")
        tasks = await self.service.tasks_of(session, [job.id])
        return job_out(job, tasks[job.id], iso)

    def after_commit(self) -> None:
        self.service.wake()  # the job is stored: resolve it now, not at the next poll
