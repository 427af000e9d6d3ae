"""Preheat pages: start a preheat (a file, or an image by its manifest URL), the list of
jobs, and one job's state with the result of each of its tasks (URL, seed peer, state,
error). The jobs themselves are the jobs service's (see jobs_access.py); a manager built
without one shows these pages with a note instead of a form."""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web
from sqlalchemy import select

from d7y.daemons.manager import auth
from d7y.daemons.manager.console import forms
from d7y.daemons.manager.console.guard import Call, Guard, redirect
from d7y.daemons.manager.console.render import Renderer
from d7y.daemons.manager.errors import ApiError
from d7y.daemons.manager.models import Cluster

GROUP = "jobs"
FINISHED = ("SUCCESS", "FAILURE")


class JobsAccess(Protocol):
    """What the pages need of the jobs service; jobs are the API's JSON objects
    (``{"id", "type", "state", "args", "result": {"tasks": [...]}, ...}``)."""

    async def create(self, session: Any, who: auth.Principal, body: dict[str, Any]) -> dict: ...

    async def list(self, session: Any, who: auth.Principal) -> list[dict]: ...

    async def get(self, session: Any, who: auth.Principal, job_id: int) -> dict: ...

    def after_commit(self) -> None: ...


def headers_of(text: str) -> dict[str, str] | str:
    """``Name: value`` lines as a dict; the bad line itself when one has no colon (the
    caller reports it against the headers input)."""
    headers: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            return line
        headers[name.strip()] = value.strip()
    return headers


def preheat_body(form: dict[str, str], cluster_ids: list[str]) -> dict[str, Any]:
    """The body of POST /api/v1/jobs for the preheat form."""
    headers = headers_of(form.get("args.headers", ""))
    if isinstance(headers, str):
        raise forms.FormInvalid(
            ApiError(
                422, "invalid",
                f"{headers!r} is not a header; write one 'Name: value' per line",
                "args.headers",
            )
        )  # fmt: skip
    args = {
        "type": form.get("args.type", ""),
        "url": form.get("args.url", "").strip(),
        "tag": form.get("args.tag", "").strip(),
        "filtered_query_params": form.get("args.filtered_query_params", "").strip(),
        "headers": headers,
        "username": form.get("args.username", ""),
        "password": form.get("args.password", ""),
        "platform": form.get("args.platform", "").strip(),
    }
    return {
        "type": "preheat",
        "args": args,
        "scheduler_cluster_ids": [forms.number(c) for c in cluster_ids],
    }


class PreheatPages:
    def __init__(self, jobs: JobsAccess | None, guard: Guard, render: Renderer) -> None:
        self.jobs, self.guard, self.render = jobs, guard, render

    def routes(self) -> list[web.RouteDef]:
        page = self.guard.page
        return [
            web.get("/preheat", page(self.index, group=GROUP)),
            web.get("/preheat/new", page(self.new, group=GROUP)),
            web.post("/preheat/new", page(self.create, group=GROUP)),
            web.get("/preheat/{id:\\d+}", page(self.show, group=GROUP)),
        ]

    def _unavailable(self, call: Call) -> web.Response:
        return self.render.page(call.request, "preheat_unavailable.html", call.who)

    async def index(self, call: Call) -> web.Response:
        if self.jobs is None:
            return self._unavailable(call)
        jobs = await self.jobs.list(call.db, call.who)
        return self.render.page(call.request, "preheat_list.html", call.who, jobs=jobs)

    async def _form(self, call: Call, *, status: int = 200, **context: Any) -> web.Response:
        clusters = list(await call.db.scalars(select(Cluster).order_by(Cluster.id)))
        context.setdefault("values", {"args.type": "image", "args.platform": "linux/amd64"})
        context.setdefault("chosen", [str(c.id) for c in clusters if c.is_default])
        return self.render.page(
            call.request, "preheat_form.html", call.who, status=status, clusters=clusters,
            **context,
        )  # fmt: skip

    async def new(self, call: Call) -> web.Response:
        if self.jobs is None:
            return self._unavailable(call)
        self.guard.require_write(call, GROUP)
        return await self._form(call)

    async def create(self, call: Call) -> web.Response:
        if self.jobs is None:
            return self._unavailable(call)
        posted = await call.request.post()
        chosen = [v for v in posted.getall("scheduler_cluster_ids", []) if isinstance(v, str)]
        try:
            job = await self.jobs.create(call.db, call.who, preheat_body(call.form, chosen))
        except ApiError as exc:
            if exc.status in (404, 503):
                raise
            await call.db.rollback()
            values = {k: v for k, v in call.form.items() if k != "args.password"}
            return await self._form(
                call, status=422, errors=forms.errors_of(exc), values=values, chosen=chosen
            )
        call.request.setdefault("after_commit", []).append(self.jobs.after_commit)
        return redirect(f"/preheat/{job['id']}")

    async def show(self, call: Call) -> web.Response:
        if self.jobs is None:
            return self._unavailable(call)
        job = await self.jobs.get(call.db, call.who, call.int_param())
        return self.render.page(
            call.request, "preheat_job.html", call.who, job=job,
            finished=job["state"] in FINISHED,
        )  # fmt: skip
