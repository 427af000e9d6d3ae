"""Cluster pages: the list, one cluster with its schedulers and seed peers, the create and
edit forms, delete."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import select

from d7y.daemons.manager import schemas as s
from d7y.daemons.manager.console import forms
from d7y.daemons.manager.console.guard import Call, Guard, redirect
from d7y.daemons.manager.console.render import Renderer
from d7y.daemons.manager.errors import ApiError
from d7y.daemons.manager.models import Cluster, Scheduler, SeedPeer
from d7y.daemons.manager.operations import ManagerOperations, get_or_404

GROUP = "clusters"


class ClusterPages:
    def __init__(self, ops: ManagerOperations, guard: Guard, render: Renderer) -> None:
        self.ops, self.guard, self.render = ops, guard, render

    def routes(self) -> list[web.RouteDef]:
        page = self.guard.page
        i = "{id:\\d+}"
        return [
            web.get("/clusters", page(self.index, group=GROUP)),
            web.get("/clusters/new", page(self.new, group=GROUP)),
            web.post("/clusters/new", page(self.create, group=GROUP)),
            web.get(f"/clusters/{i}", page(self.show, group=GROUP)),
            web.get(f"/clusters/{i}/edit", page(self.edit, group=GROUP)),
            web.post(f"/clusters/{i}/edit", page(self.update, group=GROUP)),
            web.post(f"/clusters/{i}/delete", page(self.delete, group=GROUP)),
        ]

    async def index(self, call: Call) -> web.Response:
        clusters = list(await call.db.scalars(select(Cluster).order_by(Cluster.id)))
        return self.render.page(
            call.request, "clusters.html", call.who,
            clusters=clusters,
            schedulers=await self.ops.member_counts(call.db, Scheduler),
            seed_peers=await self.ops.member_counts(call.db, SeedPeer),
        )  # fmt: skip

    async def show(self, call: Call) -> web.Response:
        cluster = await get_or_404(call.db, Cluster, call.int_param(), "cluster")
        return self.render.page(
            call.request, "cluster.html", call.who,
            cluster=cluster,
            schedulers=await self.ops.members(call.db, Scheduler, cluster.id),
            seed_peers=await self.ops.members(call.db, SeedPeer, cluster.id),
            state_of=self.ops.member_state,
            keepalive_timeout=self.ops.keepalive_timeout,
            notice=call.request.query.get("notice", ""),
        )  # fmt: skip

    def _form(
        self, call: Call, cluster: dict | None, values: dict[str, str],
        errors: dict[str, str] | None = None,
    ) -> web.Response:  # fmt: skip
        return self.render.page(
            call.request, "cluster_form.html", call.who,
            status=422 if errors else 200,
            cluster=cluster, values=values, errors=errors or {},
        )  # fmt: skip

    async def new(self, call: Call) -> web.Response:
        self.guard.require_write(call, GROUP)
        return self._form(call, None, forms.cluster_values(None))

    async def edit(self, call: Call) -> web.Response:
        self.guard.require_write(call, GROUP)
        cluster = await get_or_404(call.db, Cluster, call.int_param(), "cluster")
        return self._form(call, _heading(cluster), forms.cluster_values(cluster))

    async def create(self, call: Call) -> web.Response:
        try:
            body = forms.decode(forms.cluster_body(call.form), s.ClusterCreate)
            cluster = await self.ops.create_cluster(call.db, body)
        except ApiError as exc:
            await call.db.rollback()
            return self._form(call, None, call.form, _errors(exc))
        return redirect(f"/clusters/{cluster.id}?notice=created")

    async def update(self, call: Call) -> web.Response:
        cluster = await get_or_404(call.db, Cluster, call.int_param(), "cluster")
        heading = _heading(cluster)  # read now: a rollback expires the row
        try:
            body = forms.decode(forms.cluster_body(call.form), s.ClusterUpdate)
            cluster = await self.ops.update_cluster(call.db, cluster.id, body)
        except ApiError as exc:
            await call.db.rollback()
            return self._form(call, heading, call.form, _errors(exc))
        return redirect(f"/clusters/{cluster.id}?notice=saved")

    async def delete(self, call: Call) -> web.Response:
        await self.ops.delete_cluster(call.db, call.int_param())
        return redirect("/clusters")


def _heading(cluster: Cluster) -> dict:
    return {"id": cluster.id, "name": cluster.name}


def _errors(exc: ApiError) -> dict[str, str]:
    if exc.status in (404, 503):  # not about a field: the error page says it
        raise exc
    return forms.errors_of(exc)
