"""Open Inference Protocol v2 over gRPC: messages to and from what the data plane takes.

A ``ModelInferRequest`` becomes the v2 REST body (a dict) and, for ``raw_input_contents``, the
binary section of Triton's binary tensor extension, so that ``oip_v2.parse_infer_request`` reads
both transports: one decoder, one validator, the same problems for the same mistakes. Only the
names of the fields in those problems are translated back into the gRPC message's
(``inputs[0].contents.fp32_contents`` instead of ``inputs[0].data``).

Outputs are encoded from the model's arrays straight into the response message, in the form
the request came in: ``raw_output_contents`` for a request that sent ``raw_input_contents``
(as Triton answers; Triton's client reads numbers only from raw outputs), typed ``contents``
for one that sent typed contents, unless it asks for binary outputs as the kserve SDK does
(request parameter ``binary_data_output``, or ``binary_data`` on a requested output); and raw
whenever an output has no typed field (FP16). The operating point REST names in every
answer (``threshold``, ``positive_class``) travels as string parameters: the protocol's
``InferParameter`` holds only booleans, 64-bit integers and strings.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from medserve.core.errors import InvalidRequestError, MedserveError
from medserve.core.loaded_model import LoadedModel
from medserve.serving.protocols import oip_v2
from medserve.serving.protocols.grpc_v2 import grpc_predict_v2_pb2 as pb

# Where each datatype's values travel in ``InferTensorContents`` (FP16 and BF16 have no field:
# the protocol sends them raw).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_ALL_FIELDS = tuple(dict.fromkeys(CONTENTS_FIELD.values()))
RAW_OUTPUT_PARAMETER = "binary_data_output"  # on the request: every output raw
RAW_PER_OUTPUT_PARAMETER = "binary_data"  # on a requested output


def _bad(field: str, rule: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"{field}: {message}", details=[{"field": field, "rule": rule, "message": message}]
    )


# -- parameters --------------------------------------------------------------------------------


def parameter_value(parameter: pb.InferParameter) -> bool | int | str | None:
    choice = parameter.WhichOneof("parameter_choice")
    if choice is None:
        return None
    value: bool | int | str = getattr(parameter, choice)
    return value


def parameters_dict(parameters: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    return {key: parameter_value(value) for key, value in parameters.items()}


def set_parameter(target: pb.InferParameter, value: Any) -> bool:
    """Write ``value`` into ``target``; a float (or anything but bool, int, str) as its string.
    False where there is nothing to write (``None``)."""
    if value is None:
        return False
    if isinstance(value, bool | np.bool_):
        target.bool_param = bool(value)
    elif isinstance(value, int | np.integer):
        target.int64_param = int(value)
    elif isinstance(value, str):
        target.string_param = value
    else:
        target.string_param = repr(float(value)) if isinstance(value, float) else str(value)
    return True


# -- requests ----------------------------------------------------------------------------------


def _typed_data(tensor: pb.ModelInferRequest.InferInputTensor, index: int) -> list[Any]:
    """The values of a tensor sent in ``contents``, from the field its datatype names."""
    where = f"inputs[{index}].contents"
    field = CONTENTS_FIELD.get(tensor.datatype)
    contents = tensor.contents
    if field is None:
        if tensor.datatype in ("FP16", "BF16"):
            raise _bad(
                where,
                "datatype",
                f"{tensor.datatype} tensors travel in raw_input_contents (the protocol has no "
                "typed field for them)",
            )
        return []  # an unknown datatype: the decoder names the datatypes it accepts
    values: list[Any] = list(getattr(contents, field))
    if not values:
        misplaced = [name for name in _ALL_FIELDS if name != field and getattr(contents, name)]
        if misplaced:
            raise _bad(
                f"{where}.{misplaced[0]}",
                "datatype",
                f"{tensor.datatype} values travel in contents.{field}",
            )
    if field == "bytes_contents":
        try:
            return [value.decode("utf-8") for value in values]
        except UnicodeDecodeError as exc:
            raise _bad(
                f"{where}.bytes_contents", "datatype", "BYTES elements must be UTF-8"
            ) from exc
    return values


def decode_request(request: pb.ModelInferRequest) -> tuple[dict[str, Any], bytes | None]:
    """The v2 REST body and binary section equivalent to ``request``."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise _bad(
            "raw_input_contents",
            "shape",
            f"holds {len(raw)} entries for {len(request.inputs)} inputs: one per input, in order",
        )
    inputs: list[dict[str, Any]] = []
    for index, tensor in enumerate(request.inputs):
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if raw:
            if tensor.HasField("contents"):
                raise _bad(
                    f"inputs[{index}].contents",
                    "binary",
                    "must be empty when raw_input_contents is used (one or the other)",
                )
            entry["parameters"] = {"binary_data_size": len(raw[index])}
        else:
            entry["data"] = _typed_data(tensor, index)
        inputs.append(entry)
    body: dict[str, Any] = {"inputs": inputs}
    if request.id:
        body["id"] = request.id
    if request.parameters:
        body["parameters"] = parameters_dict(request.parameters)
    if request.outputs:
        body["outputs"] = [
            {"name": output.name, "parameters": parameters_dict(output.parameters)}
            for output in request.outputs
        ]
    return body, (b"".join(raw) if raw else None)


_REST_FIELD = re.compile(r"^inputs\[(\d+)\]\.(data|parameters\.binary_data_size)$")


def in_grpc_terms(exc: MedserveError, request: pb.ModelInferRequest) -> MedserveError:
    """``exc`` with the REST body's field names (``inputs[0].data``) named as the gRPC message's
    (``inputs[0].contents.fp32_contents``, ``raw_input_contents[0]``); the rule and the problem
    are the decoder's, unchanged."""
    if not exc.details:
        return exc
    raw = bool(request.raw_input_contents)
    renamed: dict[str, str] = {}
    details = []
    for problem in exc.details:
        field = problem.get("field")
        found = _REST_FIELD.match(field) if isinstance(field, str) else None
        if found is not None:
            index = int(found.group(1))
            if raw:
                field = f"raw_input_contents[{index}]"
            else:
                datatype = request.inputs[index].datatype if index < len(request.inputs) else ""
                contents = CONTENTS_FIELD.get(datatype)
                field = f"inputs[{index}].contents" + (f".{contents}" if contents else "")
            renamed[found.group(0)] = field
            problem = {**problem, "field": field}
        details.append(problem)
    if not renamed:
        return exc
    # the decoder's own message (its count and summary, bounded), with the fields renamed
    message = exc.message
    for rest_name, grpc_name in renamed.items():
        message = message.replace(rest_name, grpc_name)
    translated = copy.copy(exc)
    translated.message, translated.details, translated.args = message, details, (message,)
    return translated


# -- responses ---------------------------------------------------------------------------------


def wants_raw_outputs(request: pb.ModelInferRequest) -> bool:
    """Binary outputs for a request that sent binary inputs (as Triton answers: tritonclient
    sends ``raw_input_contents`` and reads numbers only from ``raw_output_contents``) or that
    asks for them as the kserve SDK does. The protocol sends every output one way: one output
    asking for binary makes them all binary."""
    if request.raw_input_contents:
        return True
    asked = request.parameters.get(RAW_OUTPUT_PARAMETER)
    if asked is not None and parameter_value(asked) is True:
        return True
    return any(
        parameter_value(output.parameters[RAW_PER_OUTPUT_PARAMETER]) is True
        for output in request.outputs
        if RAW_PER_OUTPUT_PARAMETER in output.parameters
    )


def datatype_of(array: np.ndarray) -> str:
    """The v2 datatype of an output array, as the REST encoder names it."""
    datatype = oip_v2.DATATYPE_BY_KIND.get(array.dtype.kind, "BYTES")
    if datatype == "FP32" and array.dtype == np.float64:
        return "FP64"
    return datatype


def _raw_bytes(array: np.ndarray, datatype: str) -> bytes:
    """Flattened, row-major, little-endian; BYTES as Triton frames them (a 4-byte little-endian
    length before each element)."""
    if datatype == "BYTES":
        items = [str(value).encode("utf-8") for value in array.ravel().tolist()]
        return b"".join(len(item).to_bytes(4, "little") + item for item in items)
    dtype = np.dtype(oip_v2.NUMPY_BY_DATATYPE[datatype]).newbyteorder("<")
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


def _fill_contents(contents: pb.InferTensorContents, array: np.ndarray, datatype: str) -> None:
    values = array.ravel().tolist()
    field = getattr(contents, CONTENTS_FIELD[datatype])
    if datatype == "BYTES":
        field.extend(str(value).encode("utf-8") for value in values)
    else:
        field.extend(values)


def encode_response(
    model: LoadedModel,
    outputs: Mapping[str, np.ndarray],
    request: pb.ModelInferRequest,
    selected: Iterable[str] | None,
) -> pb.ModelInferResponse:
    """The answer to ``request``: what the REST encoder answers, as a message."""
    wanted = set(selected) if selected is not None else None
    response = pb.ModelInferResponse(
        model_name=model.name, model_version=str(model.number), id=request.id
    )
    named = [(name, array) for name, array in outputs.items() if wanted is None or name in wanted]
    datatypes = [datatype_of(array) for _, array in named]
    raw = wants_raw_outputs(request) or any(d not in CONTENTS_FIELD for d in datatypes)
    for (name, array), datatype in zip(named, datatypes, strict=True):
        tensor = response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        if raw:
            response.raw_output_contents.append(_raw_bytes(array, datatype))
        else:
            _fill_contents(tensor.contents, array, datatype)
    for key, value in request.parameters.items():  # echoed, as REST echoes the body's
        response.parameters[key].CopyFrom(value)
    if model.decision is not None:  # the label's operating point, named in every answer
        set_parameter(response.parameters["threshold"], model.threshold)
        set_parameter(response.parameters["positive_class"], model.positive_class)
    return response


def model_metadata(metadata: Mapping[str, Any]) -> pb.ModelMetadataResponse:
    """The REST model metadata as the protocol's message (which has no ``parameters``)."""
    response = pb.ModelMetadataResponse(
        name=metadata["name"], versions=metadata["versions"], platform=metadata["platform"]
    )
    for source, target in (
        (metadata["inputs"], response.inputs),
        (metadata["outputs"], response.outputs),
    ):
        for tensor in source:
            target.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
    return response
