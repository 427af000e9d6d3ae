"""HTML out: the Jinja2 templates (package data next to this module), with what every
page needs (who is signed in, the CSRF token of its forms, the navigation) and filters
for times and states."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from d7y.daemons.manager import auth
from d7y.daemons.manager.console.guard import Guard
from d7y.daemons.manager.errors import ApiError

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

#: The navigation bar: (path, label).
NAVIGATION = (
    ("/clusters", "Clusters"),
    ("/preheat", "Preheat"),
    ("/tokens", "Tokens"),
    ("/users", "Users"),
)


def when(ts: float | None) -> str:
    """A UNIX time as UTC, to the second ("never" for none)."""
    if not ts:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def ago(ts: float | None, now: float | None = None) -> str:
    """How long ago, in the largest unit that fits ("12 s ago", "3 min ago")."""
    if not ts:
        return "never"
    seconds = max(0, int((time.time() if now is None else now) - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


class Renderer:
    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["when"] = when
        self.env.filters["ago"] = ago

    def page(
        self,
        request: web.Request,
        template: str,
        who: auth.Principal | None,
        *,
        status: int = 200,
        **context: Any,
    ) -> web.Response:
        html = self.env.get_template(template).render(
            who=who,
            can_write=who is not None and who.role == "root",
            csrf_token=self.guard.csrf_token(request),
            navigation=NAVIGATION,
            path=request.path,
            errors=context.pop("errors", {}),
            values=context.pop("values", {}),
            **context,
        )
        return web.Response(text=html, status=status, content_type="text/html")

    def error(
        self, request: web.Request, exc: ApiError, who: auth.Principal | None
    ) -> web.Response:
        titles = {401: "Sign in first", 403: "Not allowed", 404: "Not found", 409: "Conflict",
                  503: "Database unavailable"}  # fmt: skip
        return self.page(
            request,
            "error.html",
            who,
            status=exc.status,
            title=titles.get(exc.status, f"Error {exc.status}"),
            message=exc.message,
        )
