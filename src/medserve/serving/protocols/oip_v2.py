"""Open Inference Protocol v2 (KServe v2 REST): request parsing and response building.

Two input layouts are accepted, as MLServer and Triton users send them:

* one tensor of shape ``[n, F]`` holding every feature in signature order;
* one tensor per feature, named after the feature, of shape ``[n]`` or ``[n, 1]``.

Triton's binary tensor extension is accepted on input (``Inference-Header-Content-Length``, raw
little-endian tensor bytes after the JSON header), as tritonclient and the kserve SDK send by
default. Responses are always JSON, which both clients read whatever output format they asked.
"""

from __future__ import annotations

import math
from itertools import chain
from typing import Any

import numpy as np

from medserve.core.errors import InvalidRequestError
from medserve.core.loaded_model import LoadedModel

NUMPY_BY_DATATYPE: dict[str, Any] = {
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

DATATYPE_BY_KIND = {
    "b": "BOOL",
    "i": "INT64",
    "u": "UINT64",
    "f": "FP32",
    "U": "BYTES",
    "O": "BYTES",
}


def _bad(field: str, rule: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"{field}: {message}", details=[{"field": field, "rule": rule, "message": message}]
    )


class _BinaryReader:
    """Triton's binary tensor extension: raw tensor bytes after the JSON header, in input order."""

    def __init__(self, blob: bytes) -> None:
        self.blob = memoryview(blob)
        self.offset = 0

    def take(self, size: Any, where: str) -> memoryview:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _bad(f"{where}.parameters.binary_data_size", "type", "must be a byte count")
        if self.offset + size > len(self.blob):
            raise _bad(
                f"{where}.parameters.binary_data_size",
                "shape",
                "the binary section of the body is shorter than the sizes declared",
            )
        chunk = self.blob[self.offset : self.offset + size]
        self.offset += size
        return chunk


def _decode_binary(chunk: memoryview, dtype: Any, datatype: str, where: str) -> np.ndarray:
    if dtype is not object:
        itemsize = np.dtype(dtype).itemsize
        if len(chunk) % itemsize:
            raise _bad(f"{where}.data", "shape", f"binary data is not a whole number of {datatype}")
        return np.frombuffer(chunk, dtype=np.dtype(dtype).newbyteorder("<"))
    values: list[str] = []  # BYTES: each element is a 4-byte little-endian length, then the bytes
    raw, pos = bytes(chunk), 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise _bad(f"{where}.data", "shape", "truncated BYTES element in binary data")
        length = int.from_bytes(raw[pos : pos + 4], "little")
        item = raw[pos + 4 : pos + 4 + length]
        if len(item) != length:
            raise _bad(f"{where}.data", "shape", "truncated BYTES element in binary data")
        try:
            values.append(item.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise _bad(f"{where}.data", "datatype", "BYTES elements must be UTF-8 text") from exc
        pos += 4 + length
    return np.asarray(values, dtype=object)


def _tensor(raw: Any, index: int, binary: _BinaryReader | None = None) -> tuple[str, np.ndarray]:
    where = f"inputs[{index}]"
    if not isinstance(raw, dict):
        raise _bad(where, "type", "each input must be an object with name, shape, datatype, data")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise _bad(f"{where}.name", "required", "a non-empty string is required")
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise _bad(f"{where}.shape", "type", "shape must be a list of non-negative integers")
    datatype = raw.get("datatype")
    dtype = NUMPY_BY_DATATYPE.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        allowed = ", ".join(NUMPY_BY_DATATYPE)
        raise _bad(f"{where}.datatype", "datatype", f"datatype must be one of {allowed}")
    parameters = raw.get("parameters")
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is not None:
        if binary is None:
            raise _bad(
                f"{where}.parameters.binary_data_size",
                "binary",
                "binary tensor data needs the Inference-Header-Content-Length header",
            )
        array = _decode_binary(binary.take(size, where), dtype, str(datatype), where)
    else:
        data = raw.get("data")
        if not isinstance(data, list):
            raise _bad(f"{where}.data", "required", "data must be a (flat or nested) list")
        if dtype is not object and dtype is not np.bool_:
            integral = np.issubdtype(dtype, np.integer)
            if not _numbers_only(data, _INTEGER_TYPES if integral else _NUMBER_TYPES):
                kind = "whole numbers" if integral else "numbers"
                raise _bad(
                    f"{where}.data",
                    "type",
                    f"{datatype} data must hold {kind}: strings and booleans are not read as "
                    "numbers (the records API's rule)",
                )
        try:
            array = np.asarray(data, dtype=dtype)
        except (ValueError, TypeError, OverflowError) as exc:
            raise _bad(
                f"{where}.data",
                "datatype",
                f"data does not hold {datatype} values of a regular shape",
            ) from exc
    expected = math.prod(shape)
    if array.size != expected:
        raise _bad(
            f"{where}.data",
            "shape",
            f"data holds {array.size} values but shape {shape} needs {expected}",
        )
    if dtype is object and not all(isinstance(v, str) for v in array.ravel()):
        raise _bad(f"{where}.data", "datatype", "BYTES data must hold strings")
    return name, array.reshape(shape)


_FLOAT_TENSORS = frozenset({"FP32", "FP64"})
_NUMBER_TYPES: frozenset[type] = frozenset({int, float, type(None)})  # null: missing
_INTEGER_TYPES: frozenset[type] = frozenset({int})


def _numbers_only(data: list[Any], allowed: frozenset[type]) -> bool:
    """Whether a (flat or nested) JSON list holds only values of ``allowed`` types:
    ``np.asarray(..., float)`` would read ``"1.5"`` and ``true`` as numbers (and an integer
    tensor would truncate 1.5), which the records API rightly refuses."""
    if not data or type(data[0]) is not list:
        return set(map(type, data)) <= allowed
    return all(type(part) is list and _numbers_only(part, allowed) for part in data)


def _float_columns(model: LoadedModel, inputs: list[Any]) -> np.ndarray | None:
    """The common layout in one pass: a JSON float tensor of shape [n] or [n, 1] per feature,
    every feature once; one ``np.array`` over all their data, checked as one matrix. ``None``
    sends the request down the general path, which also explains every problem it finds."""
    position = model.validator.position
    if len(inputs) != len(position):
        return None
    columns: list[Any] = [None] * len(position)
    rows = -1
    for raw in inputs:
        if type(raw) is not dict or "parameters" in raw:
            return None
        j = position.get(raw.get("name"))  # type: ignore[arg-type]
        data = raw.get("data")
        if j is None or columns[j] is not None or type(data) is not list:
            return None
        n = len(data)
        shape = raw.get("shape")
        if raw.get("datatype") not in _FLOAT_TENSORS or (shape != [n] and shape != [n, 1]):
            return None
        if rows != n:
            if rows >= 0:
                return None
            rows = n
        columns[j] = data
    if rows <= 0:
        return None
    # numbers only (np.array would read "1.5" and true): one pass over every value, a third of
    # the cost of a check per column; else the general path says what is wrong
    if not set(map(type, chain.from_iterable(columns))) <= _NUMBER_TYPES:
        return None
    try:
        stacked = np.array(columns, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        return None
    if stacked.shape != (len(position), rows):
        return None
    return model.validator.checked_numeric(stacked.T)


def parse_infer_request(model: LoadedModel, body: Any, binary: bytes | None = None) -> np.ndarray:
    """The validated model matrix for a v2 infer request body."""
    if not isinstance(body, dict):
        raise _bad("body", "type", "the request body must be a JSON object")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _bad("inputs", "required", "inputs must be a non-empty list of tensors")
    if model.series is not None:  # trajectories: <name>.values/.times/.lengths per series
        reader = _BinaryReader(binary) if binary is not None else None
        return model.series.tensors_to_matrix(
            [_tensor(raw, i, reader) for i, raw in enumerate(inputs)]
        )
    if binary is None and len(inputs) > 1:
        matrix = _float_columns(model, inputs)
        if matrix is not None:
            return matrix
    reader = _BinaryReader(binary) if binary is not None else None
    tensors = [_tensor(raw, i, reader) for i, raw in enumerate(inputs)]
    features = model.signature.feature_names
    if len(tensors) == 1 and tensors[0][0] not in features:
        array = tensors[0][1]
        if array.ndim != 2 or array.shape[1] != len(features):
            raise _bad(
                "inputs[0].shape",
                "shape",
                f"a single tensor must have shape [n, {len(features)}] (one column per feature)",
            )
        return model.validator.check_matrix(array)
    columns: dict[str, np.ndarray] = {}
    for i, (name, array) in enumerate(tensors):
        if name not in features:
            raise _bad(
                f"inputs[{i}].name", "unknown_field", f"{name!r} is not an input of this model"
            )
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim != 1:
            raise _bad(
                f"inputs[{i}].shape", "shape", "a per-feature tensor must have shape [n] or [n, 1]"
            )
        columns[name] = array
    return model.validator.columns_to_matrix(columns)


def requested_outputs(model: LoadedModel, body: dict[str, Any]) -> list[str] | None:
    raw = body.get("outputs")
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise _bad("outputs", "type", 'outputs must be a list of {"name": ...} objects')
    names = []
    available = [o.name for o in model.metadata.outputs]
    for i, item in enumerate(raw):
        name = item.get("name") if isinstance(item, dict) else None
        if name not in available:
            raise _bad(
                f"outputs[{i}].name", "unknown_output", f"outputs available: {', '.join(available)}"
            )
        names.append(name)
    return names


def build_infer_response(
    model: LoadedModel,
    outputs: dict[str, np.ndarray],
    body: dict[str, Any],
    selected: list[str] | None,
) -> dict[str, Any]:
    tensors = []
    for name, array in outputs.items():
        if selected is not None and name not in selected:
            continue
        datatype = DATATYPE_BY_KIND.get(array.dtype.kind, "BYTES")
        if datatype == "FP32" and array.dtype == np.float64:
            datatype = "FP64"
        data = array.ravel().tolist()
        if datatype == "BYTES":
            data = [str(v) for v in data]
        tensors.append(
            {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}
        )
    response: dict[str, Any] = {
        "model_name": model.name,
        "model_version": str(model.number),
        "outputs": tensors,
    }
    request_id = body.get("id")
    if request_id is not None:
        response["id"] = request_id
    parameters = body.get("parameters")
    if isinstance(parameters, dict) and parameters:
        response["parameters"] = parameters
    if model.decision is not None:  # the label's operating point, named in every answer
        response["parameters"] = {
            **response.get("parameters", {}),
            "threshold": model.threshold,
            "positive_class": model.positive_class,
        }
    return response


def model_metadata(model: LoadedModel, aliases: list[str]) -> dict[str, Any]:
    """``GET /v2/models/{name}[/versions/{v}]``: tensors described from the signature."""
    sig = model.signature
    inputs = []
    derived = model.series.derived_set if model.series is not None else frozenset()
    for spec in sig.inputs:
        if spec.name in derived:  # computed from the series, never sent
            continue
        datatype = {"float": "FP32", "integer": "INT64", "boolean": "BOOL", "string": "BYTES"}[
            spec.type
        ]
        entry: dict[str, Any] = {"name": spec.name, "datatype": datatype, "shape": [-1]}
        params = {
            k: v
            for k, v in {
                "required": spec.required,
                "missing": spec.missing,
                "minimum": spec.minimum,
                "maximum": spec.maximum,
                "categories": spec.categories,
                "unit": spec.unit,
            }.items()
            if v is not None
        }
        entry["parameters"] = params
        inputs.append(entry)
    if model.series is not None:
        inputs.extend(model.series.metadata_inputs())
    outputs = [
        {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        for t in model.metadata.outputs
    ]
    result: dict[str, Any] = {
        "name": model.name,
        "versions": [str(model.number)],
        "platform": model.metadata.runtime,
        "inputs": inputs,
        "outputs": outputs,
        "parameters": {
            "task": sig.task,
            "class_labels": sig.class_labels,
            "aliases": aliases,
            "matrix_input": {
                "shape": [-1, len(sig.inputs)],
                "datatype": "FP32" if sig.all_numeric else "BYTES",
            },
        },
    }
    if model.series is not None:  # no matrix input: the series are sent as their tensors
        del result["parameters"]["matrix_input"]
        result["parameters"]["series_features"] = [
            {**f.model_dump(mode="json"), "column": f.column} for f in sig.series_features
        ]
    return result
