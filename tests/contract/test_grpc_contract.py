"""The Open Inference Protocol v2 over gRPC against a real ``medserve serve --grpc-port`` process.

The kserve SDK's ``InferenceGRPCClient`` (unmodified) makes the calls a KServe user makes; the
protocol's own stub (medserve's generated module, the same descriptor as kserve's) makes the
ones no SDK exposes (typed per-feature tensors, a malformed message) and reads the trailers.
Every answer is compared with what REST answers on the same server for the same rows; every
refusal with the status and problems REST gives. Triton's client is in
``test_grpc_tritonclient.py`` (its protocol module cannot share a process with kserve's).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import pytest
from google.rpc import error_details_pb2, status_pb2
from kserve import InferenceGRPCClient, InferInput, InferRequest
from kserve.protocol.infer_type import RequestedOutput
from tests.support import (
    ServerProcess,
    auth,
    create_key,
    free_port,
    start_server,
    wait_for,
    writable_demo_home,
)

from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.core.store.monitoring import MonitoringStore
from medserve.features.security.keys import SecurityStore
from medserve.serving.protocols.grpc_v2 import grpc_predict_v2_pb2 as pb
from medserve.serving.protocols.grpc_v2.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

MODEL = "breast-cancer"
RF = "breast-cancer-rf"  # assigned to tenant "onc" below
BROKEN = "diabetes-progression"  # its artifact is corrupted below: it cannot load
INFER_PATH = "POST /inference.GRPCInferenceService/ModelInfer"  # how the trail names the call


class GrpcServer:
    def __init__(self, server: ServerProcess, grpc_port: int, keys: dict[str, str]) -> None:
        self.server = server
        self.target = f"127.0.0.1:{grpc_port}"
        self.keys = keys  # role name -> token

    def metadata(self, who: str = "admin") -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.keys[who]}")]


@pytest.fixture(scope="module")
def grpc_server(demo_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcServer]:
    home, _ = writable_demo_home(demo_home, tmp_path_factory.mktemp("grpc") / "home")
    registry = Registry.open(Settings(home=home))
    try:
        registry.set_alias(MODEL, "staging", 1, actor="test")
        SecurityStore(registry.store.engine).set_model_tenant(  # type: ignore[attr-defined]
            RF, "onc", actor="test"
        )
        number = registry.store.get_alias(BROKEN, "production")
        sha = registry.store.get_version(BROKEN, number).artifact_sha256
        artifact = registry.artifacts.path(sha, verify=False)
    finally:
        registry.close()
    os.chmod(artifact, 0o644)
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    keys = {
        "app_one_model": create_key(home, ["app"], name="one-model", models=[MODEL]),
        "auditor": create_key(home, ["auditor"], name="auditor"),
        "limited": create_key(home, ["app"], name="limited", rate_limit=1),
        "tenant": create_key(home, ["app"], name="onc-app", tenant="onc"),
    }
    port = free_port()
    server = start_server(home, env={"MEDSERVE_GRPC_PORT": str(port)})
    keys["admin"] = server.headers["Authorization"].removeprefix("Bearer ")
    yield GrpcServer(server, port, keys)
    assert server.stop() == 0, server.log()  # a graceful stop: gRPC drained, writers closed


@pytest.fixture
async def kserve_client(grpc_server: GrpcServer) -> AsyncIterator[InferenceGRPCClient]:
    client = InferenceGRPCClient(grpc_server.target, timeout=30, retries=0)
    yield client
    await client.close()


@pytest.fixture
def stub(grpc_server: GrpcServer) -> Iterator[GRPCInferenceServiceStub]:
    with grpc.insecure_channel(grpc_server.target) as channel:
        yield GRPCInferenceServiceStub(channel)


# -- helpers ------------------------------------------------------------------------------------


def rest_infer(
    grpc_server: GrpcServer,
    name: str,
    X: np.ndarray,
    version: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """The REST answer for the same rows (as the admin, unless ``headers`` say who)."""
    where = f"/versions/{version}" if version else ""
    body = {
        "id": "rest-1",
        "inputs": [
            {
                "name": "input",
                "shape": list(X.shape),
                "datatype": "FP32",
                "data": X.ravel().tolist(),
            }
        ],
    }
    return httpx.post(
        f"{grpc_server.server.url}/v2/models/{name}{where}/infer",
        json=body,
        headers=headers or grpc_server.server.headers,
        timeout=30,
    )


def rest_outputs(answer: httpx.Response) -> dict[str, np.ndarray]:
    assert answer.status_code == 200, answer.text
    dtypes = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "BYTES": object}
    return {
        o["name"]: np.asarray(o["data"], dtype=dtypes[o["datatype"]]).reshape(o["shape"])
        for o in answer.json()["outputs"]
    }


def kserve_request(
    X: np.ndarray,
    version: str | None = None,
    *,
    binary: bool = True,
    parameters: dict[str, Any] | None = None,
    outputs: list[RequestedOutput] | None = None,
) -> InferRequest:
    tensor = InferInput(name="input", shape=list(X.shape), datatype="FP32")
    tensor.set_data_from_numpy(X, binary_data=binary)
    return InferRequest(
        model_name=MODEL,
        infer_inputs=[tensor],
        request_id="kserve-1",
        model_version=version,
        parameters=parameters,
        request_outputs=outputs,
    )


def grpc_outputs(response: Any) -> dict[str, np.ndarray]:
    return {o.name: np.asarray(o.as_numpy()) for o in response.outputs}


def assert_same_answer(grpc_answer: dict[str, np.ndarray], rest: dict[str, np.ndarray]) -> None:
    assert set(grpc_answer) == set(rest)
    np.testing.assert_array_equal(
        grpc_answer["probabilities"].astype(np.float32), rest["probabilities"]
    )
    labels = [v.decode() if isinstance(v, bytes) else str(v) for v in grpc_answer["label"].ravel()]
    assert labels == [str(v) for v in rest["label"].ravel()]


def refusal(call: Any) -> tuple[grpc.StatusCode, dict[str, Any], status_pb2.Status]:
    """What an error answer says: its code, the REST-shaped body and the rich status."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    trailers = dict(error.trailing_metadata() or ())
    body = orjson.loads(trailers["medserve-error-bin"])
    rich = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    assert rich.code == error.code().value[0]
    assert body["error"] == error.details() == rich.message
    return error.code(), body, rich


def reason_of(rich: status_pb2.Status) -> str:
    for detail in rich.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    raise AssertionError("no ErrorInfo in the status details")


def matrix_message(X: np.ndarray, name: str = MODEL, version: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=name, model_version=version, id="stub-1")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(X.shape))
    tensor.contents.fp32_contents.extend(X.ravel().tolist())
    return request


# -- health and metadata ------------------------------------------------------------------------


async def test_health_is_open_and_metadata_needs_a_credential(
    kserve_client: InferenceGRPCClient, grpc_server: GrpcServer
) -> None:
    assert await kserve_client.is_server_live() is True
    assert await kserve_client.is_server_ready() is True
    assert await kserve_client.is_model_ready(MODEL, headers=grpc_server.metadata()) is True
    with pytest.raises(grpc.RpcError) as caught:
        await kserve_client.is_model_ready(MODEL)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_metadata_matches_rest(stub: GRPCInferenceServiceStub, grpc_server: GrpcServer) -> None:
    server = stub.ServerMetadata(pb.ServerMetadataRequest(), metadata=grpc_server.metadata())
    rest = httpx.get(f"{grpc_server.server.url}/v2", headers=grpc_server.server.headers).json()
    assert (server.name, server.version, list(server.extensions)) == (
        rest["name"],
        rest["version"],
        rest["extensions"],
    )
    for version in ("", "1", "staging"):
        found = stub.ModelMetadata(
            pb.ModelMetadataRequest(name=MODEL, version=version), metadata=grpc_server.metadata()
        )
        where = f"/versions/{version}" if version else ""
        expected = httpx.get(
            f"{grpc_server.server.url}/v2/models/{MODEL}{where}", headers=grpc_server.server.headers
        ).json()
        assert found.name == expected["name"]
        assert list(found.versions) == expected["versions"]
        assert found.platform == expected["platform"]
        for got, want in ((found.inputs, expected["inputs"]), (found.outputs, expected["outputs"])):
            assert [(t.name, t.datatype, list(t.shape)) for t in got] == [
                (t["name"], t["datatype"], t["shape"]) for t in want
            ]


def test_model_ready_says_false_for_a_model_that_cannot_load(
    stub: GRPCInferenceServiceStub, grpc_server: GrpcServer
) -> None:
    ready = stub.ModelReady(pb.ModelReadyRequest(name=BROKEN), metadata=grpc_server.metadata())
    assert ready.ready is False
    code, body, _ = refusal(
        lambda: stub.ModelReady(
            pb.ModelReadyRequest(name="no-such"), metadata=grpc_server.metadata()
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert body["code"] == "model_not_found"


# -- inference: the same answers as REST --------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["raw_input_contents", "typed_contents"])
async def test_infer_equals_rest_for_the_same_rows(
    kserve_client: InferenceGRPCClient, grpc_server: GrpcServer, reference: Any, binary: bool
) -> None:
    X = reference.matrix(MODEL, 25)
    response = await kserve_client.infer(
        kserve_request(X, binary=binary), headers=grpc_server.metadata()
    )
    rest = rest_infer(grpc_server, MODEL, X)
    assert_same_answer(grpc_outputs(response), rest_outputs(rest))
    assert (response.model_name, response.model_version, response.id) == (MODEL, "1", "kserve-1")
    # the operating point REST names in every answer, as string parameters
    threshold = rest.json()["parameters"]["threshold"]
    assert float(response.parameters["threshold"].string_param) == threshold
    positive = rest.json()["parameters"]["positive_class"]
    assert response.parameters["positive_class"].string_param == positive
    # and both answers are right: a local fit of the demo estimator agrees
    expected = reference.probabilities(MODEL, X)
    np.testing.assert_allclose(grpc_outputs(response)["probabilities"], expected, atol=1e-5)


@pytest.mark.parametrize("version", ["1", "production", "staging", None])
async def test_versions_as_numbers_or_aliases_and_a_bare_name_means_production(
    kserve_client: InferenceGRPCClient, grpc_server: GrpcServer, reference: Any, version: str | None
) -> None:
    X = reference.matrix(MODEL, 3)
    response = await kserve_client.infer(kserve_request(X, version), headers=grpc_server.metadata())
    assert response.model_version == "1"
    assert_same_answer(
        grpc_outputs(response), rest_outputs(rest_infer(grpc_server, MODEL, X, version))
    )


def wire(request: InferRequest) -> pb.ModelInferRequest:
    """The message the kserve SDK sends for ``request``."""
    return pb.ModelInferRequest.FromString(request.to_grpc().SerializeToString())


async def test_raw_outputs_when_asked(
    kserve_client: InferenceGRPCClient,
    stub: GRPCInferenceServiceStub,
    grpc_server: GrpcServer,
    reference: Any,
) -> None:
    X = reference.matrix(MODEL, 4)
    typed = kserve_request(X, binary=False)  # typed contents in: typed contents out
    plain = stub.ModelInfer(wire(typed), metadata=grpc_server.metadata())
    assert len(plain.raw_output_contents) == 0
    assert all(tensor.HasField("contents") for tensor in plain.outputs)
    for asked in (
        kserve_request(X, binary=False, parameters={"binary_data_output": True}),
        kserve_request(X),  # raw inputs in: raw outputs out, as Triton answers
    ):
        packed = stub.ModelInfer(wire(asked), metadata=grpc_server.metadata())
        assert len(packed.raw_output_contents) == len(packed.outputs) == 2
        assert not any(tensor.HasField("contents") for tensor in packed.outputs)
        answer = await kserve_client.infer(asked, headers=grpc_server.metadata())
        assert_same_answer(grpc_outputs(answer), rest_outputs(rest_infer(grpc_server, MODEL, X)))
    # one requested output asking for binary data: only that output, raw
    only = kserve_request(
        X,
        binary=False,
        outputs=[RequestedOutput("probabilities", parameters={"binary_data": True})],
    )
    selected = stub.ModelInfer(wire(only), metadata=grpc_server.metadata())
    assert [t.name for t in selected.outputs] == ["probabilities"]
    decoded = np.frombuffer(selected.raw_output_contents[0], dtype="<f4").reshape(4, 2)
    np.testing.assert_array_equal(
        decoded, rest_outputs(rest_infer(grpc_server, MODEL, X))["probabilities"]
    )


def test_one_typed_tensor_per_feature(
    stub: GRPCInferenceServiceStub, grpc_server: GrpcServer, reference: Any
) -> None:
    X = reference.matrix(MODEL, 5)
    request = pb.ModelInferRequest(model_name=RF)
    for j, feature in enumerate(reference.models[MODEL].frame.columns):
        tensor = request.inputs.add(name=str(feature), datatype="FP32", shape=[5])
        tensor.contents.fp32_contents.extend(X[:, j].tolist())
    answer = stub.ModelInfer(request, metadata=grpc_server.metadata())
    tensor = next(t for t in answer.outputs if t.name == "probabilities")
    assert tensor.datatype == "FP32"
    probabilities = np.asarray(tensor.contents.fp32_contents, dtype=np.float32)
    rest = rest_outputs(rest_infer(grpc_server, RF, X))
    np.testing.assert_array_equal(probabilities.reshape(5, 2), rest["probabilities"])


# -- refusals: every status, the same problems as REST ------------------------------------------


def test_authentication_is_required(
    stub: GRPCInferenceServiceStub, grpc_server: GrpcServer, reference: Any
) -> None:
    request = matrix_message(reference.matrix(MODEL, 1))
    code, body, rich = refusal(lambda: stub.ModelInfer(request))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert body["code"] == reason_of(rich) == "unauthenticated"
    bad = [("authorization", "Bearer msk_not-a-real-key")]
    code, _, _ = refusal(lambda: stub.ModelInfer(request, metadata=bad))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _, _ = refusal(lambda: stub.ServerMetadata(pb.ServerMetadataRequest()))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    # x-api-key works as over REST
    key = [("x-api-key", grpc_server.keys["admin"])]
    assert stub.ModelInfer(request, metadata=key).model_name == MODEL


def test_roles_grants_and_tenants(
    stub: GRPCInferenceServiceStub, grpc_server: GrpcServer, reference: Any
) -> None:
    X = reference.matrix(MODEL, 1)
    for who, model in (("auditor", MODEL), ("app_one_model", RF), ("tenant", MODEL)):
        code, body, _ = refusal(
            lambda who=who, model=model: stub.ModelInfer(
                matrix_message(X, model), metadata=grpc_server.metadata(who)
            )
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED, who
        assert body["code"] == "permission_denied"
        rest = rest_infer(grpc_server, model, X, headers=auth(grpc_server.keys[who]))
        assert rest.status_code == 403
    # each may call what it is allowed to
    allowed = stub.ModelInfer(
        matrix_message(X, MODEL), metadata=grpc_server.metadata("app_one_model")
    )
    assert allowed.model_name == MODEL
    tenant = stub.ModelInfer(matrix_message(X, RF), metadata=grpc_server.metadata("tenant"))
    assert tenant.model_name == RF
    code, _, _ = refusal(
        lambda: stub.ModelMetadata(
            pb.ModelMetadataRequest(name=RF), metadata=grpc_server.metadata("app_one_model")
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    ("name", "version", "code"),
    [
        ("no-such-model", "", "model_not_found"),
        (MODEL, "99", "version_not_found"),
        (MODEL, "no-such-alias", "alias_not_found"),
    ],
)
def test_unknown_models_versions_and_aliases_are_not_found(
    stub: GRPCInferenceServiceStub,
    grpc_server: GrpcServer,
    reference: Any,
    name: str,
    version: str,
    code: str,
) -> None:
    X = reference.matrix(MODEL, 1)
    status, body, rich = refusal(
        lambda: stub.ModelInfer(matrix_message(X, name, version), metadata=grpc_server.metadata())
    )
    assert status == grpc.StatusCode.NOT_FOUND
    assert body["code"] == reason_of(rich) == code
    assert rest_infer(grpc_server, name, X, version or None).json()["code"] == code


def test_a_model_that_cannot_load_is_unavailable(
    stub: GRPCInferenceServiceStub, grpc_server: GrpcServer
) -> None:
    request = pb.ModelInferRequest(model_name=BROKEN)
    request.inputs.add(name="input", datatype="FP32", shape=[1, 10]).contents.fp32_contents.extend(
        [0.0] * 10
    )
    code, body, _ = refusal(lambda: stub.ModelInfer(request, metadata=grpc_server.metadata()))
    assert code == grpc.StatusCode.UNAVAILABLE
    rest = rest_infer(grpc_server, BROKEN, np.zeros((1, 10), dtype=np.float32))
    assert rest.status_code == 503
    assert body == rest.json()


def test_rate_limits_answer_resource_exhausted_with_retry_after(
    stub: GRPCInferenceServiceStub, grpc_server: GrpcServer, reference: Any
) -> None:
    request = matrix_message(reference.matrix(MODEL, 1))
    metadata = grpc_server.metadata("limited")  # 1 request per second

    def limited() -> grpc.RpcError | None:
        try:
            stub.ModelInfer(request, metadata=metadata)
        except grpc.RpcError as error:
            return error
        return None

    error = wait_for(limited, timeout_s=30, interval_s=0, what="the rate limit to refuse a call")
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers = dict(error.trailing_metadata())
    assert int(trailers["retry-after"]) >= 1
    assert orjson.loads(trailers["medserve-error-bin"])["code"] == "rate_limited"
    rich = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    retry = error_details_pb2.RetryInfo()
    assert any(detail.Unpack(retry) for detail in rich.details)
    assert retry.retry_delay.seconds >= 1


def test_validation_problems_are_rest_s_as_invalid_argument(
    stub: GRPCInferenceServiceStub, grpc_server: GrpcServer, reference: Any
) -> None:
    X = reference.matrix(MODEL, 3)
    X[1, 0] = -1e6  # far outside the signature's range
    X[2, 3] = 1e9
    rest = rest_infer(grpc_server, MODEL, X)
    assert rest.status_code == 422
    code, body, rich = refusal(
        lambda: stub.ModelInfer(matrix_message(X), metadata=grpc_server.metadata())
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert body == rest.json()  # the same message, code and every problem
    bad_request = error_details_pb2.BadRequest()
    assert any(detail.Unpack(bad_request) for detail in rich.details)
    problems = rest.json()["details"]
    assert [v.reason for v in bad_request.field_violations] == [p["rule"] for p in problems]
    assert [v.field for v in bad_request.field_violations] == [
        f"rows[{p['row']}].{p['field']}" for p in problems
    ]


def test_a_refusal_with_many_problems_still_arrives_as_invalid_argument(
    stub: GRPCInferenceServiceStub, grpc_server: GrpcServer, reference: Any
) -> None:
    """REST's 422 for a 200-row batch out of range carries 100 problems: more than a gRPC client
    accepts in trailers (8 KiB). The gRPC answer keeps REST's message and the first problems."""
    X = reference.matrix(MODEL, 200)
    X[:, :5] = 1e9
    rest = rest_infer(grpc_server, MODEL, X)
    assert rest.status_code == 422
    code, body, _ = refusal(
        lambda: stub.ModelInfer(matrix_message(X), metadata=grpc_server.metadata())
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert body["error"] == rest.json()["error"]
    kept = body["details"]
    assert 0 < len(kept) < len(rest.json()["details"])
    assert kept == rest.json()["details"][: len(kept)]


def test_malformed_tensors_name_the_grpc_field(
    stub: GRPCInferenceServiceStub, grpc_server: GrpcServer
) -> None:
    request = matrix_message(np.zeros((2, 3), dtype=np.float32))  # 3 columns, 30 expected
    request.inputs[0].shape[:] = [2, 30]
    code, body, _ = refusal(lambda: stub.ModelInfer(request, metadata=grpc_server.metadata()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert body["details"][0]["field"] == "inputs[0].contents.fp32_contents"
    assert body["details"][0]["rule"] == "shape"
    misplaced = pb.ModelInferRequest(model_name=MODEL)
    misplaced.inputs.add(
        name="input", datatype="FP32", shape=[1, 30]
    ).contents.fp64_contents.extend([0.0] * 30)
    code, body, _ = refusal(lambda: stub.ModelInfer(misplaced, metadata=grpc_server.metadata()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert body["details"][0]["field"] == "inputs[0].contents.fp64_contents"
    raw = pb.ModelInferRequest(model_name=MODEL, raw_input_contents=[b"\0" * 4, b"\0" * 4])
    raw.inputs.add(name="input", datatype="FP32", shape=[1, 30])
    code, body, _ = refusal(lambda: stub.ModelInfer(raw, metadata=grpc_server.metadata()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert body["details"][0]["field"] == "raw_input_contents"
    short = pb.ModelInferRequest(model_name=MODEL, raw_input_contents=[b"\0" * 8])
    short.inputs.add(name="input", datatype="FP32", shape=[1, 30])
    code, body, _ = refusal(lambda: stub.ModelInfer(short, metadata=grpc_server.metadata()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert body["details"][0]["field"] == "raw_input_contents[0]"
    nameless = matrix_message(np.zeros((1, 30), dtype=np.float32), name="")
    code, body, _ = refusal(lambda: stub.ModelInfer(nameless, metadata=grpc_server.metadata()))
    assert (code, body["details"][0]["field"]) == (grpc.StatusCode.INVALID_ARGUMENT, "model_name")


# -- observed as REST: audit, metrics --------------------------------------------------------


def test_answers_are_in_the_prediction_log_without_the_patient_id(
    stub: GRPCInferenceServiceStub, grpc_server: GrpcServer, reference: Any
) -> None:
    metadata = [*grpc_server.metadata(), ("x-patient-id", "MRN-0042")]
    _, call = stub.ModelInfer.with_call(
        matrix_message(reference.matrix(RF, 3), RF), metadata=metadata
    )
    request_id = dict(call.trailing_metadata())["x-request-id"]  # medserve's own id

    def logged() -> list[Any] | None:
        registry = Registry.open(Settings(home=grpc_server.server.home))
        try:
            store = MonitoringStore(registry.store.engine)  # type: ignore[attr-defined]
            wide = (
                dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
                dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
            )
            found = [p for p in store.predictions(RF, *wide) if p.id.startswith(request_id)]
        finally:
            registry.close()
        return found if len(found) == 3 else None

    rows = wait_for(logged, timeout_s=30, what="the gRPC prediction in the prediction log")
    assert {p.version for p in rows} == {1}
    assert all(p.patient and "MRN-0042" not in p.patient for p in rows)


def test_calls_are_audited_and_counted_by_transport(
    stub: GRPCInferenceServiceStub, grpc_server: GrpcServer, reference: Any
) -> None:
    X = reference.matrix(MODEL, 2)
    metadata = [*grpc_server.metadata(), ("x-request-id", "grpc-audit-check")]
    stub.ModelInfer(matrix_message(X), metadata=metadata)
    refused = matrix_message(X, "no-such-model")
    refusal(lambda: stub.ModelInfer(refused, metadata=grpc_server.metadata()))
    url, headers = grpc_server.server.url, grpc_server.server.headers

    def entries() -> list[dict[str, Any]] | None:
        found: list[dict[str, Any]] = []
        after: int | None = 0
        while after is not None:  # the whole trail, a page at a time
            page = httpx.get(
                f"{url}/v1/audit", params={"limit": 1000, "after_seq": after}, headers=headers
            ).json()
            found += page["entries"]
            after = page["next_after_seq"]
        grpc_entries = [e for e in found if "grpc" in (e.get("detail") or "").lower()]
        answered = [e for e in grpc_entries if e["detail"] == "grpc rows=2" and e["outcome"] == 200]
        refused = [e for e in grpc_entries if e["detail"] == INFER_PATH and e["outcome"] == 404]
        return grpc_entries if answered and refused else None

    audited = wait_for(entries, timeout_s=30, what="the gRPC calls in the audit trail")
    refused_entry = next(e for e in audited if e["detail"] == INFER_PATH and e["outcome"] == 404)
    assert refused_entry["model"] == "-"  # the caller's text is not kept
    assert refused_entry["actor"] == "key:test-admin"

    def counted(status: str) -> bool:
        text = httpx.get(f"{url}/metrics", headers=headers).text
        return any(
            line.startswith("medserve_requests_total{")
            and 'protocol="grpc"' in line
            and f'status="{status}"' in line
            for line in text.splitlines()
        )

    wait_for(lambda: counted("200"), timeout_s=30, what="gRPC answers in /metrics")
    assert counted("404")


def test_messages_over_the_body_limit_are_refused(
    stub: GRPCInferenceServiceStub, grpc_server: GrpcServer
) -> None:
    huge = pb.ModelInferRequest(model_name=MODEL, raw_input_contents=[b"\0" * (9 * 1024 * 1024)])
    huge.inputs.add(name="input", datatype="FP32", shape=[1, 30])
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(huge, metadata=grpc_server.metadata())
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
