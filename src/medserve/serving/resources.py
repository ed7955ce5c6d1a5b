"""A server's resources, typed: what the app factory sets up (settings, registry, data plane,
guard, media codecs) as attributes, and what each extension's lifespan adds under a typed
``ResourceKey`` (as aiohttp's ``AppKey``): no untyped ``app.state`` attributes set in an order
nothing checks. A key is provided once; getting one nobody provided is an error that names it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from medserve.core.context import ANONYMOUS, PRINCIPAL_SCOPE_KEY, Principal
from medserve.core.errors import AuthenticationError, MedserveError

if TYPE_CHECKING:
    from starlette.requests import HTTPConnection

    from medserve.core.registry.service import Registry
    from medserve.core.settings import Settings
    from medserve.serving.data_plane import DataPlane
    from medserve.serving.guard import Guard
    from medserve.serving.media import MediaHandler

T = TypeVar("T")


class ResourceError(MedserveError):
    code = "resource_error"


class ResourceKey(Generic[T]):
    """The name and type of one resource an extension provides."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"ResourceKey({self.name!r})"


class Resources:
    settings: Settings
    registry: Registry
    plane: DataPlane
    guard: Guard
    media_handlers: dict[tuple[str, bytes], MediaHandler]

    def __init__(self) -> None:
        self._provided: dict[ResourceKey[Any], Any] = {}

    def provide(self, key: ResourceKey[T], value: T) -> None:
        if key in self._provided:
            raise ResourceError(f"{key.name!r} is provided twice (two extensions claim it)")
        self._provided[key] = value

    def get(self, key: ResourceKey[T]) -> T:
        if key not in self._provided:
            raise ResourceError(f"no extension provided {key.name!r}")
        return cast("T", self._provided[key])

    def find(self, key: ResourceKey[T]) -> T | None:
        """The resource, or ``None`` where no extension provides it (a capability that is off)."""
        return cast("T | None", self._provided.get(key))


def resources_of(connection: HTTPConnection) -> Resources:
    """The resources of the app serving ``connection`` (a request)."""
    found: Resources = connection.app.state.resources
    return found


def principal_of(connection: HTTPConnection) -> Principal:
    """The caller, as the security middleware authenticated (and rate-limited) it once for this
    request: authenticating again in a route would spend another rate-limit token. Security off
    (the demo): anonymous; security on but no caller: refused (never expected: fail closed)."""
    principal = connection.scope.get(PRINCIPAL_SCOPE_KEY)
    if isinstance(principal, Principal):
        return principal
    if not resources_of(connection).settings.security:
        return ANONYMOUS
    raise AuthenticationError("the request was not authenticated")
