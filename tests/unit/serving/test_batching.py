"""Adaptive batching in-process: merging, splitting back, and failure isolation."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from medserve.core.loaded_model import BatchingConfig
from medserve.serving.batching import AdaptiveBatcher


def doubling(calls: list[int]) -> object:
    def predict(X: np.ndarray) -> dict[str, np.ndarray]:
        calls.append(X.shape[0])
        if np.any(X < 0):
            raise ValueError("negative input")
        return {"value": X[:, 0] * 2}

    return predict


async def test_concurrent_requests_are_merged_and_split_back() -> None:
    calls: list[int] = []
    batcher = AdaptiveBatcher(doubling(calls), BatchingConfig(max_batch_size=64, max_wait_ms=20))  # type: ignore[arg-type]
    inputs = [np.full((1 + i % 3, 1), float(i), dtype=np.float32) for i in range(20)]
    results = await asyncio.gather(*(batcher.submit(x) for x in inputs))
    for x, out in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(out["value"], x[:, 0] * 2)
    assert sum(calls) == sum(x.shape[0] for x in inputs)
    assert len(calls) < len(inputs)


async def test_batch_is_cut_at_max_batch_size() -> None:
    calls: list[int] = []
    batcher = AdaptiveBatcher(doubling(calls), BatchingConfig(max_batch_size=4, max_wait_ms=1000))  # type: ignore[arg-type]
    ones = [np.ones((1, 1), dtype=np.float32) for _ in range(8)]
    await asyncio.wait_for(asyncio.gather(*(batcher.submit(x) for x in ones)), timeout=5)
    assert calls == [4, 4]  # never waited for the 1 s timer


async def test_a_failing_request_fails_alone() -> None:
    calls: list[int] = []
    batcher = AdaptiveBatcher(doubling(calls), BatchingConfig(max_batch_size=64, max_wait_ms=20))  # type: ignore[arg-type]
    good = np.ones((1, 1), dtype=np.float32)
    bad = -np.ones((1, 1), dtype=np.float32)
    results = await asyncio.gather(
        batcher.submit(good), batcher.submit(bad), batcher.submit(good), return_exceptions=True
    )
    assert isinstance(results[1], ValueError)
    for r in (results[0], results[2]):
        assert not isinstance(r, BaseException)
        np.testing.assert_array_equal(r["value"], [2.0])


@pytest.mark.parametrize("config", [{"max_batch_size": 8, "max_wait_ms": 3}, True, None, {}])
def test_batching_config_from_serving_config(config: object) -> None:
    parsed = BatchingConfig.from_serving_config({"batching": config} if config is not None else {})
    if config in (None, {}):
        assert parsed is None
    elif config is True:
        assert parsed == BatchingConfig()
    else:
        assert parsed == BatchingConfig(max_batch_size=8, max_wait_ms=3.0)
