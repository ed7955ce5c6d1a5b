"""HTTP extension: modalities (see serving/extensions/__init__.py for the contract).

Registers the media handlers of ``medserve.modalities.http_handlers`` on the records predict
endpoint: ``application/dicom`` and ``image/png`` for image models, ``text/plain`` for clinical
notes and DNA sequences (FASTA). Nothing is imported from pydicom, Pillow or tokenizers until a
request of that kind arrives, so servers without the extras start as before.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

router = APIRouter()


def _phi_salt(api: FastAPI) -> bytes | None:
    """The home's PHI salt, so de-identified DICOM UIDs are stable across workers/restarts."""
    try:
        from medserve.security.phi import load_or_create_salt
    except ImportError:  # security not installed in this build: a per-process salt
        return None
    return load_or_create_salt(api.state.settings.home)


@asynccontextmanager
async def lifespan(api: FastAPI) -> AsyncIterator[None]:
    from medserve.modalities.http_handlers import media_handlers

    api.state.media_handlers.update(media_handlers(_phi_salt(api)))
    yield
