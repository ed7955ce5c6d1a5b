"""The interval `make bench` reports for the prediction log's cost (benchmarks/governance.py)."""

from __future__ import annotations

import random
import statistics

from benchmarks.governance import _median_interval


def test_identical_rounds_give_a_point_interval() -> None:
    assert _median_interval([[0.93] * 8, [0.93] * 8], random.Random(1)) == (0.93, 0.93)


def test_pairs_of_different_speeds_widen_the_interval_beyond_their_rounds() -> None:
    # Two server pairs, each steady within itself, one 10 points slower: resampling the pairs
    # must reach both speeds; resampling only the pooled rounds would stay near the middle.
    slow = [0.90 + 0.001 * i for i in range(8)]
    fast = [1.00 + 0.001 * i for i in range(8)]
    low, high = _median_interval([slow, fast], random.Random(1))
    assert low <= statistics.median(slow)
    assert high >= statistics.median(fast)
    rng = random.Random(1)
    pooled = slow + fast
    naive = sorted(statistics.median(rng.choices(pooled, k=16)) for _ in range(2000))
    assert high - low > naive[1949] - naive[49]


def test_the_interval_holds_the_median_of_the_rounds() -> None:
    rng = random.Random(7)
    pairs = [[rng.gauss(0.93, 0.05) for _ in range(8)] for _ in range(3)]
    low, high = _median_interval(pairs, random.Random(2))
    assert low <= statistics.median(v for pair in pairs for v in pair) <= high
    assert low < high
