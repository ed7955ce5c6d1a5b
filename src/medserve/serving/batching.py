"""Adaptive batching: concurrent small requests to one model merged into one runtime call.

Opt-in per version (``serving_config["batching"]``) because for tiny models a thread hop costs
more than the prediction. A batch is cut when it reaches ``max_batch_size`` rows or when the
oldest request has waited ``max_wait_ms``. Rows are validated per request *before* batching, and
if the merged call fails each request is retried alone, so a bad request fails only itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

from medserve.core.loaded_model import BatchingConfig

Predict = Callable[[np.ndarray], dict[str, np.ndarray]]
Observer = Callable[[int], None]


class AdaptiveBatcher:
    def __init__(self, predict: Predict, config: BatchingConfig, on_batch: Observer | None = None):
        self._predict = predict
        self._config = config
        self._on_batch = on_batch
        self._pending: list[tuple[np.ndarray, asyncio.Future[dict[str, np.ndarray]]]] = []
        self._rows = 0
        self._timer: asyncio.TimerHandle | None = None

    async def submit(self, X: np.ndarray) -> dict[str, np.ndarray]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, np.ndarray]] = loop.create_future()
        self._pending.append((X, future))
        self._rows += X.shape[0]
        if self._rows >= self._config.max_batch_size:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._config.max_wait_ms / 1000.0, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending, self._rows = self._pending, [], 0
        if batch:
            asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(
        self, batch: list[tuple[np.ndarray, asyncio.Future[dict[str, np.ndarray]]]]
    ) -> None:
        loop = asyncio.get_running_loop()
        X = batch[0][0] if len(batch) == 1 else np.concatenate([x for x, _ in batch])
        if self._on_batch is not None:
            self._on_batch(X.shape[0])
        try:
            merged = await loop.run_in_executor(None, self._predict, X)
        except Exception:
            await self._run_one_by_one(batch)
            return
        start = 0
        for x, future in batch:
            stop = start + x.shape[0]
            if not future.done():
                future.set_result({name: out[start:stop] for name, out in merged.items()})
            start = stop

    async def _run_one_by_one(
        self, batch: list[tuple[np.ndarray, asyncio.Future[dict[str, np.ndarray]]]]
    ) -> None:
        loop = asyncio.get_running_loop()
        for x, future in batch:
            try:
                result = await loop.run_in_executor(None, self._predict, x)
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
                continue
            if not future.done():
                future.set_result(result)
