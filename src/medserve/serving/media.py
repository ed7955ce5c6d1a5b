"""Media codecs on the prediction endpoints: a request body of another media type than JSON
(FHIR, DICOM, PNG, clinical text, FASTA) is handed to the codec an extension contributed for it
(``ServingExtension.media_handlers``), as a transport-free :class:`MediaRequest`: no ASGI scope
below the HTTP layer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medserve.core.context import RequestContext

if TYPE_CHECKING:
    from medserve.serving.data_plane import DataPlane

FHIR_JSON = b"application/fhir+json"
_NO = frozenset({"false", "0", "no"})


@dataclass(frozen=True, slots=True)
class MediaRequest:
    """What a codec may know of the HTTP request besides the body: the media types and the
    query parameters (each name's last value)."""

    body: bytes
    content_type: bytes  # the media type, lower case, without parameters
    accept: bytes | None
    query: Mapping[str, str]

    @property
    def explain(self) -> bool:
        """``?explain=false`` (or 0/no) turns off the explanation a codec adds by default."""
        return self.query.get("explain", "true").lower() not in _NO

    @property
    def wants_fhir(self) -> bool:
        return wants_fhir(self.accept, self.query)


def wants_fhir(accept: bytes | None, query: Mapping[str, str]) -> bool:
    """A FHIR answer: ``Accept: application/fhir+json``, ``?format=fhir`` or FHIR's own
    ``_format`` parameter."""
    if accept and FHIR_JSON in accept.lower():
        return True
    asked = query.get("format", "") + query.get("_format", "")
    return "fhir" in asked.lower()


MediaAnswer = tuple[int, bytes, bytes]  # status, body, content type
MediaHandler = Callable[
    ["DataPlane", str, str | None, MediaRequest, RequestContext], Awaitable[MediaAnswer]
]
