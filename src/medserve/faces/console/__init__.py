"""The web console at ``/ui`` (and the bundled Swagger UI at ``/docs``): an extension of the
faces layer, registered through the ``medserve.extensions`` entry points like every capability.

Server-rendered (Jinja2) with htmx for partial updates, every asset served from this package
(``static/``, see ``static/VENDORED.md``), under a Content-Security-Policy without inline
scripts or styles. Readable without JavaScript. Sign-in, sessions, CSRF, authorization and
audit: ``web.py``, ``signin.py``, ``sessions.py``; the pages: ``pages.py``, ``chat.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.types import ASGIApp

from medserve.serving.extension import ServingExtension
from medserve.serving.resources import Resources

if TYPE_CHECKING:
    from medserve.faces.console.web import Console


class ConsoleExtension(ServingExtension):
    """``/ui`` and ``/docs``: a wrapper outside the security middleware (the highest order), so
    that a browser's session cookie, not a bearer header, signs its requests in."""

    name = "console"
    order = 1000

    def wrap(self, app: ASGIApp, resources: Resources) -> ASGIApp:
        # lazy import (Jinja2 templates and the pages load on the first console request's build)
        from medserve.faces.console.web import ConsoleMiddleware  # noqa: PLC0415

        return ConsoleMiddleware(app, resources, lambda: build(resources))


def build(resources: Resources) -> Console:
    """The console app of one server (built on its first request, once resources exist)."""
    # lazy import (the pages import the governance and monitoring features)
    from medserve.faces.console import chat  # noqa: PLC0415
    from medserve.faces.console.pages import pages  # noqa: PLC0415
    from medserve.faces.console.signin import public_routes  # noqa: PLC0415
    from medserve.faces.console.web import Console  # noqa: PLC0415

    return Console(resources, [*pages(), *chat.pages()], public_routes())


extension = ConsoleExtension()
