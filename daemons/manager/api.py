"""The REST API under /api/v1: routes, authentication and RBAC, transactions, audits.

Every request runs in one database session. A write (POST, PUT, PATCH, DELETE) commits
its changes together with its audit row, or nothing: any error rolls the whole request
back, and the failure is then audited on its own. Errors are JSON ``{"error", "message"}``
(plus ``"field"`` for a bad value) with the status that fits:

- 400 the body is not JSON; 422 a value is missing, unknown, of the wrong type or out of
  range (the message names the field and the allowed range);
- 401 no token, an unknown or forged one, or a session that expired (sign in again);
- 403 a token that is inactive, expired or lacks the scope, or a role that may only read;
- 404 no such object; 409 a name that exists, a cluster that still has active members;
- 503 the database cannot be reached (the manager keeps serving and recovers by itself).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from d7y.daemons.manager import auth, searcher
from d7y.daemons.manager import responses as out
from d7y.daemons.manager import schemas as s
from d7y.daemons.manager.errors import ApiError
from d7y.daemons.manager.models import (
    ACTIVE,
    Audit,
    Cluster,
    PersonalAccessToken,
    Scheduler,
    SeedPeer,
    User,
)
from d7y.daemons.manager.operations import ManagerOperations, get_or_404
from d7y.daemons.manager.response_cache import CLUSTERS, ResponseCache, changed_resources
from d7y.daemons.manager.validation import explain

log = logging.getLogger("d7y.manager")
API = "/api/v1"
#: Dragonfly's token-guarded "open API" (/oapi/v1/jobs): the same operations, for
#: clients written against Dragonfly's manager.
OAPI = "/oapi/v1"
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
MAX_PER_PAGE = 1000
#: Checked against when the user name is unknown (see signin).
_DUMMY_HASH = auth.hash_password("not a password of anyone")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(exc: ApiError) -> web.Response:
    body: dict[str, Any] = {"error": exc.error, "message": exc.message}
    if exc.field is not None:
        body["field"] = exc.field
    return json_response(body, status=exc.status)


def json_response(data: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(data),
        status=status,
        content_type="application/json",
        headers=headers,
    )


@dataclass(frozen=True)
class Route:
    """One operation: what the router, the RBAC check and the OpenAPI document need."""

    method: str
    path: str
    handler: Handler
    summary: str
    #: "none": anyone; "user": a session or a token; "self": like "user", and a guest may
    #: write it for themselves (their own password).
    auth: str = "user"
    body: type | None = None
    query: type | None = None
    response: str = "object"  # "object" | "array" | "none" (documentation only)
    #: The answer's type (responses.py; an array's item type), for the document.
    returns: type | None = None
    #: The document's operationId when the handler serves two paths (default: its name).
    operation_id: str = ""

    @property
    def group(self) -> str:
        for prefix in (API, OAPI):
            if self.path.startswith(prefix + "/"):
                return self.path[len(prefix) + 1 :].split("/", 1)[0]
        return ""


# -- request helpers ------------------------------------------------------------------

_FIELD_AT = re.compile(r"- at `\$\.?([^`]*)`")


def _field_of(message: str) -> str | None:
    match = _FIELD_AT.search(message)
    return match.group(1) if match else None


async def read_body(request: web.Request, kind: type) -> Any:
    return decode_body(await request.read(), kind)


def decode_body(raw: bytes, kind: type) -> Any:
    """The request body as ``kind``, validated: ApiError 400/422 naming the bad field."""
    try:
        value = msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        message, field = explain(exc, kind, raw)
        raise ApiError(422, "invalid", f"invalid request body: {message}", field) from None
    except msgspec.DecodeError as exc:
        raise ApiError(
            400, "malformed", f"the request body is not valid JSON ({exc}); send a JSON object"
        ) from None
    try:
        if isinstance(value, s.ClusterCreate | s.ClusterUpdate) and isinstance(
            value.scopes, s.Scopes
        ):
            s.check_scopes(value.scopes)
        if isinstance(value, s.SchedulerRegister | s.SeedPeerRegister | s.SchedulerSearch):
            s.check_ip(value.ip)
        if isinstance(value, s.JobCreate):
            s.check_preheat_args(value.args)
    except s.ValidationFailed as exc:
        text = str(exc)
        raise ApiError(422, "invalid", f"invalid request body: {text}", _field_of(text)) from None
    return value


def read_query(request: web.Request, kind: type) -> Any:
    query = dict(request.query)
    try:
        value = msgspec.convert(query, kind, strict=False)
    except msgspec.ValidationError as exc:
        message, field = explain(exc, kind, msgspec.json.encode(query))
        message = message.replace("`", "").replace("field ", "query parameter ", 1)
        raise ApiError(422, "invalid", f"invalid query parameter: {message}", field) from None
    if isinstance(value, s.SchedulerSearch):
        try:
            s.check_ip(value.ip, "$.ip")
        except s.ValidationFailed as exc:
            raise ApiError(422, "invalid", f"invalid query parameter: {exc}", "ip") from None
    return value


def path_id(request: web.Request, name: str = "id") -> int:
    return int(request.match_info[name])  # the route's pattern admits digits only


class ListQuery(msgspec.Struct, forbid_unknown_fields=True):
    page: int = 1
    per_page: int = 50
    cluster_id: int | None = None
    name: str | None = None


def page_of(request: web.Request) -> ListQuery:
    query = read_query(request, ListQuery)
    if query.page < 1:
        raise ApiError(
            422, "invalid", f"query parameter page must be >= 1, got {query.page}", "page"
        )
    if not 1 <= query.per_page <= MAX_PER_PAGE:
        raise ApiError(
            422,
            "invalid",
            f"query parameter per_page must be in 1..{MAX_PER_PAGE}, got {query.per_page}",
            "per_page",
        )
    return query


async def paged(session: AsyncSession, statement: Any, query: ListQuery) -> tuple[list, int]:
    total = await session.scalar(select(func.count()).select_from(statement.subquery()))
    rows = await session.scalars(
        statement.limit(query.per_page).offset((query.page - 1) * query.per_page)
    )
    return list(rows), int(total or 0)


def db(request: web.Request) -> AsyncSession:
    return request["db"]


def principal(request: web.Request) -> auth.Principal:
    return request["principal"]


def failure_of(request: web.Request, exc: Exception) -> ApiError:
    """What a request that failed with ``exc`` (not an ApiError) answers; its
    transaction was rolled back, so the message can say nothing was changed."""
    if isinstance(exc, sa_exc.IntegrityError):
        log.info("conflict on %s %s: %s", request.method, request.path, exc.orig)
        return ApiError(
            409,
            "conflict",
            "the change conflicts with existing data (a name or an "
            "address that exists, or an object still referenced); nothing was changed",
        )
    # (IntegrityError, above, is a DBAPIError too: the order matters.)
    if isinstance(exc, sa_exc.DBAPIError | sa_exc.TimeoutError | OSError | TimeoutError):
        log.warning(
            "database unavailable on %s %s: %s",
            request.method,
            request.path,
            exc.__class__.__name__ + ": " + str(exc).splitlines()[0]
            if str(exc)
            else exc.__class__.__name__,
        )
        return ApiError(
            503,
            "database_unavailable",
            "the database cannot be reached; nothing was changed; retry later",
        )
    # A bug: the request fails alone, the manager keeps serving.
    log.error("internal error on %s %s", request.method, request.path, exc_info=exc)
    return ApiError(500, "internal", "internal error (logged by the manager); nothing was changed")


# -- the API -------------------------------------------------------------------------


class ManagerApi:
    """The handlers and their shared state (sessions, the session key, settings)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        session_key: bytes,
        *,
        session_ttl: float,
        keepalive_timeout: float,
        on_request: Callable[[str, str, int], None] | None = None,
        extra_routes: list[Route] = (),
        cache: ResponseCache | None = None,
    ) -> None:
        self.sessions = sessions
        #: Answers of hot reads in Redis (does nothing without it).
        self.cache = cache or ResponseCache()
        self.session_key = session_key
        self.session_ttl = session_ttl
        self.keepalive_timeout = keepalive_timeout
        #: The service layer, shared with the console.
        self.ops = ManagerOperations(keepalive_timeout)
        self.on_request = on_request or (lambda _m, _p, _s: None)
        self.routes = self._routes() + list(extra_routes)
        self._by_route: dict[Any, Route] = {}  # aiohttp's route object -> ours

    # -- wiring ------------------------------------------------------------------------

    def _routes(self) -> list[Route]:
        returns = {
            "signin": out.SignInOut, "me": out.UserOut, "list_users": out.UserOut,
            "create_user": out.UserOut, "get_user": out.UserOut, "update_user": out.UserOut,
            "list_roles": out.RoleOut, "list_tokens": out.TokenOut,
            "create_token": out.TokenCreatedOut, "get_token": out.TokenOut,
            "update_token": out.TokenOut, "list_clusters": out.ClusterOut,
            "create_cluster": out.ClusterOut, "get_cluster": out.ClusterOut,
            "update_cluster": out.ClusterOut, "cluster_config": out.ClusterConfigOut,
            "search_schedulers": out.SchedulerMatchOut, "list_schedulers": out.SchedulerOut,
            "register_scheduler": out.SchedulerOut, "get_scheduler": out.SchedulerOut,
            "keepalive_scheduler": out.SchedulerOut, "list_seed_peers": out.SeedPeerOut,
            "register_seed_peer": out.SeedPeerOut, "get_seed_peer": out.SeedPeerOut,
            "keepalive_seed_peer": out.SeedPeerOut, "list_audits": out.AuditOut,
        }  # fmt: skip
        return [
            dataclasses.replace(r, returns=returns.get(r.handler.__name__))
            for r in self._route_table()
        ]

    def _route_table(self) -> list[Route]:
        R = Route
        i = "{id:\\d+}"
        return [
            R("GET", "/healthy", self.healthy, "200 when the database answers", auth="none",
              response="none"),
            R("POST", f"{API}/users/signin", self.signin, "sign in: a session token",
              auth="none", body=s.SignIn),
            R("GET", f"{API}/users/me", self.me, "the signed-in user"),
            R("GET", f"{API}/users", self.list_users, "list users", response="array"),
            R("POST", f"{API}/users", self.create_user, "create a user (root)", body=s.UserCreate),
            R("GET", f"{API}/users/{i}", self.get_user, "one user"),
            R("PATCH", f"{API}/users/{i}", self.update_user, "change a user's role, state, email",
              body=s.UserUpdate),
            R("DELETE", f"{API}/users/{i}", self.delete_user, "delete a user", response="none"),
            R("POST", f"{API}/users/{i}/reset_password", self.reset_password,
              "change a password (your own, or anyone's as root)", auth="self",
              body=s.PasswordReset, response="none"),
            R("GET", f"{API}/roles", self.list_roles, "the roles and what they allow",
              response="array"),
            R("GET", f"{API}/personal-access-tokens", self.list_tokens,
              "your tokens (root: everyone's)", response="array"),
            R("POST", f"{API}/personal-access-tokens", self.create_token,
              "create a token; the token is in this answer only", body=s.TokenCreate),
            R("GET", f"{API}/personal-access-tokens/{i}", self.get_token, "one token"),
            R("PATCH", f"{API}/personal-access-tokens/{i}", self.update_token,
              "revoke (state inactive) or reactivate a token", body=s.TokenUpdate),
            R("DELETE", f"{API}/personal-access-tokens/{i}", self.delete_token,
              "delete a token", response="none"),
            R("GET", f"{API}/clusters", self.list_clusters, "list clusters", response="array"),
            R("POST", f"{API}/clusters", self.create_cluster, "create a cluster",
              body=s.ClusterCreate),
            R("GET", f"{API}/clusters/{i}", self.get_cluster, "one cluster"),
            R("PATCH", f"{API}/clusters/{i}", self.update_cluster, "change a cluster",
              body=s.ClusterUpdate),
            R("DELETE", f"{API}/clusters/{i}", self.delete_cluster,
              "delete a cluster without active schedulers or seed peers", response="none"),
            R("GET", f"{API}/clusters/{i}/config", self.cluster_config,
              "what a scheduler of the cluster applies: limits, block list, active seed peers"),
            R("GET", f"{API}/schedulers/search", self.search_schedulers,
              "the active schedulers for a dfdaemon, best-matching cluster first",
              query=s.SchedulerSearch, response="array"),
            R("GET", f"{API}/schedulers", self.list_schedulers, "list schedulers",
              response="array"),
            R("POST", f"{API}/schedulers", self.register_scheduler,
              "register a scheduler (or re-register: same hostname, ip and cluster)",
              body=s.SchedulerRegister),
            R("GET", f"{API}/schedulers/{i}", self.get_scheduler, "one scheduler"),
            R("POST", f"{API}/schedulers/{i}/keepalive", self.keepalive_scheduler,
              "a scheduler is alive (every 5 s)"),
            R("DELETE", f"{API}/schedulers/{i}", self.delete_scheduler, "delete a scheduler",
              response="none"),
            R("GET", f"{API}/seed-peers", self.list_seed_peers, "list seed peers",
              response="array"),
            R("POST", f"{API}/seed-peers", self.register_seed_peer,
              "register a seed peer (or re-register)", body=s.SeedPeerRegister),
            R("GET", f"{API}/seed-peers/{i}", self.get_seed_peer, "one seed peer"),
            R("POST", f"{API}/seed-peers/{i}/keepalive", self.keepalive_seed_peer,
              "a seed peer is alive (every 5 s)"),
            R("DELETE", f"{API}/seed-peers/{i}", self.delete_seed_peer, "delete a seed peer",
              response="none"),
            R("GET", f"{API}/audits", self.list_audits, "the audit log, newest first",
              response="array"),
        ]  # fmt: skip

    def build_app(self, *, max_body: int, extra_routes: list[web.RouteDef] = ()) -> web.Application:
        app = web.Application(middlewares=[self.middleware], client_max_size=max_body)
        for route in self.routes:
            self._by_route[app.router.add_route(route.method, route.path, route.handler)] = route
        app.add_routes(list(extra_routes))
        return app

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = self._by_route.get(request.match_info.route)
        if route is None:  # 404/405 from the router, or a static route (docs)
            try:
                return await handler(request)
            except web.HTTPException as exc:
                if exc.status in (404, 405):
                    self.on_request(request.method, "(none)", exc.status)
                    return error_response(
                        ApiError(
                            exc.status,
                            "not_found" if exc.status == 404 else "method_not_allowed",
                            f"no route {request.method} {request.path}; see {API}/openapi.json",
                        )
                    )
                raise
        status = 500
        try:
            response = await self._run(request, handler, route)
            status = response.status
            return response
        except ApiError as exc:
            status = exc.status
            await self.audit_failure(request, exc.status)
            return error_response(exc)
        finally:
            self.on_request(request.method, route.path, status)

    async def _run(self, request: web.Request, handler: Handler, route: Route) -> web.Response:
        try:
            async with self.sessions() as session:
                request["db"] = session
                if route.auth != "none":
                    who = await self._authenticate(request, session)
                    request["principal"] = who
                    self._authorize(request, route, who)
                response = await handler(request)
                if request.method in WRITE_METHODS:
                    session.add(self.audit_row(request, response.status))
                await session.commit()
                await self.cache.invalidate(changed_resources(session))
                for callback in request.get("after_commit", ()):
                    callback()
                return response
        except ApiError:
            raise
        except web.HTTPException as exc:  # a body over server.max_body: 413
            raise ApiError(exc.status, "http", f"{exc.reason}: {exc.text}") from None
        except Exception as exc:
            raise failure_of(request, exc) from None

    async def _authenticate(self, request: web.Request, session: AsyncSession) -> auth.Principal:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(
                401,
                "unauthenticated",
                f"send Authorization: Bearer <token>: a session token from POST "
                f"{API}/users/signin or a personal access token",
            )
        if token.startswith(auth.SESSION_PREFIX):
            return await self.session_principal(session, token)
        pat = await session.scalar(
            select(PersonalAccessToken).where(
                PersonalAccessToken.token_hash == auth.token_hash(token)
            )
        )
        if pat is None:
            raise ApiError(
                401,
                "unauthenticated",
                f"unknown token; create one with POST {API}/personal-access-tokens or sign in",
            )
        if pat.state != ACTIVE:
            raise ApiError(
                403, "token_inactive", f"token {pat.id} ({pat.name}) was revoked; create a new one"
            )
        if pat.expires_at <= time.time():
            raise ApiError(
                403,
                "token_expired",
                f"token {pat.id} ({pat.name}) expired at {iso(pat.expires_at)}; create a new one",
            )
        user = await session.get(User, pat.user_id)
        if user is None or user.state != "enable":
            raise ApiError(403, "forbidden", f"the user of token {pat.id} is disabled")
        return auth.Principal(user.id, user.name, user.role, pat.id, tuple(pat.scopes))

    async def session_principal(self, session: AsyncSession, token: str) -> auth.Principal:
        """Who a session token (from sign-in; the console keeps it in a cookie) belongs
        to; ApiError 401 when it is forged, expired, or its user is gone or disabled."""
        try:
            user_id = auth.read_session(self.session_key, token)
        except auth.SessionInvalid as exc:
            raise ApiError(401, "unauthenticated", str(exc)) from None
        user = await session.get(User, user_id)
        if user is None or user.state != "enable":
            raise ApiError(
                401, "unauthenticated", "the session's user no longer exists or is disabled"
            )
        return auth.Principal(user.id, user.name, user.role)

    async def check_password(self, session: AsyncSession, name: str, password: str) -> User:
        """The user with this name and password; ApiError 401 (403 when disabled)."""
        user = await session.scalar(select(User).where(User.name == name))
        # scrypt takes tens of milliseconds: in a thread, so other requests go on. An
        # unknown name costs a hash too, so the answer's time does not tell names apart.
        stored = user.password_hash if user is not None else _DUMMY_HASH
        matches = await asyncio.to_thread(auth.verify_password, password, stored)
        if user is None or not matches:
            raise ApiError(401, "unauthenticated", "wrong user name or password")
        if user.state != "enable":
            raise ApiError(403, "forbidden", f"user {user.name!r} is disabled")
        return user

    def _authorize(self, request: web.Request, route: Route, who: auth.Principal) -> None:
        if route.auth == "self" and who.token_id is None and path_id(request) == who.user_id:
            return
        why = who.may(request.method, route.group)
        if why is not None:
            raise ApiError(403, "forbidden", why)

    def audit_row(self, request: web.Request, status: int) -> Audit:
        who: auth.Principal | None = request.get("principal")
        actor_type, actor_name = who.actor if who else ("anonymous", request.get("actor", ""))
        return Audit(
            actor_type=actor_type,
            actor_name=actor_name,
            method=request.method,
            path=request.path[:1024],
            status_code=status,
            state="success" if status < 400 else "failure",
            created_at=time.time(),
        )

    async def audit_failure(self, request: web.Request, status: int) -> None:
        """A refused write is audited in its own transaction (the request's own was
        rolled back); best effort: with the database down there is nowhere to write."""
        if request.method not in WRITE_METHODS:
            return
        try:
            async with self.sessions() as session, session.begin():
                session.add(self.audit_row(request, status))
        except (sa_exc.SQLAlchemyError, OSError, TimeoutError) as exc:
            log.warning(
                "cannot audit the refused %s %s: %s",
                request.method,
                request.path,
                exc.__class__.__name__,
            )

    # -- helpers -----------------------------------------------------------------------

    def is_active(self, last_keepalive_at: float, now: float | None = None) -> bool:
        return self.ops.is_active(last_keepalive_at, now)

    def active_since(self) -> float:
        return self.ops.active_since()

    # -- health ------------------------------------------------------------------------

    async def healthy(self, request: web.Request) -> web.Response:
        await db(request).execute(select(1))
        return web.Response(text="ok")

    # -- users -------------------------------------------------------------------------

    async def signin(self, request: web.Request) -> web.Response:
        body: s.SignIn = await read_body(request, s.SignIn)
        request["actor"] = body.name
        user = await self.check_password(db(request), body.name, body.password)
        request["principal"] = auth.Principal(user.id, user.name, user.role)
        expires = time.time() + self.session_ttl
        token = auth.issue_session(self.session_key, user.id, self.session_ttl)
        return json_response({"token": token, "expires_at": iso(expires), "user": user_out(user)})

    async def me(self, request: web.Request) -> web.Response:
        user = await get_or_404(db(request), User, principal(request).user_id, "user")
        return json_response(user_out(user))

    async def list_users(self, request: web.Request) -> web.Response:
        query = page_of(request)
        rows, total = await paged(db(request), select(User).order_by(User.id), query)
        return list_response([user_out(u) for u in rows], total)

    async def create_user(self, request: web.Request) -> web.Response:
        body: s.UserCreate = await read_body(request, s.UserCreate)
        return json_response(user_out(await self.ops.create_user(db(request), body)), status=201)

    async def get_user(self, request: web.Request) -> web.Response:
        return json_response(
            user_out(await get_or_404(db(request), User, path_id(request), "user"))
        )

    async def update_user(self, request: web.Request) -> web.Response:
        body: s.UserUpdate = await read_body(request, s.UserUpdate)
        user = await self.ops.update_user(db(request), path_id(request), body)
        return json_response(user_out(user))

    async def delete_user(self, request: web.Request) -> web.Response:
        await self.ops.delete_user(db(request), path_id(request))
        return web.Response(status=204)

    async def reset_password(self, request: web.Request) -> web.Response:
        body: s.PasswordReset = await read_body(request, s.PasswordReset)
        session = db(request)
        user = await get_or_404(session, User, path_id(request), "user")
        who = principal(request)
        if who.user_id == user.id and not await asyncio.to_thread(
            auth.verify_password, body.old_password, user.password_hash
        ):
            raise ApiError(403, "forbidden", "old_password is wrong", "old_password")
        user.password_hash = await asyncio.to_thread(auth.hash_password, body.new_password)
        user.updated_at = time.time()
        return web.Response(status=204)

    async def list_roles(self, request: web.Request) -> web.Response:
        return list_response(
            [{"name": name, "permissions": text} for name, text in auth.ROLES.items()],
            len(auth.ROLES),
        )

    # -- personal access tokens -----------------------------------------------------------

    async def list_tokens(self, request: web.Request) -> web.Response:
        query = page_of(request)
        rows, total = await paged(db(request), self.ops.tokens_of(principal(request)), query)
        return list_response([token_out(t) for t in rows], total)

    async def create_token(self, request: web.Request) -> web.Response:
        body: s.TokenCreate = await read_body(request, s.TokenCreate)
        row, token = await self.ops.create_token(db(request), principal(request), body)
        return json_response({**token_out(row), "token": token}, status=201)

    async def get_token(self, request: web.Request) -> web.Response:
        row = await self.ops.own_token(db(request), principal(request), path_id(request))
        return json_response(token_out(row))

    async def update_token(self, request: web.Request) -> web.Response:
        body: s.TokenUpdate = await read_body(request, s.TokenUpdate)
        row = await self.ops.update_token(db(request), principal(request), path_id(request), body)
        return json_response(token_out(row))

    async def delete_token(self, request: web.Request) -> web.Response:
        await self.ops.delete_token(db(request), principal(request), path_id(request))
        return web.Response(status=204)

    # -- clusters --------------------------------------------------------------------------

    async def list_clusters(self, request: web.Request) -> web.Response:
        query = page_of(request)
        # The answer depends on the clusters and the query only (not on who asks: the
        # route's RBAC check ran before), so it is cached by the query.
        variant = msgspec.json.encode([query.page, query.per_page, query.name]).decode()
        cached, key = await self.cache.get(CLUSTERS, variant)
        if cached is not None:
            return web.Response(
                body=cached.body, content_type="application/json", headers=cached.headers
            )
        statement = select(Cluster).order_by(Cluster.id)
        if query.name:
            statement = statement.where(Cluster.name == query.name)
        rows, total = await paged(db(request), statement, query)
        response = list_response([cluster_out(c) for c in rows], total)
        await self.cache.put(key, response.body, {"X-Total-Count": str(total)})
        return response

    async def create_cluster(self, request: web.Request) -> web.Response:
        body: s.ClusterCreate = await read_body(request, s.ClusterCreate)
        cluster = await self.ops.create_cluster(db(request), body)
        return json_response(cluster_out(cluster), status=201)

    async def get_cluster(self, request: web.Request) -> web.Response:
        return json_response(
            cluster_out(await get_or_404(db(request), Cluster, path_id(request), "cluster"))
        )

    async def update_cluster(self, request: web.Request) -> web.Response:
        body: s.ClusterUpdate = await read_body(request, s.ClusterUpdate)
        cluster = await self.ops.update_cluster(db(request), path_id(request), body)
        return json_response(cluster_out(cluster))

    async def delete_cluster(self, request: web.Request) -> web.Response:
        await self.ops.delete_cluster(db(request), path_id(request))
        return web.Response(status=204)

    async def cluster_config(self, request: web.Request) -> web.Response:
        session = db(request)
        cluster = await get_or_404(session, Cluster, path_id(request), "cluster")
        seeds = await self.ops.members(session, SeedPeer, cluster.id, active_only=True)
        return json_response({
            "cluster_id": cluster.id,
            "name": cluster.name,
            "scheduler_cluster_config": cluster.scheduler_cluster_config,
            "seed_peer_cluster_config": cluster.seed_peer_cluster_config,
            "peer_cluster_config": cluster.peer_cluster_config,
            "seed_peers": [self.member_out(p) for p in seeds],
        })  # fmt: skip

    # -- schedulers and seed peers ---------------------------------------------------------

    def member_out(self, row: Scheduler | SeedPeer) -> dict[str, Any]:
        out = {
            "id": row.id, "hostname": row.hostname, "ip": row.ip, "port": row.port,
            "idc": row.idc, "location": row.location, "cluster_id": row.cluster_id,
            "state": self.ops.member_state(row),
            "last_keepalive_at": iso(row.last_keepalive_at) if row.last_keepalive_at else None,
            "created_at": iso(row.created_at), "updated_at": iso(row.updated_at),
        }  # fmt: skip
        if isinstance(row, Scheduler):
            out["features"] = row.features
        else:
            out["type"] = row.type
            out["download_port"] = row.download_port
        return out

    async def _list_members(self, request: web.Request, model: type) -> web.Response:
        query = page_of(request)
        statement = select(model).order_by(model.id)
        if query.cluster_id is not None:
            statement = statement.where(model.cluster_id == query.cluster_id)
        rows, total = await paged(db(request), statement, query)
        return list_response([self.member_out(r) for r in rows], total)

    async def _register(self, request: web.Request, model: type, kind: type) -> web.Response:
        body = await read_body(request, kind)
        session = db(request)
        if await session.get(Cluster, body.cluster_id) is None:
            raise ApiError(
                422,
                "invalid",
                f"cluster_id {body.cluster_id} is not a cluster; list them with GET {API}/clusters",
                "cluster_id",
            )
        row = await session.scalar(
            select(model).where(
                model.hostname == body.hostname,
                model.ip == body.ip,
                model.cluster_id == body.cluster_id,
            )
        )
        now = time.time()
        created = row is None
        if row is None:
            row = model(created_at=now)
            session.add(row)
        for name in body.__struct_fields__:
            setattr(row, name, getattr(body, name))
        row.state, row.last_keepalive_at, row.updated_at = ACTIVE, now, now
        await session.flush()
        log.info(
            "%s registered id=%d hostname=%s ip=%s port=%d cluster=%d",
            model.__tablename__[:-1].replace("_", " "),
            row.id,
            row.hostname,
            row.ip,
            row.port,
            row.cluster_id,
        )
        return json_response(self.member_out(row), status=201 if created else 200)

    async def _keepalive(self, request: web.Request, model: type, what: str) -> web.Response:
        session = db(request)
        row = await session.get(model, path_id(request))
        if row is None:
            raise ApiError(
                404, "not_found", f"{what} {path_id(request)} does not exist; register again"
            )
        now = time.time()
        if not self.is_active(row.last_keepalive_at, now):
            log.info("%s active again id=%d hostname=%s", what, row.id, row.hostname)
        row.state, row.last_keepalive_at, row.updated_at = ACTIVE, now, now
        return json_response(self.member_out(row))

    async def _delete_member(self, request: web.Request, model: type, what: str) -> web.Response:
        session = db(request)
        await session.delete(await get_or_404(session, model, path_id(request), what))
        return web.Response(status=204)

    async def list_schedulers(self, request: web.Request) -> web.Response:
        return await self._list_members(request, Scheduler)

    async def register_scheduler(self, request: web.Request) -> web.Response:
        return await self._register(request, Scheduler, s.SchedulerRegister)

    async def get_scheduler(self, request: web.Request) -> web.Response:
        row = await get_or_404(db(request), Scheduler, path_id(request), "scheduler")
        return json_response(self.member_out(row))

    async def keepalive_scheduler(self, request: web.Request) -> web.Response:
        return await self._keepalive(request, Scheduler, "scheduler")

    async def delete_scheduler(self, request: web.Request) -> web.Response:
        return await self._delete_member(request, Scheduler, "scheduler")

    async def list_seed_peers(self, request: web.Request) -> web.Response:
        return await self._list_members(request, SeedPeer)

    async def register_seed_peer(self, request: web.Request) -> web.Response:
        return await self._register(request, SeedPeer, s.SeedPeerRegister)

    async def get_seed_peer(self, request: web.Request) -> web.Response:
        row = await get_or_404(db(request), SeedPeer, path_id(request), "seed peer")
        return json_response(self.member_out(row))

    async def keepalive_seed_peer(self, request: web.Request) -> web.Response:
        return await self._keepalive(request, SeedPeer, "seed peer")

    async def delete_seed_peer(self, request: web.Request) -> web.Response:
        return await self._delete_member(request, SeedPeer, "seed peer")

    async def search_schedulers(self, request: web.Request) -> web.Response:
        query: s.SchedulerSearch = read_query(request, s.SchedulerSearch)
        session = db(request)
        since = self.active_since()
        clusters = list(await session.scalars(select(Cluster).order_by(Cluster.id)))
        active = list(await session.scalars(
            select(Scheduler).where(Scheduler.last_keepalive_at > since).order_by(Scheduler.id)
        ))  # fmt: skip
        by_cluster: dict[int, list[Scheduler]] = {}
        for row in active:
            by_cluster.setdefault(row.cluster_id, []).append(row)
        candidates = [candidate_of(c, len(by_cluster.get(c.id, []))) for c in clusters]
        host = searcher.Host(query.hostname, query.ip, query.idc, query.location)
        ranked = searcher.rank_clusters(host, candidates)
        names = {c.id: c.name for c in clusters}
        answer = []
        for candidate, score in ranked:
            for row in by_cluster[candidate.cluster_id]:
                out = self.member_out(row)
                out["cluster_name"] = names[candidate.cluster_id]
                out["score"] = round(score, 6)
                answer.append(out)
        return list_response(answer, len(answer))

    # -- audits ----------------------------------------------------------------------------

    async def list_audits(self, request: web.Request) -> web.Response:
        query = page_of(request)
        rows, total = await paged(db(request), select(Audit).order_by(Audit.id.desc()), query)
        return list_response([audit_out(a) for a in rows], total)


# -- serialization -----------------------------------------------------------------------


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def list_response(items: list, total: int) -> web.Response:
    return json_response(items, headers={"X-Total-Count": str(total)})


def user_out(user: User) -> dict[str, Any]:
    return {"id": user.id, "name": user.name, "email": user.email, "role": user.role,
            "state": user.state, "created_at": iso(user.created_at),
            "updated_at": iso(user.updated_at)}  # fmt: skip


def token_out(row: PersonalAccessToken) -> dict[str, Any]:
    now = time.time()
    state = row.state if row.state != ACTIVE or row.expires_at > now else "expired"
    return {"id": row.id, "name": row.name, "bio": row.bio, "token_prefix": row.token_prefix,
            "scopes": row.scopes, "state": state, "expires_at": iso(row.expires_at),
            "user_id": row.user_id, "created_at": iso(row.created_at),
            "updated_at": iso(row.updated_at)}  # fmt: skip


def cluster_out(cluster: Cluster) -> dict[str, Any]:
    return {"id": cluster.id, "name": cluster.name, "bio": cluster.bio,
            "scopes": cluster.scopes, "is_default": cluster.is_default,
            "scheduler_cluster_config": cluster.scheduler_cluster_config,
            "seed_peer_cluster_config": cluster.seed_peer_cluster_config,
            "peer_cluster_config": cluster.peer_cluster_config,
            "created_at": iso(cluster.created_at),
            "updated_at": iso(cluster.updated_at)}  # fmt: skip


def audit_out(row: Audit) -> dict[str, Any]:
    return {"id": row.id, "actor_type": row.actor_type, "actor_name": row.actor_name,
            "method": row.method, "path": row.path, "status_code": row.status_code,
            "state": row.state, "created_at": iso(row.created_at)}  # fmt: skip


def candidate_of(cluster: Cluster, active_schedulers: int) -> searcher.Candidate:
    scopes = cluster.scopes or {}
    return searcher.Candidate(
        cluster_id=cluster.id,
        is_default=cluster.is_default,
        idc=scopes.get("idc", ""),
        location=scopes.get("location", ""),
        cidrs=tuple(scopes.get("cidrs", ())),
        hostnames=tuple(scopes.get("hostnames", ())),
        active_schedulers=active_schedulers,
    )
