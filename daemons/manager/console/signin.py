"""Sign-in and sign-out. The session cookie carries the API's own session token."""

from __future__ import annotations

from aiohttp import web

from d7y.daemons.manager import auth
from d7y.daemons.manager.console.guard import Call, Guard, redirect
from d7y.daemons.manager.console.render import Renderer
from d7y.daemons.manager.errors import ApiError


def safe_next(target: str) -> str:
    """Where to go after signing in: a path on this site only (no open redirect)."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/clusters"


class SignInPages:
    def __init__(self, guard: Guard, render: Renderer) -> None:
        self.guard, self.render = guard, render
        self.api = guard.api

    def routes(self) -> list[web.RouteDef]:
        page = self.guard.page
        return [
            web.get("/", page(self.home, group="users")),
            web.get("/signin", page(self.form, group="users", public=True)),
            web.post("/signin", page(self.signin, group="users", public=True)),
            web.post("/signout", page(self.signout, group="users", public=True)),
        ]

    async def home(self, call: Call) -> web.Response:
        return redirect("/clusters")

    async def form(self, call: Call) -> web.Response:
        return self.render.page(
            call.request, "signin.html", None,
            next=safe_next(call.request.query.get("next", "/clusters")),
            values={"name": ""},
        )  # fmt: skip

    async def signin(self, call: Call) -> web.Response:
        name = call.form.get("name", "").strip()
        call.request["actor"] = name  # the audit's actor: nobody is signed in yet
        target = safe_next(call.form.get("next", "/clusters"))
        try:
            user = await self.api.check_password(call.db, name, call.form.get("password", ""))
        except ApiError as exc:
            return self.render.page(
                call.request, "signin.html", None, status=exc.status, next=target,
                values={"name": name}, errors={"_form": exc.message},
            )  # fmt: skip
        call.request["principal"] = auth.Principal(user.id, user.name, user.role)
        response = redirect(target)
        self.guard.sign_in(response, call.request, user.id)
        return response

    async def signout(self, call: Call) -> web.Response:
        response = redirect("/signin")
        self.guard.sign_out(response)
        return response
