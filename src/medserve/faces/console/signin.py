"""Sign in with an API key, sign out; and the bundled Swagger UI at ``/docs``.

Sign-in proves the key with the security guard exactly as an API call would
(``authenticate_headers``: the same lookup, the same rate limit), then opens a session stored
in the database (``sessions.py``). A failed sign-in is counted per source and minute, as the
API's 401s are (``AUTH_FAILURES``), so a guessing browser cannot flood the trail.
"""

from __future__ import annotations

import asyncio
import secrets

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from medserve.core.context import PRINCIPAL_SCOPE_KEY
from medserve.core.errors import AuthenticationError, MedserveError
from medserve.faces.console.sessions import COOKIE, LOGIN_COOKIE, csrf_ok
from medserve.faces.console.web import _STATIC, PREFIX, Console, Who, set_cookie
from medserve.serving.auth_failures import INVALID
from medserve.serving.extensions.security import AUTH_FAILURES


def _console(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def _next(request: Request, raw: str | None) -> str:
    """Where to go after signing in: a console path only (no open redirect)."""
    target = (raw or "").strip()
    if target.startswith(f"{PREFIX}/") and not target.startswith("//") and "\\" not in target:
        return target
    return f"{PREFIX}/"


def _login_page(
    request: Request, token: str, status: int = 200, error: str | None = None
) -> HTMLResponse:
    c = _console(request)
    ended = request.query_params.get("ended") == "1"
    response = c.render(
        request,
        "login.html",
        None,
        status=status,
        csrf=token,
        error=error,
        ended=ended,
        next=_next(request, request.query_params.get("next")),
    )
    set_cookie(request, response, LOGIN_COOKIE, token)
    return response


async def login_form(request: Request) -> Response:
    c = _console(request)
    if not c.secured:
        return RedirectResponse(f"{PREFIX}/", status_code=303)
    return _login_page(request, request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24))


async def login(request: Request) -> Response:
    c = _console(request)
    if not c.secured:
        return RedirectResponse(f"{PREFIX}/", status_code=303)
    form = await request.form()
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    sent = form.get("csrf")
    fresh = secrets.token_urlsafe(24)
    if not cookie or not isinstance(sent, str) or not secrets.compare_digest(cookie, sent):
        return _login_page(request, fresh, 403, "This form has expired: please sign in again.")
    key = form.get("key")
    key = key.strip() if isinstance(key, str) else ""
    try:
        if not key:
            raise AuthenticationError("an API key is required")
        header = [(b"authorization", f"Bearer {key}".encode("latin-1", "replace"))]
        principal = await asyncio.to_thread(c.guard.authenticate_headers, header)
        if principal.key_id is None:
            raise AuthenticationError("sign in with an API key (msk_...)")
        stored = await asyncio.to_thread(c.guard.store.list_keys)
        expires = next((k.expires_at for k in stored if k.key_id == principal.key_id), None)
    except AuthenticationError:
        client = request.client
        where = f"{PREFIX}/login"
        c.resources.get(AUTH_FAILURES).count(client.host if client else None, where, INVALID)
        return _login_page(request, fresh, 401, "That key is unknown, revoked or expired.")
    except MedserveError as exc:  # a rate limit: the guard's own refusal
        return _login_page(request, fresh, 429, str(exc))
    previous = request.cookies.get(COOKIE)
    if previous:  # signing in again (another key): the old session ends, it is not left behind
        await asyncio.to_thread(c.sessions.close, previous)
    token, _ = await asyncio.to_thread(c.sessions.open, principal.key_id, expires)
    who = Who(principal, "", session_token=token)
    request.scope[PRINCIPAL_SCOPE_KEY] = principal
    request.state.action = "sign_in"
    response = RedirectResponse(_next(request, str(form.get("next") or "")), status_code=303)
    set_cookie(request, response, COOKIE, token)
    response.delete_cookie(LOGIN_COOKIE, path=PREFIX, httponly=True, samesite="strict")
    await c.audit(request, who, 303)
    return response


async def logout(request: Request) -> Response:
    c = _console(request)
    token = request.cookies.get(COOKIE)
    who = await c.who(request)
    form = await request.form()
    sent = form.get("csrf")
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    if token and who is not None and csrf_ok(token, sent if isinstance(sent, str) else None):
        await asyncio.to_thread(c.sessions.close, token)
        request.state.action = "sign_out"
        await c.audit(request, who, 303)
    response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict")
    return response


async def docs_page(request: Request) -> Response:
    """Swagger UI from the bundled assets; the key is asked for on the page (see docs.js)."""
    return _console(request).render(request, "docs.html", None)


def public_routes() -> list[Route | Mount]:
    return [
        Route(f"{PREFIX}/login", login_form, methods=["GET"]),
        Route(f"{PREFIX}/login", login, methods=["POST"]),
        Route(f"{PREFIX}/logout", logout, methods=["POST"]),
        Route("/docs", docs_page, methods=["GET"]),
        Mount("/docs/assets", StaticFiles(directory=_STATIC / "swagger"), name="docs-assets"),
    ]
