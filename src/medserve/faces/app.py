"""The HTTP app: FastAPI for the API surface and docs, a raw ASGI fast path for predictions."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict
from typing import Any

import orjson
from fastapi import Body, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp

from medserve import __version__
from medserve.core.errors import MedserveError
from medserve.core.registry.entities import ModelVersion
from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.core.store.sql import MAX_PAGE
from medserve.serving import metrics
from medserve.serving.access_log import AccessLog, loaded_line
from medserve.serving.data_plane import DataPlane
from medserve.serving.extension import serving_extensions
from medserve.serving.extensions import security as security_ext
from medserve.serving.fast_path import BodyLimit, HotPathApp, match_hot_path
from medserve.serving.guard import OpenGuard
from medserve.serving.http_errors import code_for_status, document_errors, status_for
from medserve.serving.model_manager import ModelManager
from medserve.serving.resources import Resources, resources_of
from medserve.serving.server import tune_gc

INFER_EXAMPLE = {
    "id": "req-1",
    "inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}],
}
RECORDS_EXAMPLE = {"instances": [{"feature_a": 1.0, "feature_b": "x"}]}
METRICS_FLUSH_S = 1.0  # how far /metrics may lag behind another worker's requests
# The not-ready answer of the readiness probes: the same body as 200, with ready false.
NOT_READY: dict[int | str, dict[str, Any]] = {503: {"description": "Not ready"}}


class ORJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def _version_view(v: ModelVersion, aliases: list[str]) -> dict[str, Any]:
    view = asdict(v)
    view["aliases"] = aliases
    return view


def error_statuses(method: str, path: str, operation: dict[str, Any]) -> list[int]:
    """The error statuses an operation can answer, for the OpenAPI document."""
    if path in security_ext.OPEN_PATHS:
        return []
    statuses = {401, 403, 429}  # every other route authenticates, authorizes, rate-limits
    if operation.get("parameters") or "requestBody" in operation:
        statuses.add(400)
    if "requestBody" in operation:  # every route bounds its body, in size and in time
        statuses |= {408, 413}
    if "{" in path:
        statuses.add(404)
    if match_hot_path(method, path) is not None:
        statuses |= {413, 415, 422, 503}
    elif path.endswith("/explain"):
        statuses |= {422, 503}
    elif path.startswith("/v2/models/"):
        statuses.add(503)
    return sorted(statuses)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this request's path (for the Allow of a 405): the
    extensions' included routers and the docs routes count too."""
    path = request.scope["path"]
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.router.routes):
        regex = getattr(route, "path_regex", None)
        if route.methods and regex is not None and regex.match(path):
            methods |= route.methods
    return sorted(methods)


def document_security(openapi: dict[str, Any]) -> None:
    """Declare the bearer credential every route but the health probes needs."""
    schemes = openapi.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "A medserve API key (msk_...) or, where configured, an OIDC access token.",
    }
    openapi["security"] = [{"bearer": []}]
    for path in security_ext.OPEN_PATHS:
        for operation in openapi.get("paths", {}).get(path, {}).values():
            operation["security"] = []


def create_api(settings: Settings) -> FastAPI:
    resources = Resources()  # filled in the lifespan; the one attribute of app.state

    @asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        registry = Registry.open(settings, run_migrations=settings.migrate_on_start)
        manager = ModelManager(
            registry.store,
            registry.artifacts,
            max_explicit=settings.max_loaded_versions,
            intra_op_threads=settings.onnx_intra_op_threads,
        )
        manager.start(settings.reload_interval_s)
        resources.settings = settings
        resources.registry = registry
        resources.plane = DataPlane(manager)
        resources.guard = OpenGuard()
        resources.media_handlers = {
            key: handler
            for extension in serving_extensions()
            for key, handler in extension.media_handlers(settings).items()
        }
        try:
            async with AsyncExitStack() as stack:
                for extension in serving_extensions():
                    await stack.enter_async_context(extension.lifespan(resources))
                for extension in serving_extensions():  # once every resource exists
                    before = extension.before_inference(resources)
                    after = extension.after_inference(resources)
                    if before is not None:
                        resources.plane.before_inference.append(before)
                    if after is not None:
                        resources.plane.after_inference.append(after)
                stack.enter_context(metrics.flushing(METRICS_FLUSH_S))
                tune_gc()
                if settings.access_log:  # what this worker serves, once (the banner's sequel)
                    failed = list(manager.failures())
                    print(loaded_line(manager.served(), failed), file=sys.stderr, flush=True)
                yield
        finally:
            manager.stop()
            registry.close()

    api = FastAPI(
        title="medserve",
        version=__version__,
        description="Clinical model serving: Open Inference Protocol v2, records API, registry.",
        lifespan=lifespan,
        default_response_class=ORJSONResponse,
        # /docs is the bundled Swagger UI of the console extension (faces/console): no CDN,
        # usable with a key; FastAPI's CDN-loading pages are off.
        docs_url=None,
        redoc_url=None,
        # Every route is authorized by action group (see serving/extensions/security.py).
        dependencies=[Depends(security_ext.authorize_route)],
    )
    api.state.resources = resources

    default_openapi = api.openapi

    def openapi_with_errors() -> dict[str, Any]:
        if api.openapi_schema is None:
            schema = document_errors(default_openapi(), error_statuses)
            if settings.security:
                document_security(schema)
            api.openapi_schema = schema
        return api.openapi_schema

    api.openapi = openapi_with_errors  # type: ignore[method-assign]

    def plane(request: Request) -> DataPlane:
        return resources_of(request).plane

    def registry_of(request: Request) -> Registry:
        return resources_of(request).registry

    @api.exception_handler(MedserveError)
    async def _domain_error(_: Request, exc: MedserveError) -> Response:
        return ORJSONResponse(exc.to_dict(), status_code=status_for(exc))

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        body = {"error": str(exc.detail), "code": code_for_status(exc.status_code)}
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette lists one route's methods: list the path's
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return ORJSONResponse(body, status_code=exc.status_code, headers=headers)

    @api.exception_handler(RequestValidationError)
    async def _request_error(_: Request, exc: RequestValidationError) -> Response:
        problems = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")}
            for e in exc.errors()
        ]
        message = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        body = {"error": message, "code": "invalid_request", "details": problems}
        return ORJSONResponse(body, status_code=400)

    # -- Open Inference Protocol v2 -------------------------------------------------------
    @api.get("/v2/health/live", tags=["v2"])
    async def live() -> dict[str, bool]:
        return {"live": True}

    @api.get("/v2/health/ready", tags=["v2"], responses=NOT_READY)
    async def ready(request: Request) -> Response:
        ok = plane(request).ready()
        return ORJSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @api.get("/v2", tags=["v2"])
    async def server_metadata(request: Request) -> dict[str, Any]:
        return plane(request).server_metadata()

    @api.get("/v2/models/{name}", tags=["v2"])
    async def model_metadata(request: Request, name: str) -> dict[str, Any]:
        return await plane(request).model_metadata(name, None)

    @api.get("/v2/models/{name}/versions/{version}", tags=["v2"])
    async def version_metadata(request: Request, name: str, version: str) -> dict[str, Any]:
        return await plane(request).model_metadata(name, version)

    async def _ready(request: Request, name: str, version: str | None) -> Response:
        ok = await plane(request).model_ready(name, version)
        return ORJSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    @api.get("/v2/models/{name}/ready", tags=["v2"], responses=NOT_READY)
    async def model_ready(request: Request, name: str) -> Response:
        return await _ready(request, name, None)

    @api.get("/v2/models/{name}/versions/{version}/ready", tags=["v2"], responses=NOT_READY)
    async def version_ready(request: Request, name: str, version: str) -> Response:
        return await _ready(request, name, version)

    @api.post("/v2/models/{name}/infer", tags=["v2"])
    async def infer(
        request: Request, name: str, body: dict[str, Any] = Body(examples=[INFER_EXAMPLE])
    ) -> dict[str, Any]:
        """Served by the fast path; declared here for the OpenAPI document."""
        return await plane(request).infer_v2(name, None, body)

    @api.post("/v2/models/{name}/versions/{version}/infer", tags=["v2"])
    async def infer_version(
        request: Request,
        name: str,
        version: str,
        body: dict[str, Any] = Body(examples=[INFER_EXAMPLE]),
    ) -> dict[str, Any]:
        """Served by the fast path; declared here for the OpenAPI document."""
        return await plane(request).infer_v2(name, version, body)

    # -- records API and registry views ---------------------------------------------------
    @api.post("/v1/models/{name}/predict", tags=["records"])
    async def predict(
        request: Request, name: str, body: dict[str, Any] = Body(examples=[RECORDS_EXAMPLE])
    ) -> dict[str, Any]:
        """Served by the fast path; declared here for the OpenAPI document."""
        return await plane(request).predict_records(name, None, body)

    @api.post("/v1/models/{name}/versions/{version}/predict", tags=["records"])
    async def predict_version(
        request: Request,
        name: str,
        version: str,
        body: dict[str, Any] = Body(examples=[RECORDS_EXAMPLE]),
    ) -> dict[str, Any]:
        """Served by the fast path; declared here for the OpenAPI document."""
        return await plane(request).predict_records(name, version, body)

    @api.get("/v1/models", tags=["registry"])
    def list_models(
        request: Request,
        search: str | None = None,
        page_size: int = Query(default=100, ge=1, le=MAX_PAGE),
        page_token: str | None = None,
    ) -> dict[str, Any]:
        store = registry_of(request).store
        page = store.list_models(name_contains=search, page_size=page_size, page_token=page_token)
        items = [
            {**asdict(m), "aliases": store.list_aliases(m.name)}
            for m in page.items
            if security_ext.visible(request, m.name)
        ]
        return {"models": items, "next_page_token": page.next_page_token}

    @api.get("/v1/models/{name}", tags=["registry"])
    def get_model(request: Request, name: str) -> dict[str, Any]:
        store = registry_of(request).store
        model = store.get_model(name)
        aliases = store.list_aliases(name)
        versions = store.list_versions(name).items
        return {
            **asdict(model),
            "aliases": aliases,
            "versions": [
                _version_view(v, sorted(a for a, n in aliases.items() if n == v.version))
                for v in versions
            ],
        }

    @api.get("/v1/models/{name}/versions/{version}", tags=["registry"])
    def get_version(request: Request, name: str, version: str) -> dict[str, Any]:
        store = registry_of(request).store
        v = store.resolve(name, version)
        aliases = store.list_aliases(name)
        return _version_view(v, sorted(a for a, n in aliases.items() if n == v.version))

    @api.get("/v1/models/{name}/aliases/history", tags=["registry"])
    def alias_history(request: Request, name: str, alias: str | None = None) -> dict[str, Any]:
        events = registry_of(request).store.alias_history(name, alias)
        return {"events": [asdict(e) for e in events]}

    @api.get("/v1/served", tags=["registry"])
    async def served(request: Request) -> dict[str, Any]:
        dp = plane(request)
        failures = [
            {"model": m, "version": v, "error": msg}
            for (m, v), msg in dp.manager.failures().items()
            if security_ext.visible(request, m)
        ]
        return {
            "served": [s for s in dp.list_served() if security_ext.visible(request, s["name"])],
            "failures": failures,
        }

    for extension in serving_extensions():
        if extension.router is not None:
            api.include_router(extension.router)

    @api.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    async def prometheus(request: Request) -> Response:
        text = metrics.render()
        if security_ext.bounded(request):  # a tenant's key sees its own models' series only
            text = metrics.only_models(text, lambda m: security_ext.visible(request, m))
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    return api


def create_app(settings: Settings | None = None) -> ASGIApp:
    """The API behind the prediction fast path, wrapped in each extension's middleware."""
    settings = settings or Settings()
    api = create_api(settings)
    bounded = BodyLimit(api, settings.max_body_bytes, settings.body_timeout_s)
    resources: Resources = api.state.resources
    app: ASGIApp = HotPathApp(bounded, resources, settings.max_body_bytes, settings.body_timeout_s)
    for extension in serving_extensions():
        app = extension.wrap(app, resources)
    if settings.access_log:  # outermost: it times and sees the status of every answer
        app = AccessLog(app, settings.log_format)
    return app


def app_factory() -> Any:
    """The app of one uvicorn worker, from the environment ``run_server`` prepared."""
    return create_app(Settings())


APP_FACTORY = "medserve.faces.app:app_factory"
