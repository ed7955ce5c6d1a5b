"""What a server takes from an extension, besides what the core takes (see
``medserve.core.extensions``): HTTP routes, a lifespan entered at start-up once the data plane
exists (it provides typed resources and adds prediction observers), an ASGI wrapper (middleware)
around the whole app, pipeline hooks around every inference and media codecs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import APIRouter
from starlette.types import ASGIApp

from medserve.core.events import AfterInference, BeforeInference
from medserve.core.extensions import Extension, extensions
from medserve.core.settings import Settings
from medserve.serving.media import MediaHandler
from medserve.serving.resources import Resources


class ServingExtension(Extension):
    """An extension that serves: override what it contributes.

    ``lifespan(resources)`` may use the server's typed resources (``settings``, ``registry``,
    ``plane``, ``guard``) and provide its own under a ``ResourceKey``; lifespans are entered in
    ``order``. ``wrap`` builds middleware around the app, the lowest ``order`` innermost.
    ``media_handlers`` are the codecs the prediction endpoints use for bodies that are not plain
    JSON.
    """

    router: APIRouter | None = None

    def lifespan(self, resources: Resources) -> AbstractAsyncContextManager[None]:
        return _nothing()

    def wrap(self, app: ASGIApp, resources: Resources) -> ASGIApp:
        return app

    def before_inference(self, resources: Resources) -> BeforeInference | None:
        """A pipeline hook run before every inference (it may refuse the request)."""
        return None

    def after_inference(self, resources: Resources) -> AfterInference | None:
        """A pipeline hook run after every inference, before the observers and the answer."""
        return None

    def media_handlers(self, settings: Settings) -> Mapping[tuple[str, bytes], MediaHandler]:
        """Codecs for request bodies of other media types, by ``(protocol, media type)``."""
        return {}


@asynccontextmanager
async def _nothing() -> AsyncIterator[None]:
    yield


def serving_extensions() -> list[ServingExtension]:
    """The installed extensions that contribute to a server, in order."""
    return [e for e in extensions() if isinstance(e, ServingExtension)]
