"""Media handlers for the records predict endpoint: DICOM and PNG images, plain-text notes and
sequences (FASTA). Transport-free: they take a ``MediaRequest`` (the body, media types, query) and
return ``(status, bytes, type)``; the modalities extension contributes them through the seam
(``ServingExtension.media_handlers``).

``POST /v1/models/{name}/predict`` with

* ``Content-Type: application/dicom`` or ``image/png`` -> an image model's class probabilities
  and an occlusion saliency map (``?explain=false`` skips the map). The DICOM header is
  de-identified before anything else reads it; the prediction log gets a description such as
  ``dicom:CT:128x128``, never pixels or header values.
* ``Content-Type: text/plain`` -> a text model's prediction for the note, with word-occlusion
  attributions; or, for a sequence model, one prediction per FASTA record (or for the bare
  sequence).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import numpy as np
import orjson

from medserve.core.context import RequestContext
from medserve.core.errors import InvalidRequestError, UnsupportedMediaTypeError
from medserve.serving.data_plane import DataPlane, Explainer
from medserve.serving.media import MediaAnswer, MediaHandler, MediaRequest
from medserve.serving.protocols import records

_JSON = b"application/json"


def _dump(payload: dict[str, Any]) -> bytes:
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def image_handler(media: str, salt: bytes | None = None) -> MediaHandler:
    """Handler for ``application/dicom`` (``media="dicom"``) or ``image/png``."""
    salt = salt or os.urandom(32)

    async def handle(
        plane: DataPlane,
        name: str,
        ref: str | None,
        request: MediaRequest,
        context: RequestContext,
    ) -> MediaAnswer:
        raw = request.body
        # lazy import (optional extras: imaging, text)
        from medserve.features.modalities.image_io import read_dicom, read_png  # noqa: PLC0415

        # lazy import (optional extras: imaging, text)
        from medserve.features.modalities.image_runtime import ImageRuntime  # noqa: PLC0415

        started = time.perf_counter()
        model = await plane.model(name, ref)
        runtime = model.runtime
        if not isinstance(runtime, ImageRuntime):
            raise UnsupportedMediaTypeError(
                f"model {name!r} is not an image model: send application/json records to it"
            )
        if media == "dicom":
            image = read_dicom(raw, modalities=runtime.spec.modalities, salt=salt)
        else:
            image = read_png(raw)
        X = np.array([[image]], dtype=object)

        async def explain(_: dict[str, np.ndarray]) -> Any:
            return await asyncio.to_thread(runtime.explain_image, image)

        outputs, explanation = await plane.serve(
            model,
            X,
            context,
            "records",
            started,
            explain=explain if request.explain else None,
            logged=np.array([[image.describe()]], dtype=object),  # never pixels or header values
        )
        response = model.records_response(outputs)
        if explanation is not None:
            response["predictions"][0]["explanation"] = explanation
        response["input"] = image.header  # de-identified summary only
        response["request_id"] = context.request_id
        return 200, _dump(response), _JSON

    return handle


def parse_fasta(body: str) -> list[str]:
    """Sequences of a FASTA text (headers dropped), or the whole body as one sequence."""
    if not body.lstrip().startswith(">"):
        return ["".join(body.split())]
    records: list[list[str]] = []
    for line in body.splitlines():
        line = line.strip()
        if line.startswith(">"):
            records.append([])
        elif line and records:
            records[-1].append(line)
    return ["".join(parts) for parts in records]


async def text_handler(
    plane: DataPlane,
    name: str,
    ref: str | None,
    request: MediaRequest,
    context: RequestContext,
) -> MediaAnswer:
    """``text/plain``: a note for a text model, FASTA or a bare sequence for a sequence model."""
    # lazy import (optional extras: imaging, text)
    from medserve.features.modalities.sequence import SequenceRuntime  # noqa: PLC0415

    # lazy import (optional extras: imaging, text)
    from medserve.features.modalities.text_runtime import TextRuntime  # noqa: PLC0415

    started = time.perf_counter()
    try:
        body = request.body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequestError("a text/plain body must be UTF-8") from exc
    model = await plane.model(name, ref)
    runtime = model.runtime
    field = model.signature.feature_names[0] if model.signature.inputs else "text"
    explain: Explainer | None = None
    if isinstance(runtime, SequenceRuntime):
        rows = [{field: sequence} for sequence in parse_fasta(body)]
    elif isinstance(runtime, TextRuntime):
        rows = [{field: body}]
        text_runtime = runtime

        async def explain_note(_: dict[str, np.ndarray]) -> Any:
            return await asyncio.to_thread(text_runtime.explain_text, body)

        explain = explain_note if request.explain else None
    else:
        raise UnsupportedMediaTypeError(
            f"model {name!r} takes Content-Type application/json records; text/plain is only "
            "for text and sequence models"
        )
    X = records.parse_records_request(model, {"instances": rows})
    outputs, explanation = await plane.serve(model, X, context, "records", started, explain=explain)
    response = records.build_records_response(model, outputs, context.request_id)
    if explanation is not None:
        response["predictions"][0]["explanation"] = explanation
    return 200, _dump(response), _JSON


def media_handlers(salt: bytes | None = None) -> dict[tuple[str, bytes], MediaHandler]:
    return {
        ("records", b"application/dicom"): image_handler("dicom", salt),
        ("records", b"image/png"): image_handler("png", salt),
        ("records", b"text/plain"): text_handler,
    }
