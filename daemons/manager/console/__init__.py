"""The manager's web console: server-rendered pages at ``/`` over the same service layer
as the REST API (operations.py), with the API's sessions, RBAC and audits.

One module per concern: guard (cookies, CSRF, transaction, RBAC), render (templates),
forms (form <-> API body), and the pages: signin, clusters, tokens, users, preheat.
"""

from __future__ import annotations

from aiohttp import web

from d7y.daemons.manager.api import ManagerApi
from d7y.daemons.manager.console.clusters import ClusterPages
from d7y.daemons.manager.console.guard import Guard
from d7y.daemons.manager.console.preheat import JobsAccess, PreheatPages
from d7y.daemons.manager.console.render import STATIC, Renderer
from d7y.daemons.manager.console.signin import SignInPages
from d7y.daemons.manager.console.tokens import TokenPages
from d7y.daemons.manager.console.users import UserPages


def console_routes(api: ManagerApi, jobs: JobsAccess | None = None) -> list[web.RouteDef]:
    """Every console route, to add to the manager's application; without ``jobs`` the
    preheat pages say the manager cannot preheat."""
    renderer: Renderer | None = None
    guard = Guard(api, lambda request, exc, who: renderer.error(request, exc, who))
    renderer = Renderer(guard)
    pages = (
        SignInPages(guard, renderer),
        ClusterPages(api.ops, guard, renderer),
        TokenPages(api.ops, guard, renderer),
        UserPages(api.ops, guard, renderer),
        PreheatPages(jobs, guard, renderer),
    )
    routes = [route for page in pages for route in page.routes()]
    return [*routes, web.static("/static", STATIC)]
