"""Python SDK for a medserve server: ``Client`` (blocking) and ``AsyncClient`` over httpx.

Both keep one connection pool open (keep-alive), so create one client and reuse it; both are
context managers. Server errors come back as typed exceptions carrying the server's message,
stable ``code``, ``details`` and HTTP status, so callers can branch on the kind of failure
without parsing text::

    from medserve.faces.client import Client, ValidationError

    with Client("http://127.0.0.1:8000", api_key="msk_...") as client:
        result = client.predict("breast-cancer", [{"mean radius": 14.1, ...}])
        print(result.predictions[0].label, result.predictions[0].probabilities)

        reply = client.infer("breast-cancer", X.astype("float32"))  # X: (n, 30) array
        probabilities = reply.as_numpy("probabilities")  # shape (n, 2)

        try:
            client.predict("breast-cancer", [{"mean radius": "big"}])
        except ValidationError as err:
            for problem in err.problems:  # {"row", "field", "rule", "message"}
                print(problem["row"], problem["field"], problem["rule"])

    async with AsyncClient("http://127.0.0.1:8000") as client:
        result = await client.predict("diabetes-progression", rows, version="staging")

This module depends on httpx, numpy and orjson only: it never imports the server.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Generic, Self, TypeVar
from urllib.parse import quote

import httpx
import numpy as np
import orjson

from medserve import __version__

__all__ = [
    "AliasEvent",
    "AsyncClient",
    "BadRequest",
    "Client",
    "Conflict",
    "InferResponse",
    "MedserveClientError",
    "MedserveConnectionError",
    "ModelInfo",
    "ModelMetadata",
    "ModelVersionInfo",
    "NotFound",
    "OutputTensor",
    "PermissionDenied",
    "PredictResponse",
    "Prediction",
    "ServerError",
    "ServerMetadata",
    "TensorSpec",
    "Unauthorized",
    "Unavailable",
    "ValidationError",
]

T = TypeVar("T")
Version = int | str | None
JSON_CONTENT = {"Content-Type": "application/json"}


# -- errors ---------------------------------------------------------------------------------
class MedserveClientError(Exception):
    """Base of every error this SDK raises; ``status`` is None when no HTTP answer came back."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        details: list[dict[str, Any]] | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.details: list[dict[str, Any]] = details or []
        self.request_id = request_id  # the server's X-Request-ID: quote it when reporting

    def __str__(self) -> str:
        where = f"{self.status} " if self.status is not None else ""
        code = f" [{self.code}]" if self.code else ""
        return f"{where}{self.message}{code}"


class MedserveConnectionError(MedserveClientError):
    """The server could not be reached, or did not answer in time."""


class BadRequest(MedserveClientError):  # noqa: N818 (HTTP-status names)
    """400, 413 or 415: the request itself was malformed, too large or of the wrong type."""


class ValidationError(BadRequest):
    """422: input rows broke the model's signature; ``problems`` lists each one."""

    @property
    def problems(self) -> list[dict[str, Any]]:
        """One ``{"row", "field", "rule", "message"}`` per problem, as the server found them."""
        return self.details


class Unauthorized(MedserveClientError):  # noqa: N818 (HTTP-status names)
    """401: no credential, or one the server does not accept."""


class PermissionDenied(MedserveClientError):  # noqa: N818 (HTTP-status names)
    """403: the credential is valid but may not do this."""


class NotFound(MedserveClientError):  # noqa: N818 (HTTP-status names)
    """404: unknown model, version or alias (the message says which)."""


class Conflict(MedserveClientError):  # noqa: N818 (HTTP-status names)
    """409: the thing being created exists already."""


class ServerError(MedserveClientError):
    """5xx: the server failed; the request may succeed later."""


class Unavailable(ServerError):  # noqa: N818 (HTTP-status names)
    """503: the model (or the server) cannot serve right now, e.g. it failed to load."""


_ERROR_BY_STATUS: dict[int, type[MedserveClientError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: BadRequest,
    415: BadRequest,
    422: ValidationError,
    503: Unavailable,
}


def error_from_response(response: httpx.Response) -> MedserveClientError:
    """The typed exception for a non-2xx answer, keeping the server's message, code and details."""
    status = response.status_code
    message, code, details = f"HTTP {status} {response.reason_phrase}".strip(), None, []
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
        text = response.text.strip()
        if text:
            message = text[:500]
    if isinstance(body, dict):
        if isinstance(body.get("error"), str):
            message = body["error"]
        elif isinstance(body.get("detail"), str):
            message = body["detail"]
        code = body.get("code") if isinstance(body.get("code"), str) else None
        raw_details = body.get("details")
        if isinstance(raw_details, list):
            details = [d for d in raw_details if isinstance(d, dict)]
    cls = _ERROR_BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else MedserveClientError
    return cls(
        message,
        status=status,
        code=code,
        details=details,
        request_id=response.headers.get("x-request-id"),
    )


# -- response types -------------------------------------------------------------------------
@dataclass(frozen=True)
class Prediction:
    """One row: ``label`` and ``probabilities`` for a classifier, ``value`` for a regressor."""

    label: str | int | None = None
    probabilities: dict[str, float] | None = None
    value: float | None = None


@dataclass(frozen=True)
class PredictResponse:
    """``request_id`` is medserve's id of the call: row ``i``'s prediction id is
    ``f"{request_id}-{i}"``, which outcomes are posted against (``Client.outcomes``)."""

    model: str
    version: int
    predictions: list[Prediction]
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    request_id: str | None = None

    @property
    def prediction_ids(self) -> list[str]:
        """Each row's prediction id, for posting its outcome later."""
        if self.request_id is None:  # a response built by hand, or a server that sent no id
            raise MedserveClientError(
                "this response carries no request id (X-Request-ID): its predictions have no "
                "ids to post outcomes against"
            )
        return [f"{self.request_id}-{i}" for i in range(len(self.predictions))]

    @property
    def labels(self) -> list[str | int | None]:
        return [p.label for p in self.predictions]

    @property
    def values(self) -> list[float | None]:
        return [p.value for p in self.predictions]

    @classmethod
    def from_json(cls, body: dict[str, Any], request_id: str | None = None) -> PredictResponse:
        predictions = [
            Prediction(
                label=p.get("label"), probabilities=p.get("probabilities"), value=p.get("value")
            )
            for p in body["predictions"]
        ]
        rid = body.get("request_id") or request_id
        return cls(body["model"], int(body["version"]), predictions, body, rid)


@dataclass(frozen=True)
class Explanation:
    """One row's explanation: ``base_value + sum(attributions) == prediction``; ``top`` are the
    largest contributions in plain words."""

    base_value: float
    prediction: float
    attributions: dict[str, float]
    top: list[str]

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Explanation:
        return cls(
            float(body["base_value"]),
            float(body["prediction"]),
            {str(k): float(v) for k, v in body["attributions"].items()},
            [str(s) for s in body.get("top", [])],
        )


@dataclass(frozen=True)
class ExplainResponse:
    model: str
    version: int
    method: str
    target: str | None
    explanations: list[Explanation]
    request_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, body: dict[str, Any], request_id: str | None = None) -> ExplainResponse:
        return cls(
            body["model"],
            int(body["version"]),
            str(body.get("method", "")),
            body.get("target"),
            [Explanation.from_json(e) for e in body["explanations"]],
            request_id,
            body,
        )


@dataclass(frozen=True)
class OutcomesResult:
    """``matched[i]``: how many predictions item ``i`` labelled; ``unmatched``: the items that
    matched no prediction (yet)."""

    matched: list[int]
    labelled: int
    unmatched: list[int]
    request_id: str | None = None

    @classmethod
    def from_json(cls, body: dict[str, Any], request_id: str | None = None) -> OutcomesResult:
        return cls(
            [int(n) for n in body["matched"]],
            int(body["labelled"]),
            [int(i) for i in body["unmatched"]],
            request_id,
        )


@dataclass(frozen=True)
class ModelCard:
    """A version's model card; ``raw`` holds every section and HTI-1 attribute."""

    model: str
    version: int
    complete: bool
    missing: list[str]
    problems: list[str]
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def hti1(self) -> dict[str, Any]:
        """The 31 HTI-1 source attributes: ``{id: {label, value, source, filled}}``."""
        found: dict[str, Any] = self.raw.get("hti1_source_attributes", {})
        return found

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ModelCard:
        return cls(
            body["model"],
            int(body["version"]),
            bool(body["complete"]),
            list(body.get("missing", [])),
            list(body.get("problems", [])),
            body,
        )


@dataclass(frozen=True)
class Evaluation:
    """One stored evaluation of a version (``kind``: test, external or local)."""

    kind: str
    dataset_name: str
    dataset_sha256: str
    metrics: dict[str, Any]
    created_at: datetime | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def metric(self, name: str, statistic: str = "value") -> float | None:
        """``metric("auroc")``, ``metric("auroc", "ci_low")``; None when not reported."""
        value = (self.metrics.get(name) or {}).get(statistic)
        return None if value is None else float(value)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Evaluation:
        result = body.get("result") or {}
        return cls(
            str(body.get("kind", "")),
            str(body.get("dataset_name", "")),
            str(body.get("dataset_sha256", "")),
            dict(result.get("metrics") or {}),
            _when(body.get("created_at")),
            body,
        )


@dataclass(frozen=True)
class GateProblem:
    message: str
    fix: str | None = None


@dataclass(frozen=True)
class GateResult:
    """Whether a version may become production; if not, every problem with its fix."""

    model: str
    version: int
    passed: bool
    problems: list[GateProblem]

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> GateResult:
        fixes = list(body.get("fixes") or [])
        problems = [
            GateProblem(str(p), fixes[i] if i < len(fixes) else None)
            for i, p in enumerate(body.get("problems", []))
        ]
        return cls(body["model"], int(body["version"]), bool(body["passed"]), problems)


_NUMPY_BY_DATATYPE: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": object,
}


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    data: list[Any]
    parameters: dict[str, Any] = field(default_factory=dict)

    def as_numpy(self) -> np.ndarray:
        """The data with the tensor's datatype and shape (BYTES: an object array of str)."""
        dtype = _NUMPY_BY_DATATYPE.get(self.datatype)
        if dtype is None:
            raise ValueError(f"output {self.name!r} has unknown datatype {self.datatype!r}")
        data = (
            [math.nan if v is None else v for v in self.data]
            if dtype in (np.float32, np.float64)
            else self.data
        )
        return np.asarray(data, dtype=dtype).reshape(self.shape)


@dataclass(frozen=True)
class InferResponse:
    model_name: str
    model_version: str | None
    outputs: list[OutputTensor]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    request_id: str | None = None  # medserve's id of the call (X-Request-ID)

    def output(self, name: str) -> OutputTensor:
        for tensor in self.outputs:
            if tensor.name == name:
                return tensor
        available = ", ".join(t.name for t in self.outputs) or "none"
        raise KeyError(f"no output named {name!r} (outputs: {available})")

    def as_numpy(self, name: str) -> np.ndarray:
        return self.output(name).as_numpy()

    @classmethod
    def from_json(cls, body: dict[str, Any], request_id: str | None = None) -> InferResponse:
        outputs = [
            OutputTensor(
                name=o["name"],
                datatype=o["datatype"],
                shape=[int(d) for d in o["shape"]],
                data=o.get("data", []),
                parameters=o.get("parameters") or {},
            )
            for o in body.get("outputs", [])
        ]
        version = body.get("model_version")
        return cls(
            model_name=body["model_name"],
            model_version=None if version is None else str(version),
            outputs=outputs,
            id=body.get("id"),
            parameters=body.get("parameters") or {},
            request_id=request_id,
        )


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelMetadata:
    """``GET /v2/models/{name}[/versions/{v}]``; ``parameters``: task, class labels, aliases."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def feature_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ModelMetadata:
        def specs(items: list[dict[str, Any]]) -> list[TensorSpec]:
            return [
                TensorSpec(
                    t["name"], t["datatype"], list(t.get("shape", [])), t.get("parameters") or {}
                )
                for t in items
            ]

        return cls(
            name=body["name"],
            versions=[str(v) for v in body.get("versions", [])],
            platform=body.get("platform", ""),
            inputs=specs(body.get("inputs", [])),
            outputs=specs(body.get("outputs", [])),
            parameters=body.get("parameters") or {},
        )


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: list[str]


def _when(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


@dataclass(frozen=True)
class ModelVersionInfo:
    model_name: str
    version: int
    runtime: str
    flavor: str
    source_flavor: str
    artifact_sha256: str
    aliases: list[str]
    description: str
    tags: dict[str, str]
    signature: dict[str, Any]
    created_by: str
    created_at: datetime | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ModelVersionInfo:
        return cls(
            model_name=body["model_name"],
            version=int(body["version"]),
            runtime=body.get("runtime", ""),
            flavor=body.get("flavor", ""),
            source_flavor=body.get("source_flavor", ""),
            artifact_sha256=body.get("artifact_sha256", ""),
            aliases=list(body.get("aliases", [])),
            description=body.get("description", ""),
            tags=dict(body.get("tags") or {}),
            signature=dict(body.get("signature") or {}),
            created_by=body.get("created_by", ""),
            created_at=_when(body.get("created_at")),
            raw=body,
        )


@dataclass(frozen=True)
class ModelInfo:
    """A registered model; ``versions`` is filled by ``model(name)``, empty in ``models()``."""

    name: str
    description: str
    tags: dict[str, str]
    aliases: dict[str, int]
    created_by: str
    created_at: datetime | None
    updated_at: datetime | None
    versions: list[ModelVersionInfo] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ModelInfo:
        return cls(
            name=body["name"],
            description=body.get("description", ""),
            tags=dict(body.get("tags") or {}),
            aliases={str(k): int(v) for k, v in (body.get("aliases") or {}).items()},
            created_by=body.get("created_by", ""),
            created_at=_when(body.get("created_at")),
            updated_at=_when(body.get("updated_at")),
            versions=[ModelVersionInfo.from_json(v) for v in body.get("versions", [])],
            raw=body,
        )


@dataclass(frozen=True)
class AliasEvent:
    """An alias move: set (``from_version`` None), moved, or deleted (``to_version`` None)."""

    id: int
    model_name: str
    alias: str
    from_version: int | None
    to_version: int | None
    actor: str
    reason: str
    at: datetime | None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> AliasEvent:
        return cls(
            id=int(body["id"]),
            model_name=body["model_name"],
            alias=body["alias"],
            from_version=body.get("from_version"),
            to_version=body.get("to_version"),
            actor=body.get("actor", ""),
            reason=body.get("reason", ""),
            at=_when(body.get("at")),
        )


# -- request encoding -----------------------------------------------------------------------
def _array_datatype(array: np.ndarray) -> tuple[str, np.ndarray]:
    """The v2 datatype for an array, and the array converted to what that datatype holds."""
    kind = array.dtype.kind
    if kind == "b":
        return "BOOL", array
    if kind in "iu":
        return "INT64", array.astype(np.int64, copy=False)
    if kind == "f":
        if array.dtype == np.float32:
            return "FP32", array
        return "FP64", array.astype(np.float64, copy=False)
    if kind in "USO":
        return "BYTES", array
    raise TypeError(f"arrays of dtype {array.dtype} cannot be sent as a v2 tensor")


def _as_array(values: Any) -> np.ndarray:
    """An array from a column; lists of numbers with ``None`` gaps become floats with NaN."""
    if isinstance(values, np.ndarray):
        return values
    array = np.asarray(values)
    if array.dtype == object and all(
        v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in array.ravel()
    ):
        array = np.asarray([math.nan if v is None else v for v in array.ravel()], dtype=np.float64)
    return array


def _tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    datatype, converted = _array_datatype(array)
    data = converted.ravel().tolist()
    if datatype == "BYTES":
        data = [v.decode() if isinstance(v, bytes) else str(v) for v in data]
    return {"name": name, "shape": list(converted.shape), "datatype": datatype, "data": data}


def encode_inputs(inputs: Any, *, tensor_name: str = "input") -> list[dict[str, Any]]:
    """v2 ``inputs`` from an array (one ``[n, F]`` tensor), a mapping feature -> column (one
    tensor per feature) or a list of ready-made v2 input objects (passed through unchanged)."""
    if isinstance(inputs, np.ndarray):
        return [_tensor(tensor_name, inputs)]
    if isinstance(inputs, Mapping):
        return [_tensor(str(name), _as_array(values)) for name, values in inputs.items()]
    if isinstance(inputs, Sequence) and not isinstance(inputs, str | bytes):
        items = list(inputs)
        if items and all(isinstance(item, Mapping) and "datatype" in item for item in items):
            return [dict(item) for item in items]
    raise TypeError(
        "inputs must be a numpy array, a mapping feature -> values, "
        "or a list of v2 input objects {name, shape, datatype, data}"
    )


def build_infer_body(
    inputs: Any,
    *,
    outputs: Sequence[str] | None = None,
    request_id: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": encode_inputs(inputs)}
    if request_id is not None:
        body["id"] = request_id
    if outputs is not None:
        body["outputs"] = [{"name": name} for name in outputs]
    if parameters:
        body["parameters"] = dict(parameters)
    return body


def _records(records: Any) -> list[Any]:
    """Rows as a list; a pandas DataFrame is accepted (its NaN cells are sent as null)."""
    to_dict = getattr(records, "to_dict", None)
    if callable(to_dict) and not isinstance(records, Mapping):
        return list(to_dict(orient="records"))
    if isinstance(records, Mapping):
        return [records]
    return list(records)


def _default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot send a value of type {type(value).__name__} as JSON")


def _dumps(body: Any) -> bytes:
    # orjson writes NaN as null, which the server reads as a missing value (never invalid JSON).
    return orjson.dumps(body, default=_default, option=orjson.OPT_SERIALIZE_NUMPY)


def _segment(value: str | int) -> str:
    return quote(str(value), safe="")


def _model_path(prefix: str, name: str, version: Version) -> str:
    path = f"{prefix}/models/{_segment(name)}"
    if version is not None:
        path += f"/versions/{_segment(version)}"
    return path


# -- one description of every call, shared by both clients -----------------------------------
@dataclass(frozen=True)
class _Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    body: bytes | None = None
    params: dict[str, str] | None = None
    ok_statuses: tuple[int, ...] = ()  # non-2xx statuses that are answers, not errors


def _json(response: httpx.Response) -> Any:
    return orjson.loads(response.content)


def _flag(response: httpx.Response) -> bool:
    return response.is_success


def _request_id(response: httpx.Response) -> str | None:
    """medserve's id of the call (the response's ``X-Request-ID``), when it sent one."""
    value: str | None = response.headers.get("x-request-id")
    return value


class _Calls:
    """Builds each endpoint's request and parser once; the two clients only send them."""

    @staticmethod
    def live() -> _Call[bool]:
        return _Call("GET", "/v2/health/live", _flag, ok_statuses=(503,))

    @staticmethod
    def ready() -> _Call[bool]:
        return _Call("GET", "/v2/health/ready", _flag, ok_statuses=(503,))

    @staticmethod
    def model_ready(name: str, version: Version) -> _Call[bool]:
        return _Call("GET", _model_path("/v2", name, version) + "/ready", _flag, ok_statuses=(503,))

    @staticmethod
    def server_metadata() -> _Call[ServerMetadata]:
        def parse(r: httpx.Response) -> ServerMetadata:
            body = _json(r)
            return ServerMetadata(body["name"], body["version"], list(body.get("extensions", [])))

        return _Call("GET", "/v2", parse)

    @staticmethod
    def model_metadata(name: str, version: Version) -> _Call[ModelMetadata]:
        return _Call(
            "GET", _model_path("/v2", name, version), lambda r: ModelMetadata.from_json(_json(r))
        )

    @staticmethod
    def infer(name: str, version: Version, body: dict[str, Any]) -> _Call[InferResponse]:
        return _Call(
            "POST",
            _model_path("/v2", name, version) + "/infer",
            lambda r: InferResponse.from_json(_json(r), _request_id(r)),
            body=_dumps(body),
        )

    @staticmethod
    def predict(name: str, version: Version, records: Any) -> _Call[PredictResponse]:
        return _Call(
            "POST",
            _model_path("/v1", name, version) + "/predict",
            lambda r: PredictResponse.from_json(_json(r), _request_id(r)),
            body=_dumps({"instances": _records(records)}),
        )

    @staticmethod
    def explain(
        name: str, version: Version, records: Any, target: str | None
    ) -> _Call[ExplainResponse]:
        body: dict[str, Any] = {"instances": _records(records)}
        if target is not None:
            body["class"] = target
        return _Call(
            "POST",
            _model_path("/v1", name, version) + "/explain",
            lambda r: ExplainResponse.from_json(_json(r), _request_id(r)),
            body=_dumps(body),
        )

    @staticmethod
    def outcomes(items: Sequence[Mapping[str, Any]]) -> _Call[OutcomesResult]:
        return _Call(
            "POST",
            "/v1/outcomes",
            lambda r: OutcomesResult.from_json(_json(r), _request_id(r)),
            body=_dumps({"outcomes": [dict(item) for item in items]}),
        )

    @staticmethod
    def card(name: str, version: int | str) -> _Call[ModelCard]:
        return _Call(
            "GET",
            _model_path("/v1", name, version) + "/card",
            lambda r: ModelCard.from_json(_json(r)),
        )

    @staticmethod
    def evaluations(name: str, version: int | str) -> _Call[list[Evaluation]]:
        return _Call(
            "GET",
            _model_path("/v1", name, version) + "/evaluations",
            lambda r: [Evaluation.from_json(e) for e in _json(r)["evaluations"]],
        )

    @staticmethod
    def gate(name: str, version: int | str) -> _Call[GateResult]:
        return _Call(
            "GET",
            _model_path("/v1", name, version) + "/gate",
            lambda r: GateResult.from_json(_json(r)),
        )

    @staticmethod
    def models_page(
        search: str | None, page_token: str | None
    ) -> _Call[tuple[list[ModelInfo], str | None]]:
        params = {"page_size": "100"}
        if search:
            params["search"] = search
        if page_token:
            params["page_token"] = page_token

        def parse(r: httpx.Response) -> tuple[list[ModelInfo], str | None]:
            body = _json(r)
            return [ModelInfo.from_json(m) for m in body["models"]], body.get("next_page_token")

        return _Call("GET", "/v1/models", parse, params=params)

    @staticmethod
    def model(name: str) -> _Call[ModelInfo]:
        return _Call("GET", f"/v1/models/{_segment(name)}", lambda r: ModelInfo.from_json(_json(r)))

    @staticmethod
    def model_version(name: str, version: int | str) -> _Call[ModelVersionInfo]:
        return _Call(
            "GET",
            _model_path("/v1", name, version),
            lambda r: ModelVersionInfo.from_json(_json(r)),
        )

    @staticmethod
    def alias_history(name: str, alias: str | None) -> _Call[list[AliasEvent]]:
        return _Call(
            "GET",
            f"/v1/models/{_segment(name)}/aliases/history",
            lambda r: [AliasEvent.from_json(e) for e in _json(r)["events"]],
            params={"alias": alias} if alias else None,
        )


def _headers(api_key: str | None) -> dict[str, str]:
    headers = {
        "Accept": "application/json",
        "User-Agent": f"medserve-client/{__version__}",
    }
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _body_headers(call: _Call[Any]) -> dict[str, str] | None:
    return JSON_CONTENT if call.body is not None else None


def _finish(call: _Call[T], response: httpx.Response) -> T:
    if response.is_success or response.status_code in call.ok_statuses:
        try:
            return call.parse(response)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise MedserveClientError(
                f"unexpected response from {call.method} {call.path}: {exc}",
                status=response.status_code,
            ) from exc
    raise error_from_response(response)


def _connection_error(call: _Call[Any], exc: httpx.TransportError) -> MedserveConnectionError:
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
    return MedserveConnectionError(f"{call.method} {call.path} {kind}: {exc}")


class Client:
    """Blocking client; one instance holds a keep-alive connection pool, so reuse it.

    ``transport`` is any ``httpx.BaseTransport`` (e.g. to tune retries or route through a proxy).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    def _send(self, call: _Call[T]) -> T:
        try:
            response = self._http.request(
                call.method,
                call.path,
                content=call.body,
                params=call.params,
                headers=_body_headers(call),
            )
        except httpx.TransportError as exc:
            raise _connection_error(call, exc) from exc
        return _finish(call, response)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # health and metadata
    def is_live(self) -> bool:
        return self._send(_Calls.live())

    def is_ready(self) -> bool:
        """True once the server has loaded what it serves; False (not an error) on 503."""
        return self._send(_Calls.ready())

    def is_model_ready(self, name: str, version: Version = None) -> bool:
        """False when the model exists but cannot serve (503); ``NotFound`` if it does not exist."""
        return self._send(_Calls.model_ready(name, version))

    def server_metadata(self) -> ServerMetadata:
        return self._send(_Calls.server_metadata())

    def model_metadata(self, name: str, version: Version = None) -> ModelMetadata:
        return self._send(_Calls.model_metadata(name, version))

    # prediction
    def predict(self, name: str, records: Any, *, version: Version = None) -> PredictResponse:
        """Records API: ``records`` is a list of ``{feature: value}`` rows (or a DataFrame).

        ``version`` is a number or an alias; None means the ``production`` alias.
        """
        return self._send(_Calls.predict(name, version, records))

    def infer(
        self,
        name: str,
        inputs: Any,
        *,
        version: Version = None,
        outputs: Sequence[str] | None = None,
        request_id: str | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> InferResponse:
        """Open Inference Protocol v2: ``inputs`` is an ``(n, F)`` array (one tensor, columns in
        the model's feature order), a mapping feature -> column, or raw v2 input objects."""
        body = build_infer_body(
            inputs, outputs=outputs, request_id=request_id, parameters=parameters
        )
        return self._send(_Calls.infer(name, version, body))

    def explain(
        self, name: str, records: Any, *, version: Version = None, target: str | None = None
    ) -> ExplainResponse:
        """Per-feature attributions of each row (``target``: the class explained)."""
        return self._send(_Calls.explain(name, version, records, target))

    def outcomes(self, items: Sequence[Mapping[str, Any]]) -> OutcomesResult:
        """Attach ground truth: ``{"prediction_id": f"{response.request_id}-{row}",
        "outcome": ...}`` items, or ``{"patient_id", "model", "start", "end", "outcome"}``."""
        return self._send(_Calls.outcomes(items))

    # governance
    def card(self, name: str, version: int | str = "production") -> ModelCard:
        return self._send(_Calls.card(name, version))

    def evaluations(self, name: str, version: int | str = "production") -> list[Evaluation]:
        """The version's stored evaluations, newest first."""
        return self._send(_Calls.evaluations(name, version))

    def gate(self, name: str, version: int | str) -> GateResult:
        """What stands between a version and production (each problem with its fix)."""
        return self._send(_Calls.gate(name, version))

    # registry
    def models(self, search: str | None = None) -> list[ModelInfo]:
        """Every registered model (all pages), or those whose name contains ``search``."""
        found: list[ModelInfo] = []
        token: str | None = None
        while True:
            page, token = self._send(_Calls.models_page(search, token))
            found.extend(page)
            if not token:
                return found

    def model(self, name: str) -> ModelInfo:
        return self._send(_Calls.model(name))

    def model_version(self, name: str, version: int | str) -> ModelVersionInfo:
        return self._send(_Calls.model_version(name, version))

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasEvent]:
        return self._send(_Calls.alias_history(name, alias))


class AsyncClient:
    """The same API as ``Client``, awaitable; safe to share between concurrent tasks."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    async def _send(self, call: _Call[T]) -> T:
        try:
            response = await self._http.request(
                call.method,
                call.path,
                content=call.body,
                params=call.params,
                headers=_body_headers(call),
            )
        except httpx.TransportError as exc:
            raise _connection_error(call, exc) from exc
        return _finish(call, response)

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def is_live(self) -> bool:
        return await self._send(_Calls.live())

    async def is_ready(self) -> bool:
        return await self._send(_Calls.ready())

    async def is_model_ready(self, name: str, version: Version = None) -> bool:
        return await self._send(_Calls.model_ready(name, version))

    async def server_metadata(self) -> ServerMetadata:
        return await self._send(_Calls.server_metadata())

    async def model_metadata(self, name: str, version: Version = None) -> ModelMetadata:
        return await self._send(_Calls.model_metadata(name, version))

    async def predict(self, name: str, records: Any, *, version: Version = None) -> PredictResponse:
        return await self._send(_Calls.predict(name, version, records))

    async def infer(
        self,
        name: str,
        inputs: Any,
        *,
        version: Version = None,
        outputs: Sequence[str] | None = None,
        request_id: str | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> InferResponse:
        body = build_infer_body(
            inputs, outputs=outputs, request_id=request_id, parameters=parameters
        )
        return await self._send(_Calls.infer(name, version, body))

    async def explain(
        self, name: str, records: Any, *, version: Version = None, target: str | None = None
    ) -> ExplainResponse:
        return await self._send(_Calls.explain(name, version, records, target))

    async def outcomes(self, items: Sequence[Mapping[str, Any]]) -> OutcomesResult:
        return await self._send(_Calls.outcomes(items))

    async def card(self, name: str, version: int | str = "production") -> ModelCard:
        return await self._send(_Calls.card(name, version))

    async def evaluations(self, name: str, version: int | str = "production") -> list[Evaluation]:
        return await self._send(_Calls.evaluations(name, version))

    async def gate(self, name: str, version: int | str) -> GateResult:
        return await self._send(_Calls.gate(name, version))

    async def models(self, search: str | None = None) -> list[ModelInfo]:
        found: list[ModelInfo] = []
        token: str | None = None
        while True:
            page, token = await self._send(_Calls.models_page(search, token))
            found.extend(page)
            if not token:
                return found

    async def model(self, name: str) -> ModelInfo:
        return await self._send(_Calls.model(name))

    async def model_version(self, name: str, version: int | str) -> ModelVersionInfo:
        return await self._send(_Calls.model_version(name, version))

    async def alias_history(self, name: str, alias: str | None = None) -> list[AliasEvent]:
        return await self._send(_Calls.alias_history(name, alias))
