"""The gRPC codec on its own: messages to the v2 body the REST decoder validates, arrays back
to messages, error trailers (no medserve server: the contract tests cover the whole path)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
import orjson
import pytest
from google.rpc import error_details_pb2, status_pb2

from medserve.core.errors import InvalidRequestError, ValidationFailedError
from medserve.core.registry.signature import FeatureSpec, Signature
from medserve.serving.protocols.grpc_v2 import codec, status
from medserve.serving.protocols.grpc_v2 import grpc_predict_v2_pb2 as pb


def _request(**fields: Any) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name="m", **fields)


def test_typed_contents_become_the_rest_body() -> None:
    request = _request(id="r1")
    request.parameters["trace"].bool_param = True
    a = request.inputs.add(name="a", datatype="FP32", shape=[2])
    a.contents.fp32_contents.extend([1.5, 2.5])
    b = request.inputs.add(name="b", datatype="BYTES", shape=[2])
    b.contents.bytes_contents.extend([b"x", "é".encode()])
    c = request.inputs.add(name="c", datatype="INT8", shape=[2])
    c.contents.int_contents.extend([1, -2])
    request.outputs.add(name="label")
    body, binary = codec.decode_request(request)
    assert binary is None
    assert body == {
        "id": "r1",
        "parameters": {"trace": True},
        "inputs": [
            {"name": "a", "datatype": "FP32", "shape": [2], "data": [1.5, 2.5]},
            {"name": "b", "datatype": "BYTES", "shape": [2], "data": ["x", "é"]},
            {"name": "c", "datatype": "INT8", "shape": [2], "data": [1, -2]},
        ],
        "outputs": [{"name": "label", "parameters": {}}],
    }


def test_raw_contents_become_the_binary_extension() -> None:
    request = _request(raw_input_contents=[b"\0" * 8, b"\1" * 4])
    request.inputs.add(name="a", datatype="FP32", shape=[2])
    request.inputs.add(name="b", datatype="INT32", shape=[1])
    body, binary = codec.decode_request(request)
    assert binary == b"\0" * 8 + b"\1" * 4
    sizes = [t["parameters"]["binary_data_size"] for t in body["inputs"]]
    assert sizes == [8, 4]
    assert all("data" not in t for t in body["inputs"])


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda r: r.inputs.add(name="a", datatype="FP16", shape=[1]), "inputs[0].contents"),
        (
            lambda r: r.inputs.add(
                name="a", datatype="FP32", shape=[1]
            ).contents.int64_contents.append(1),
            "inputs[0].contents.int64_contents",
        ),
        (
            lambda r: r.inputs.add(
                name="a", datatype="BYTES", shape=[1]
            ).contents.bytes_contents.append(b"\xff"),
            "inputs[0].contents.bytes_contents",
        ),
    ],
    ids=["fp16-typed", "misplaced", "not-utf8"],
)
def test_bad_typed_contents_name_the_field(build: Any, field: str) -> None:
    request = _request()
    build(request)
    with pytest.raises(InvalidRequestError) as caught:
        codec.decode_request(request)
    assert caught.value.details[0]["field"] == field


def test_raw_and_typed_together_are_refused() -> None:
    request = _request(raw_input_contents=[b"\0" * 4])
    request.inputs.add(name="a", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
    with pytest.raises(InvalidRequestError) as caught:
        codec.decode_request(request)
    assert caught.value.details[0] == {
        "field": "inputs[0].contents",
        "rule": "binary",
        "message": "must be empty when raw_input_contents is used (one or the other)",
    }


def test_rest_field_names_are_translated() -> None:
    error = InvalidRequestError(
        "inputs[0].data: bad",
        details=[{"field": "inputs[0].data", "rule": "shape", "message": "bad"}],
    )
    typed = _request()
    typed.inputs.add(name="a", datatype="FP64", shape=[1])
    translated = codec.in_grpc_terms(error, typed)
    assert translated.details[0]["field"] == "inputs[0].contents.fp64_contents"
    assert translated.message == "inputs[0].contents.fp64_contents: bad"
    assert type(translated) is InvalidRequestError
    raw = _request(raw_input_contents=[b""])
    raw.inputs.add(name="a", datatype="FP64", shape=[1])
    assert codec.in_grpc_terms(error, raw).details[0]["field"] == "raw_input_contents[0]"
    other = InvalidRequestError("x", details=[{"field": "age", "rule": "range", "message": "x"}])
    assert codec.in_grpc_terms(other, typed) is other


MODEL = SimpleNamespace(name="m", number=3, decision=None, threshold=None, positive_class=None)
OUTPUTS = {
    "label": np.array(["no", "yes"], dtype=object),
    "probabilities": np.array([[0.75, 0.25], [0.5, 0.5]], dtype=np.float32),
    "count": np.array([1, 2], dtype=np.int32),
}


def test_typed_outputs_by_default() -> None:
    response = codec.encode_response(MODEL, OUTPUTS, _request(id="r"), None)  # type: ignore[arg-type]
    assert (response.model_name, response.model_version, response.id) == ("m", "3", "r")
    assert not response.raw_output_contents
    label, probabilities, count = response.outputs
    assert list(label.contents.bytes_contents) == [b"no", b"yes"]
    assert (probabilities.datatype, list(probabilities.shape)) == ("FP32", [2, 2])
    assert list(probabilities.contents.fp32_contents) == [0.75, 0.25, 0.5, 0.5]
    assert (count.datatype, list(count.contents.int64_contents)) == ("INT64", [1, 2])


def test_raw_outputs_when_asked_or_sent_raw() -> None:
    asked = _request()
    asked.parameters["binary_data_output"].bool_param = True
    sent_raw = _request(raw_input_contents=[b""])
    for request in (asked, sent_raw):
        response = codec.encode_response(MODEL, OUTPUTS, request, ["probabilities", "label"])  # type: ignore[arg-type]
        assert [t.name for t in response.outputs] == ["label", "probabilities"]
        assert not any(t.HasField("contents") for t in response.outputs)
        label, probabilities = response.raw_output_contents
        assert label == b"\x02\0\0\0no\x03\0\0\0yes"
        np.testing.assert_array_equal(
            np.frombuffer(probabilities, "<f4").reshape(2, 2), OUTPUTS["probabilities"]
        )


def test_the_operating_point_travels_as_string_parameters() -> None:
    model = SimpleNamespace(
        name="m", number=1, decision={"value": 0.3}, threshold=0.3, positive_class="yes"
    )
    request = _request()
    request.parameters["echo"].int64_param = 7
    response = codec.encode_response(model, OUTPUTS, request, None)  # type: ignore[arg-type]
    assert float(response.parameters["threshold"].string_param) == 0.3
    assert response.parameters["positive_class"].string_param == "yes"
    assert response.parameters["echo"].int64_param == 7


# -- error trailers: within what gRPC clients accept ---------------------------------------------


def _many_problems(rows: int) -> ValidationFailedError:
    signature = Signature(
        inputs=[FeatureSpec(name=f"f{j}", type="float", minimum=0, maximum=1) for j in range(3)]
    )
    with pytest.raises(ValidationFailedError) as caught:
        signature.validator().records_to_matrix([{"f0": 5, "f1": 7, "f2": -3}] * rows)
    return caught.value


async def test_a_refusal_with_many_problems_arrives_as_itself() -> None:
    """A client refuses trailers over 8 KiB (and would report RESOURCE_EXHAUSTED "Stream
    removed"): the problems carried are cut to fit, first ones first; the message counts all."""
    error = _many_problems(200)
    assert len(error.details) == 100  # REST's 422 carries these: far over 8 KiB in two trailers

    async def refuse(request: bytes, context: Any) -> bytes:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            status.bounded_message(error.message),
            trailing_metadata=status.trailers(error, 422),
        )
        raise AssertionError("abort returns only by raising")

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(refuse)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("t.Refuser", {"Refuse": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await channel.unary_unary("/t.Refuser/Refuse")(b"")
    finally:
        await server.stop(0)
    answer = caught.value
    assert answer.code() == grpc.StatusCode.INVALID_ARGUMENT, answer.details()
    trailers = dict(answer.trailing_metadata() or ())
    body = orjson.loads(trailers[status.BODY_KEY])
    assert body["error"] == answer.details() == error.message
    assert body["error"].startswith("600 problems in 200 rows")
    kept = body["details"]
    assert 0 < len(kept) < len(error.details)
    assert kept == error.details[: len(kept)]
    rich = status_pb2.Status.FromString(trailers[status.DETAILS_KEY])
    bad_request = error_details_pb2.BadRequest()
    assert any(detail.Unpack(bad_request) for detail in rich.details)
    assert [v.reason for v in bad_request.field_violations] == [p["rule"] for p in kept]


def test_a_long_message_is_cut() -> None:
    error = InvalidRequestError("x" * 5000)
    body = orjson.loads(dict(status.trailers(error, 400))[status.BODY_KEY])
    assert len(body["error"]) == status.MESSAGE_LIMIT
    assert body["error"] == status.bounded_message(error.message)
