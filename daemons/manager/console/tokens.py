"""Personal access token pages: the list, create (the token is shown on this one answer
and never again), revoke and reactivate, delete."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import select

from d7y.daemons.manager import schemas as s
from d7y.daemons.manager.api import token_out
from d7y.daemons.manager.console import forms
from d7y.daemons.manager.console.guard import Call, Guard, redirect
from d7y.daemons.manager.console.render import Renderer
from d7y.daemons.manager.errors import ApiError
from d7y.daemons.manager.models import User
from d7y.daemons.manager.operations import ManagerOperations

GROUP = "personal-access-tokens"
#: The lifetimes the form offers (seconds); the API takes any in 60..10 years.
LIFETIMES = (("7 days", 7 * 86400), ("30 days", 30 * 86400), ("90 days", 90 * 86400),
             ("1 year", 365 * 86400))  # fmt: skip


class TokenPages:
    def __init__(self, ops: ManagerOperations, guard: Guard, render: Renderer) -> None:
        self.ops, self.guard, self.render = ops, guard, render

    def routes(self) -> list[web.RouteDef]:
        page = self.guard.page
        i = "{id:\\d+}"
        return [
            web.get("/tokens", page(self.index, group=GROUP)),
            web.post("/tokens", page(self.create, group=GROUP)),
            web.post(f"/tokens/{i}/state", page(self.set_state, group=GROUP)),
            web.post(f"/tokens/{i}/delete", page(self.delete, group=GROUP)),
        ]

    async def _page(self, call: Call, *, status: int = 200, **context: Any) -> web.Response:
        assert call.who is not None
        rows = list(await call.db.scalars(self.ops.tokens_of(call.who)))
        users = {u.id: u.name for u in await call.db.scalars(select(User))}
        context.setdefault("values", {"name": "", "bio": "", "expires_in": str(LIFETIMES[1][1]),
                                      "scopes": ["cluster"]})  # fmt: skip
        return self.render.page(
            call.request, "tokens.html", call.who, status=status,
            tokens=[token_out(t) for t in rows], users=users, lifetimes=LIFETIMES,
            notice=call.request.query.get("notice", ""), **context,
        )  # fmt: skip

    async def index(self, call: Call) -> web.Response:
        return await self._page(call)

    async def create(self, call: Call) -> web.Response:
        posted = await call.request.post()
        scopes = [v for v in posted.getall("scopes", []) if isinstance(v, str)]
        body = {
            "name": call.form.get("name", "").strip(),
            "bio": call.form.get("bio", ""),
            "scopes": scopes,
            "expires_in": forms.number(call.form.get("expires_in", "")),
        }
        try:
            row, token = await self.ops.create_token(
                call.db, call.who, forms.decode(body, s.TokenCreate)
            )
        except ApiError as exc:
            await call.db.rollback()
            errors = forms.errors_of(exc)
            return await self._page(
                call, status=422, errors=errors, values={**call.form, "scopes": scopes}
            )
        return await self._page(call, status=201, created={**token_out(row), "token": token})

    async def set_state(self, call: Call) -> web.Response:
        state = call.form.get("state", "")
        body = forms.decode({"state": state}, s.TokenUpdate)
        row = await self.ops.update_token(call.db, call.who, call.int_param(), body)
        verb = "revoked" if row.state == "inactive" else "reactivated"
        return redirect(f"/tokens?notice={verb}+token+{row.id}")

    async def delete(self, call: Call) -> web.Response:
        token_id = call.int_param()
        await self.ops.delete_token(call.db, call.who, token_id)
        return redirect(f"/tokens?notice=deleted+token+{token_id}")
