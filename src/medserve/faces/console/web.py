"""The console's plumbing: the ASGI wrapper that routes ``/ui`` (and ``/docs``) to the console,
sign-in and sessions, CSRF, authorization through the security guard, audit entries, rendering.

Why a wrapper outside the security middleware rather than routes behind it: the API's
middleware authenticates a bearer credential and answers JSON; a browser holds a session cookie
and needs a sign-in page, a redirect and an HTML 403. So the console authenticates its cookie
itself, but with the same guard (a key is proved with ``authenticate_headers`` at sign-in; each
request re-reads it with ``principal_for_key``), authorizes with the same ``guard.authorize``
(roles x actions x models x tenants), and writes the same ``AuditEntry`` to the same trail. The
principal is put where the API's own handlers look for it, so the console may call them.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from importlib import resources as package_files
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medserve.core import charts, presentation
from medserve.core.audit import AuditEntry, AuditLog, load_audit_keys
from medserve.core.context import ANONYMOUS, PRINCIPAL_SCOPE_KEY, Principal
from medserve.core.errors import (
    AuthenticationError,
    MedserveError,
    PayloadTooLargeError,
    PermissionDeniedError,
)
from medserve.core.phi import deidentify_text
from medserve.core.store.unit_of_work import engine_of
from medserve.faces.console.sessions import COOKIE, SessionStore, csrf_ok, csrf_token
from medserve.features.security.guard import SecurityGuard
from medserve.features.security.permissions import allowed_actions
from medserve.serving.auth_failures import INVALID, MISSING
from medserve.serving.extensions.security import (
    AUDIT_LOG,
    AUDITED_SCOPE_KEY,
    AUTH_FAILURES,
    SECURITY_HEADERS,
)
from medserve.serving.fast_path import next_message, stored_names
from medserve.serving.http_errors import status_for
from medserve.serving.resources import Resources

log = logging.getLogger(__name__)

PREFIX = "/ui"
OPEN_CSRF_COOKIE = "medserve_csrf"  # double-submit token of the forms while security is off
# No inline script or style anywhere in the console: everything comes from /ui/static.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# Swagger UI sets element styles from script (allowed) and injects a few style attributes.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")
_UI = f"{PREFIX}/"
_OURS = (PREFIX, "/docs")
_STATIC = Path(str(package_files.files("medserve.faces.console") / "static"))


@dataclass
class Who:
    """The signed-in caller of one console request."""

    principal: Principal
    csrf: str
    session_token: str | None = None  # None while security is off
    new_csrf_cookie: str | None = None  # security off: the form token cookie to set

    @property
    def actions(self) -> frozenset[str]:
        return allowed_actions(self.principal.roles)


Handler = Callable[["Console", Request, Who], Awaitable[Response]]


@dataclass(frozen=True)
class Page:
    """One console route. ``action`` is authorized before the handler runs (with the model
    named by the path's ``name``); ``None``: the handler authorizes (it depends on the form)."""

    path: str
    handler: Handler
    action: str | None
    methods: tuple[str, ...] = ("GET",)


class Console:
    """The console of one server: its resources, session store, templates and routes."""

    def __init__(
        self, resources: Resources, pages: list[Page], public: list[Route | Mount]
    ) -> None:
        self.resources = resources
        self._sessions: SessionStore | None = None
        self._open_trail: AuditLog | None = None
        self.env = Environment(
            loader=PackageLoader("medserve.faces.console", "templates"),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            number=presentation.number,
            interval=presentation.interval,
            percent=presentation.percent,
            when=presentation.when,
            day=presentation.day,
            label=presentation.label,
            psi_band=presentation.psi_band,
            duration=presentation.duration,
            svg=Markup,  # only for SVG this package's own chart functions drew
        )
        self.env.globals.update(charts=charts, presentation=presentation, prefix=PREFIX)
        routes: list[Route | Mount] = [
            Mount(f"{PREFIX}/static", StaticFiles(directory=_STATIC), name="static"),
            *public,
        ]
        for page in pages:
            routes.append(Route(page.path, self._endpoint(page), methods=list(page.methods)))
        self.app = Starlette(routes=routes)
        self.app.state.resources = resources  # so the API's helpers (resources_of) work here
        self.app.state.console = self

    # -- infrastructure ------------------------------------------------------------------------
    @property
    def sessions(self) -> SessionStore:
        if self._sessions is None:
            self._sessions = SessionStore(engine_of(self.resources.registry.store))
        return self._sessions

    def trail(self) -> AuditLog:
        """The audit trail: the security extension's; with security off (the demo), a reader
        of the same table that first moves the recorded changes (registry, cards, aliases,
        keys: the outbox) into the chain, as the writer of a secured server does."""
        found = self.resources.find(AUDIT_LOG)
        if found is not None:
            return found
        if self._open_trail is None:
            settings = self.resources.settings
            self._open_trail = AuditLog(
                engine_of(self.resources.registry.store), keys=load_audit_keys(settings.home)
            )
        while self._open_trail.drain_outbox():
            pass
        return self._open_trail

    @property
    def secured(self) -> bool:
        return isinstance(self.resources.guard, SecurityGuard)

    @property
    def guard(self) -> SecurityGuard:
        guard = self.resources.guard
        assert isinstance(guard, SecurityGuard)
        return guard

    def render(
        self, request: Request, template: str, who: Who | None, status: int = 200, **context: Any
    ) -> HTMLResponse:
        body = self.env.get_template(template).render(
            request=request, who=who, secured=self.secured, path=request.url.path, **context
        )
        response = HTMLResponse(body, status_code=status)
        if who is not None and who.new_csrf_cookie:
            set_cookie(request, response, OPEN_CSRF_COOKIE, who.new_csrf_cookie)
        return response

    def partial(self, request: Request) -> bool:
        """Whether htmx asked (a fragment is answered instead of the whole page)."""
        return request.headers.get("hx-request") == "true"

    async def who(self, request: Request) -> Who | None:
        """The caller, or None when the browser must sign in (no, ended or unknown session)."""
        if not self.secured:
            cookie = request.cookies.get(OPEN_CSRF_COOKIE)
            if cookie:
                return Who(ANONYMOUS, cookie)
            fresh = secrets.token_urlsafe(24)
            return Who(ANONYMOUS, fresh, new_csrf_cookie=fresh)
        token = request.cookies.get(COOKIE)
        if not token:
            return None
        session = await asyncio.to_thread(self.sessions.find, token)
        if session is None:
            return None
        try:
            principal = await asyncio.to_thread(self.guard.principal_for_key, session.key_id)
        except AuthenticationError:
            await asyncio.to_thread(self.sessions.close_key, session.key_id)
            request.state.ended = "your key was revoked or has expired"
            return None
        return Who(principal, csrf_token(token), session_token=token)

    def csrf_valid(self, request: Request, who: Who, sent: str | None) -> bool:
        if who.session_token is not None:
            return csrf_ok(who.session_token, sent)
        cookie = request.cookies.get(OPEN_CSRF_COOKIE)
        return bool(cookie) and bool(sent) and secrets.compare_digest(str(cookie), str(sent))

    def authorize(self, request: Request, who: Who, action: str, model: str | None) -> None:
        """The guard's decision (roles x actions x models x tenants), remembered for the audit."""
        request.state.action = action
        if model is not None:
            request.state.model = model
        self.resources.guard.authorize(who.principal, action, model)

    def visible(self, who: Who, model: str) -> bool:
        return not self.secured or self.guard.visible(who.principal, model)

    def audit_entry(self, request: Request, who: Who | None, status: int) -> AuditEntry:
        principal = who.principal if who else None
        route = request.scope.get("route")
        where = getattr(route, "path", None) or PREFIX
        client = request.client
        model: str | None = getattr(request.state, "model", None)
        version: str | None = getattr(request.state, "version", None)
        if status >= 400 and model is not None:  # a refused name is the caller's text (as the API)
            model, version = stored_names(self.resources.plane.manager, model, version)
        return AuditEntry(
            actor=principal.subject if principal else "unauthenticated",
            key_id=principal.key_id if principal else None,
            action=str(getattr(request.state, "action", "access")),
            model=model,
            version=version,
            client=client.host if client else None,
            outcome=status,
            detail=f"console {request.method} {deidentify_text(where)}",
        )

    async def audit(self, request: Request, who: Who | None, status: int) -> None:
        """Every console request goes into the trail: reads queued, changes written first."""
        trail = self.resources.find(AUDIT_LOG)
        if trail is None:
            return
        if status < 400 and request.scope.get(AUDITED_SCOPE_KEY):
            return  # the API handler it called wrote the entry with its change (an alert's ack)
        entry = self.audit_entry(request, who, status)
        if request.method in ("GET", "HEAD"):
            trail.enqueue(entry)
        else:
            await asyncio.to_thread(trail.append, [entry])

    def error_page(
        self, request: Request, who: Who | None, exc: MedserveError, status: int | None = None
    ) -> HTMLResponse:
        code = status or status_for(exc)
        titles = {403: "Not allowed", 404: "Not found", 400: "Not accepted", 409: "Refused"}
        return self._error(request, who, exc, code, titles.get(code, "Something went wrong"))

    def _error(
        self, request: Request, who: Who | None, exc: MedserveError, code: int, title: str
    ) -> HTMLResponse:
        details = getattr(exc, "details", None)
        lines = [str(d.get("message", d)) for d in details] if isinstance(details, list) else []
        return self.render(
            request, "error.html", who, status=code, title=title, message=str(exc), details=lines
        )

    def _endpoint(self, page: Page) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            who = await self.who(request)
            if who is None:
                return await self._sign_in_first(request)
            request.scope[PRINCIPAL_SCOPE_KEY] = who.principal
            try:
                if request.method == "POST":
                    form = await request.form()
                    request.state.form = form
                    sent = form.get("csrf")
                    if not self.csrf_valid(request, who, sent if isinstance(sent, str) else None):
                        raise PermissionDeniedError(
                            "this form has expired or did not come from this console: "
                            "reload the page and send it again"
                        )
                if page.action is not None:
                    name = request.path_params.get("name")
                    self.authorize(request, who, page.action, name)
                if "version" in request.path_params:
                    request.state.version = str(request.path_params["version"])
                response = await page.handler(self, request, who)
            except MedserveError as exc:
                response = self.error_page(request, who, exc)
            await self.audit(request, who, response.status_code)
            if who.new_csrf_cookie:
                set_cookie(request, response, OPEN_CSRF_COOKIE, who.new_csrf_cookie)
            return response

        return endpoint

    async def _sign_in_first(self, request: Request) -> Response:
        ended = getattr(request.state, "ended", None)
        if request.cookies.get(COOKIE):
            ended = ended or "your session has ended"
        target = f"{PREFIX}/login?next={quote(request.url.path)}"
        if ended:
            target += "&ended=1"
        if self.partial(request):  # htmx: the whole page goes to the sign-in form
            response: Response = Response(status_code=204, headers={"HX-Redirect": target})
        else:
            response = RedirectResponse(target, status_code=303)
        if request.cookies.get(COOKIE):
            response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict")
        # counted per source, route and minute, as the API's 401s are: a crawler or a stale tab
        # does not write one audit entry per request
        failures = self.resources.find(AUTH_FAILURES)
        if failures is not None:
            client = request.client
            where = getattr(request.scope.get("route"), "path", None) or PREFIX
            reason = INVALID if request.cookies.get(COOKIE) else MISSING
            failures.count(client.host if client else None, where, reason)
        return response


def set_cookie(request: Request, response: Response, name: str, value: str) -> None:
    """HttpOnly, SameSite=Strict, Secure when the request came over TLS; the console's path."""
    response.set_cookie(
        name,
        value,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


class ConsoleMiddleware:
    """Routes ``/ui...`` to the console and ``/docs`` to the bundled Swagger UI, ``/`` to
    ``/ui/``; everything else goes on to the API, untouched."""

    def __init__(self, app: ASGIApp, resources: Resources, build: Callable[[], Console]) -> None:
        self.app = app
        self.resources = resources
        self._build = build
        self._console: ASGIApp | None = None

    def _console_app(self) -> ASGIApp:
        if self._console is None:
            settings = self.resources.settings
            self._console = _BodyBound(
                self._build().app, settings.max_body_bytes, settings.body_timeout_s
            )
        return self._console

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if not path.startswith(_OURS) and path != "/":  # every API call: one cheap test
            await self.app(scope, receive, send)
            return
        if path == "/" and scope["method"] in ("GET", "HEAD"):
            await RedirectResponse(f"{PREFIX}/", status_code=307)(scope, receive, send)
            return
        docs = path == "/docs" or path.startswith("/docs/")
        if not (docs or path == PREFIX or path.startswith(_UI)):
            await self.app(scope, receive, send)
            return
        tls = scope.get("scheme") == "https"
        policy = (DOCS_CSP if docs else CSP).encode()

        async def send_secured(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k not in (b"cache-control", b"content-security-policy")
                ]
                headers.extend(SECURITY_HEADERS)
                headers.append((b"content-security-policy", policy))
                if tls:
                    headers.append(_HSTS)
                message["headers"] = headers
            await send(message)

        if path == PREFIX:
            await RedirectResponse(f"{PREFIX}/", status_code=307)(scope, receive, send_secured)
            return
        await self._console_app()(scope, receive, send_secured)


class _BodyBound:
    """``MEDSERVE_MAX_BODY_BYTES`` and ``MEDSERVE_BODY_TIMEOUT_S`` on a console request's body.
    Unlike the API's ``BodyLimit``, the time bound ends with the body: a streamed answer (the
    chat) waits on ``receive`` for the client's disconnect for as long as it streams."""

    def __init__(self, app: ASGIApp, limit: int, timeout_s: float) -> None:
        self.app = app
        self.limit = limit
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        size = 0
        complete = scope["method"] in ("GET", "HEAD")

        async def bounded() -> Message:
            nonlocal size, complete
            if complete:
                return await receive()
            message = await next_message(receive, self.timeout_s)
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > self.limit:
                    raise PayloadTooLargeError(f"the form is over the limit of {self.limit} bytes")
                complete = not message.get("more_body", False)
            return message

        await self.app(scope, bounded, send)
