"""``inference.GRPCInferenceService``: the gRPC transport adapter in front of the one pipeline.

Each call goes through the steps the REST fast path takes (``serving/fast_path.py``), in the
same order and with the same objects: the server's guard authenticates the credential from the
``authorization`` (or ``x-api-key``) metadata and rate-limits it, then authorizes the action
(``predict``) on the model; ``codec`` decodes the message into the v2 body that
``oip_v2.parse_infer_request`` validates (the same problems as REST); ``DataPlane.serve`` runs the
extensions' hooks, the model, and the observe step (audit entry and prediction-log record,
journaled before the answer); ``codec`` encodes the answer. A refusal is observed as REST's is
(``DataPlane.refused``: audited, a 401 counted per source and minute) and answered with the
status ``status.py`` maps, its problems in the trailers. Metrics are labelled ``protocol="grpc"``
(statuses in their REST equivalents, so one dashboard reads both transports).

ServerLive and ServerReady are open, as ``/v2/health/*`` are; ServerMetadata, ModelMetadata and
ModelReady need a credential allowed to ``predict`` (the model's, for the last two) and are
audited as the REST reads are. RepositoryModelLoad/Unload stay UNIMPLEMENTED: models are served
by moving registry aliases, under the promotion gate, never by a call to the serving endpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol, TypeVar

import grpc

from medserve.core.audit import AuditEntry
from medserve.core.context import (
    PRINCIPAL_SCOPE_KEY,
    Principal,
    RequestContext,
    made_request_id,
    stored_request_id,
)
from medserve.core.errors import (
    AuthenticationError,
    InternalError,
    InvalidRequestError,
    MedserveError,
)
from medserve.core.events import RefusalEvent
from medserve.core.phi import pseudonymize
from medserve.serving import metrics
from medserve.serving.auth_failures import auth_failure_reason
from medserve.serving.extensions.security import AUDIT_LOG, AUTH_FAILURES, PHI_SALT
from medserve.serving.fast_path import UNNAMED, stored_names
from medserve.serving.http_errors import status_for
from medserve.serving.protocols import oip_v2
from medserve.serving.protocols.grpc_v2 import codec
from medserve.serving.protocols.grpc_v2 import grpc_predict_v2_pb2 as pb
from medserve.serving.protocols.grpc_v2.grpc_predict_v2_pb2_grpc import (
    GRPCInferenceServiceServicer,
)
from medserve.serving.protocols.grpc_v2.status import bounded_message, grpc_code, trailers
from medserve.serving.resources import Resources

log = logging.getLogger(__name__)

PROTOCOL = "grpc"  # the metrics' and the audit's name for this transport
SERVICE = "inference.GRPCInferenceService"
METHOD = "POST"  # every gRPC call is an HTTP/2 POST; kept so in the trail as REST's method
_TEXT_LIMIT = 256

R = TypeVar("R")
Metadata = Sequence[tuple[str, str | bytes]]


class Context(Protocol):
    """What the adapter uses of ``grpc.aio.ServicerContext`` (grpcio ships no type hints)."""

    def invocation_metadata(self) -> Metadata | None: ...

    def peer(self) -> str: ...

    def set_trailing_metadata(self, trailing_metadata: Metadata) -> None: ...

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Metadata = ()
    ) -> NoReturn: ...


def rpc_path(rpc: str) -> str:
    return f"/{SERVICE}/{rpc}"


def _peer_host(peer: str | None) -> str | None:
    """The address of ``ipv4:127.0.0.1:5000`` or ``ipv6:[::1]:5000`` (grpc's peer strings)."""
    if not peer:
        return None
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or None
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]") or None
    return kind or None


@dataclass
class Call:
    """What the pipeline needs of one call's metadata, read once. ``scope`` stands in for the
    ASGI scope the guard reads the credential from and records the principal in."""

    rpc: str
    scope: dict[str, Any]
    client: str | None
    request_id: str
    made: int | None  # set where medserve made the request id
    caller_request_id: str | None
    patient: str | None
    site: str | None

    @classmethod
    def of(cls, context: Context, rpc: str) -> Call:
        headers: list[tuple[bytes, bytes]] = []
        request_id = patient = site = None
        for key, value in context.invocation_metadata() or ():
            raw = value if isinstance(value, bytes) else value.encode("latin-1")
            headers.append((key.encode("latin-1"), raw))
            if key == "x-request-id" and raw:
                request_id = raw[:64].decode("latin-1")
            elif key == "x-patient-id" and raw:
                patient = raw[:_TEXT_LIMIT].decode("latin-1")
            elif key == "x-site" and raw:
                site = raw[:_TEXT_LIMIT].decode("latin-1")
        client = _peer_host(context.peer())
        scope: dict[str, Any] = {
            "type": "grpc",
            "method": METHOD,
            "path": rpc_path(rpc),
            "headers": headers,
            "client": (client, 0) if client else None,
        }
        made: int | None = None
        caller = request_id
        if not request_id:
            request_id, made = made_request_id()
        return cls(rpc, scope, client, request_id, made, caller, patient, site)

    @property
    def principal(self) -> Principal | None:
        found = self.scope.get(PRINCIPAL_SCOPE_KEY)
        return found if isinstance(found, Principal) else None


class InferenceService(GRPCInferenceServiceServicer):
    """The servicer; one per server process, reading the server's resources (set up by the
    app's lifespan) on every call."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources

    # -- health: open, as /v2/health/* ------------------------------------------------------
    async def ServerLive(  # noqa: N802 - the protocol's name
        self, request: pb.ServerLiveRequest, context: Context
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.resources.plane.live())

    async def ServerReady(  # noqa: N802 - the protocol's name
        self, request: pb.ServerReadyRequest, context: Context
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.resources.plane.ready())

    # -- metadata: authenticated, authorized and audited, as the REST reads ------------------
    async def ServerMetadata(  # noqa: N802 - the protocol's name
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        async def answer() -> pb.ServerMetadataResponse:
            found = self.resources.plane.server_metadata()
            return pb.ServerMetadataResponse(
                name=found["name"], version=found["version"], extensions=found["extensions"]
            )

        return await self._read(context, "ServerMetadata", None, None, answer)

    async def ModelMetadata(  # noqa: N802 - the protocol's name
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        name, ref = request.name, request.version or None

        async def answer() -> pb.ModelMetadataResponse:
            return codec.model_metadata(await self.resources.plane.model_metadata(name, ref))

        return await self._read(context, "ModelMetadata", name, ref, answer)

    async def ModelReady(  # noqa: N802 - the protocol's name
        self, request: pb.ModelReadyRequest, context: Context
    ) -> pb.ModelReadyResponse:
        name, ref = request.name, request.version or None

        async def answer() -> pb.ModelReadyResponse:
            return pb.ModelReadyResponse(ready=await self.resources.plane.model_ready(name, ref))

        return await self._read(context, "ModelReady", name, ref, answer)

    async def _read(
        self,
        context: Context,
        rpc: str,
        name: str | None,
        ref: str | None,
        answer: Callable[[], Awaitable[R]],
    ) -> R:
        call = Call.of(context, rpc)
        caller_known = False
        try:
            guard = self.resources.guard
            principal = await guard.authenticate(call.scope)
            caller_known = True
            if name is not None and not name:
                raise _no_model_name("name")
            guard.authorize(principal, "predict", name)
            result = await answer()
        except MedserveError as exc:
            await self._refuse_read(context, call, exc, name, ref, caller_known)
        try:
            self._audit_read(call, 200, name, ref)
        except MedserveError as unrecorded:  # fail closed: the trail cannot take it
            await _abort(context, call, unrecorded, status_for(unrecorded))
        context.set_trailing_metadata((("x-request-id", call.request_id),))
        return result

    def _audit_read(self, call: Call, status: int, name: str | None, ref: str | None) -> None:
        """One audit entry per read, as the security middleware writes for REST reads."""
        audit = self.resources.find(AUDIT_LOG)
        if audit is None:  # security off (the demo): no trail
            return
        salt = self.resources.get(PHI_SALT)
        principal = call.principal
        audit.enqueue(
            AuditEntry(
                actor=principal.subject if principal else "unauthenticated",
                key_id=principal.key_id if principal else None,
                action="predict",
                model=name,
                version=ref,
                client=call.client,
                outcome=status,
                request_id=(
                    stored_request_id(call.caller_request_id, None, salt)
                    if call.caller_request_id
                    else None
                ),
                patient_hash=pseudonymize(call.patient, salt=salt) if call.patient else None,
                detail=f"{METHOD} {rpc_path(call.rpc)}",
            )
        )

    async def _refuse_read(
        self,
        context: Context,
        call: Call,
        exc: MedserveError,
        name: str | None,
        ref: str | None,
        caller_known: bool,
    ) -> NoReturn:
        status = status_for(exc)
        failures = self.resources.find(AUTH_FAILURES)
        if not caller_known and isinstance(exc, AuthenticationError) and failures is not None:
            # counted per source and minute, as REST's 401s
            failures.count(
                call.client, rpc_path(call.rpc), auth_failure_reason(call.scope["headers"])
            )
        else:
            if name is not None:  # a name the server does not serve is the caller's text
                name, ref = stored_names(self.resources.plane.manager, name, ref)
            if not caller_known:
                name, ref = None, None
            try:
                self._audit_read(call, status, name, ref)
            except MedserveError as unrecorded:  # fail closed: the trail cannot take it
                exc, status = unrecorded, status_for(unrecorded)
        await _abort(context, call, exc, status)

    # -- inference --------------------------------------------------------------------------
    async def ModelInfer(  # noqa: N802 - the protocol's name
        self, request: pb.ModelInferRequest, context: Context
    ) -> pb.ModelInferResponse:
        started = time.perf_counter()
        call = Call.of(context, "ModelInfer")
        name, ref = request.model_name, request.model_version or None
        caller_known = False  # until authenticated, the model name is anyone's text
        try:
            guard = self.resources.guard
            principal = await guard.authenticate(call.scope)
            caller_known = True
            if not name:
                raise _no_model_name("model_name")
            guard.authorize(principal, "predict", name)
            request_context = RequestContext(
                request_id=call.request_id,
                protocol=PROTOCOL,
                principal=principal,
                client=call.client,
                patient_id=call.patient,
                site=call.site,
                id_time_us=call.made,
            )
            plane = self.resources.plane
            body, binary = codec.decode_request(request)
            model = await plane.model(name, ref, request_context)  # a canary split may choose
            try:
                X = oip_v2.parse_infer_request(model, body, binary)
                selected = oip_v2.requested_outputs(model, body)
            except InvalidRequestError as exc:
                raise codec.in_grpc_terms(exc, request) from exc
            outputs, _ = await plane.serve(model, X, request_context, PROTOCOL, started)
            response = codec.encode_response(model, outputs, request, selected)
        except MedserveError as exc:
            await self._refuse_infer(context, call, exc, name, ref, caller_known)
        except Exception:
            log.exception("prediction failed (request %s)", call.request_id)
            internal = InternalError("internal error while predicting")
            await self._refuse_infer(context, call, internal, name, ref, caller_known)
        context.set_trailing_metadata((("x-request-id", call.request_id),))
        return response

    async def _refuse_infer(
        self,
        context: Context,
        call: Call,
        exc: MedserveError,
        name: str,
        ref: str | None,
        caller_known: bool,
    ) -> NoReturn:
        """The observe step of an error answer (metrics, audit), then the answer."""
        status = status_for(exc)
        code = exc.code
        if caller_known:
            model, version = stored_names(self.resources.plane.manager, name, ref)
        else:  # nothing stored names what an unauthenticated call said
            model, version = UNNAMED, None
            if isinstance(exc, AuthenticationError):  # which: no credential, or a bad one
                code = auth_failure_reason(call.scope["headers"])
        metrics.record_error(model, version or "production", PROTOCOL, status, exc.code)
        try:
            self.resources.plane.refused(
                RefusalEvent(
                    request_id=call.request_id,
                    protocol=PROTOCOL,
                    model=model,
                    ref=version,
                    status=status,
                    code=code,
                    principal=call.principal,
                    client=call.client,
                    patient_id=call.patient,
                    method=METHOD,
                    path=rpc_path(call.rpc),
                    id_time_us=call.made,
                )
            )
        except MedserveError as unrecorded:  # fail closed: the trail cannot take it
            exc, status = unrecorded, status_for(unrecorded)
        await _abort(context, call, exc, status)


def _no_model_name(field: str) -> InvalidRequestError:
    message = "a model name is required"
    return InvalidRequestError(
        f"{field}: {message}", details=[{"field": field, "rule": "required", "message": message}]
    )


async def _abort(context: Context, call: Call, exc: MedserveError, status: int) -> NoReturn:
    """Answer with the error's status, message and trailers (raises, as ``abort`` does)."""
    metadata = (("x-request-id", call.request_id), *trailers(exc, status))
    message = bounded_message(exc.message)  # the same text as the trailers' body
    await context.abort(grpc_code(status), message, trailing_metadata=metadata)
