"""Users and roles: the list and the roles' meaning for everyone (as the API lets a guest
read them); create, change role or state, delete for root."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import select

from d7y.daemons.manager import auth
from d7y.daemons.manager import schemas as s
from d7y.daemons.manager.console import forms
from d7y.daemons.manager.console.guard import Call, Guard, redirect
from d7y.daemons.manager.console.render import Renderer
from d7y.daemons.manager.errors import ApiError
from d7y.daemons.manager.models import User
from d7y.daemons.manager.operations import ManagerOperations

GROUP = "users"


class UserPages:
    def __init__(self, ops: ManagerOperations, guard: Guard, render: Renderer) -> None:
        self.ops, self.guard, self.render = ops, guard, render

    def routes(self) -> list[web.RouteDef]:
        page = self.guard.page
        i = "{id:\\d+}"
        return [
            web.get("/users", page(self.index, group=GROUP)),
            web.post("/users", page(self.create, group=GROUP)),
            web.post(f"/users/{i}", page(self.update, group=GROUP)),
            web.post(f"/users/{i}/delete", page(self.delete, group=GROUP)),
        ]

    async def _page(self, call: Call, *, status: int = 200, **context: Any) -> web.Response:
        users = list(await call.db.scalars(select(User).order_by(User.id)))
        context.setdefault("values", {"name": "", "email": "", "role": "guest"})
        return self.render.page(
            call.request, "users.html", call.who, status=status,
            users=users, roles=auth.ROLES, notice=call.request.query.get("notice", ""),
            **context,
        )  # fmt: skip

    async def index(self, call: Call) -> web.Response:
        return await self._page(call)

    async def create(self, call: Call) -> web.Response:
        body = {
            "name": call.form.get("name", "").strip(),
            "password": call.form.get("password", ""),
            "email": call.form.get("email", "").strip(),
            "role": call.form.get("role", ""),
        }
        try:
            user = await self.ops.create_user(call.db, forms.decode(body, s.UserCreate))
        except ApiError as exc:
            await call.db.rollback()
            errors = forms.errors_of(exc)
            values = {k: v for k, v in call.form.items() if k != "password"}
            return await self._page(call, status=422, errors=errors, values=values)
        return redirect(f"/users?notice=created+user+{user.name}")

    async def update(self, call: Call) -> web.Response:
        body = {"role": call.form.get("role", ""), "state": call.form.get("state", "")}
        user = await self.ops.update_user(
            call.db, call.int_param(), forms.decode(body, s.UserUpdate)
        )
        return redirect(f"/users?notice=saved+user+{user.name}")

    async def delete(self, call: Call) -> web.Response:
        await self.ops.delete_user(call.db, call.int_param())
        return redirect("/users?notice=deleted+a+user")
