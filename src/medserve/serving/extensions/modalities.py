"""HTTP extension: modalities (see serving/extensions/__init__.py for the contract)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

router = APIRouter()


@asynccontextmanager
async def lifespan(api: FastAPI) -> AsyncIterator[None]:
    yield
