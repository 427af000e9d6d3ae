"""Every console request goes through here: who is signed in (the session cookie), whether
a form really came from our own page (CSRF), whether the role may do it, one database
transaction with its audit row, and an error page instead of a stack trace.

Cookies (both HttpOnly, SameSite=Strict, Secure when the request came over TLS):

- ``d7y_session``: the same signed session token ``POST /api/v1/users/signin`` returns,
  so the console's sign-in and the API's share one key, one lifetime and one check.
- ``d7y_csrf``: a random value set with the first page. Every form carries
  ``csrf_token`` = HMAC(session key, that value); a POST whose token does not match is
  refused before anything else happens. Another site can neither read the cookie nor
  compute the MAC, and SameSite=Strict keeps the browser from sending the cookies with a
  cross-site form anyway (two fences, either one enough).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from d7y.daemons.manager import auth
from d7y.daemons.manager.api import ManagerApi, failure_of
from d7y.daemons.manager.errors import ApiError
from d7y.daemons.manager.response_cache import changed_resources

SESSION_COOKIE = "d7y_session"
CSRF_COOKIE = "d7y_csrf"
CSRF_FIELD = "csrf_token"


@dataclass
class Call:
    """One console request as a view sees it."""

    request: web.Request
    db: AsyncSession
    who: auth.Principal | None
    #: The submitted form (POST), else empty.
    form: dict[str, str]

    def int_param(self, name: str = "id") -> int:
        return int(self.request.match_info[name])  # the route admits digits only


View = Callable[[Call], Awaitable[web.StreamResponse]]
ErrorPage = Callable[[web.Request, ApiError, auth.Principal | None], web.Response]


class Guard:
    def __init__(self, api: ManagerApi, error_page: ErrorPage) -> None:
        self.api = api
        self.error_page = error_page

    # -- cookies -----------------------------------------------------------------------

    def csrf_value(self, request: web.Request) -> str:
        """The browser's CSRF cookie, or a new one (set on the response by finish())."""
        value = request.cookies.get(CSRF_COOKIE) or request.get("new_csrf")
        if not value:
            value = request["new_csrf"] = secrets.token_urlsafe(24)
        return value

    def csrf_token(self, request: web.Request) -> str:
        """What the page's forms carry in their hidden ``csrf_token`` field."""
        cookie = self.csrf_value(request)
        return hmac.new(self.api.session_key, f"csrf|{cookie}".encode(), hashlib.sha256).hexdigest()

    def _csrf_ok(self, request: web.Request, form: dict[str, str]) -> bool:
        cookie = request.cookies.get(CSRF_COOKIE)
        if not cookie:
            return False
        expected = hmac.new(
            self.api.session_key, f"csrf|{cookie}".encode(), hashlib.sha256
        ).hexdigest()
        return hmac.compare_digest(form.get(CSRF_FIELD, ""), expected)

    def _cookie(self, response: web.StreamResponse, request: web.Request, name: str, value: str,
                max_age: int | None) -> None:  # fmt: skip
        response.set_cookie(
            name, value, max_age=max_age, path="/", httponly=True, samesite="Strict",
            secure=request.secure,
        )  # fmt: skip

    def sign_in(self, response: web.StreamResponse, request: web.Request, user_id: int) -> None:
        ttl = self.api.session_ttl
        token = auth.issue_session(self.api.session_key, user_id, ttl)
        self._cookie(response, request, SESSION_COOKIE, token, int(ttl))

    def sign_out(self, response: web.StreamResponse) -> None:
        response.del_cookie(SESSION_COOKIE, path="/")

    def finish(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        """Set the CSRF cookie a page just made up, and keep pages out of shared caches."""
        if request.get("new_csrf") and CSRF_COOKIE not in request.cookies:
            self._cookie(response, request, CSRF_COOKIE, request["new_csrf"], None)
        response.headers["Cache-Control"] = "no-store"
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    def require_write(self, call: Call, group: str) -> None:
        """A form page for changing something: a role that may only read gets the 403
        up front rather than a form it cannot submit."""
        why = call.who.may("POST", group) if call.who is not None else "sign in first"
        if why is not None:
            raise ApiError(403, "forbidden", why)

    # -- running a view ----------------------------------------------------------------

    def page(
        self, view: View, *, group: str, public: bool = False
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """An aiohttp handler around ``view``: ``group`` is the API group whose RBAC the
        view follows (clusters, personal-access-tokens, users, jobs); a public view
        (sign-in) runs without a session."""

        async def handler(request: web.Request) -> web.StreamResponse:
            return self.finish(request, await self._run(request, view, group, public))

        return handler

    async def _run(
        self, request: web.Request, view: View, group: str, public: bool
    ) -> web.StreamResponse:
        write = request.method == "POST"
        who: auth.Principal | None = None
        try:
            form: dict[str, str] = {}
            if write:
                posted = await request.post()
                form = {k: v for k, v in posted.items() if isinstance(v, str)}
                if not self._csrf_ok(request, form):
                    raise ApiError(
                        403,
                        "csrf",
                        "this form is stale or came from another site; reload the page and "
                        "submit it again",
                    )
            async with self.api.sessions() as session:
                if not public:
                    who = await self._principal(request, session)
                    if who is None:
                        return self._to_signin(request)
                    request["principal"] = who
                    why = who.may(request.method, group)
                    if why is not None:
                        raise ApiError(403, "forbidden", why)
                response = await view(Call(request, session, who, form))
                if write:
                    session.add(self.api.audit_row(request, response.status))
                await session.commit()
                await self.api.cache.invalidate(changed_resources(session))
            # What must wait for the commit (waking the job queue for a new job).
            for callback in request.get("after_commit", ()):
                callback()
            return response
        except ApiError as exc:
            await self.api.audit_failure(request, exc.status)
            return self.error_page(request, exc, who)
        except Exception as exc:
            # A form over server.max_body (413), the database gone (503), a bug (500):
            # rolled back, audited like the API's, and an error page.
            failure = (
                ApiError(exc.status, "http", f"{exc.reason}: {exc.text}")
                if isinstance(exc, web.HTTPException)
                else failure_of(request, exc)
            )
            await self.api.audit_failure(request, failure.status)
            return self.error_page(request, failure, who)

    async def _principal(
        self, request: web.Request, session: AsyncSession
    ) -> auth.Principal | None:
        token = request.cookies.get(SESSION_COOKIE, "")
        if not token.startswith(auth.SESSION_PREFIX):
            return None
        try:
            return await self.api.session_principal(session, token)
        except ApiError:  # expired, forged, user disabled: sign in again
            return None

    def _to_signin(self, request: web.Request) -> web.Response:
        target = request.path_qs if request.method == "GET" else "/"
        response = redirect(f"/signin?next={quote(target, safe='')}")
        self.sign_out(response)
        return response


def redirect(location: str) -> web.Response:
    """303 See Other: after a form POST the browser GETs the result page (so reloading
    it does not submit the form again)."""
    return web.Response(status=303, headers={"Location": location})
