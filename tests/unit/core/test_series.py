"""The core series implementation: the statistics (against plain numpy written per row), the
rules, ISO 8601 points, and the padded layout of the trajectory flavor."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medserve.core.series import (
    STATS,
    Padded,
    SeriesFeature,
    SeriesSpec,
    check_padded,
    pack,
    pad,
    padded_columns,
    parse_instant,
    points_from_json,
    series_features,
    unpack,
)

AS_OF = datetime(2026, 3, 1, 13, 0, tzinfo=UTC)


def _reference(
    stat: str, times_s: list[float], values: list[float], window_h: float | None
) -> float:
    keep = [
        (t, v)
        for t, v in zip(times_s, values, strict=True)
        if window_h is None or t <= window_h * 3600
    ]
    if stat == "count":
        return float(len(keep))
    if stat == "missing":
        return float(not keep)
    if not keep:
        return float("nan")
    t = np.array([k[0] for k in keep])
    v = np.array([k[1] for k in keep])
    if stat == "slope":
        return float(np.polyfit(-t / 3600, v, 1)[0]) if len(v) >= 2 else float("nan")
    return float(
        {
            "mean": v.mean(),
            "min": v.min(),
            "max": v.max(),
            "std": v.std(),
            "first": v[0],
            "last": v[-1],
            "delta": v[-1] - v[0],
            "time_since_last": t[-1] / 3600,
        }[stat]
    )


@pytest.mark.parametrize("window", [None, 6.0])
def test_every_statistic_equals_a_per_row_reference(window: float | None) -> None:
    rng = np.random.default_rng(4)
    rows = []
    for n in (0, 1, 2, 5, 9):
        times = sorted(rng.uniform(0, 12 * 3600, n).tolist(), reverse=True)
        rows.append([(t, float(np.float32(rng.normal(3, 1)))) for t in times])
    padded = pad(rows, 10)
    features = [SeriesFeature(series="lactate", stat=s, window_hours=window) for s in STATS]
    got = series_features(features, {"lactate": padded})
    for i, row in enumerate(rows):
        for j, stat in enumerate(STATS):
            expected = _reference(stat, [p[0] for p in row], [p[1] for p in row], window)
            np.testing.assert_allclose(got[i, j], expected, rtol=1e-9, atol=1e-9, equal_nan=True)


def test_padding_never_changes_a_feature() -> None:
    base = pad([[(7200.0, 2.0), (3600.0, 3.0)]], 4)
    noisy = Padded(base.values.copy(), base.times.copy(), base.lengths)
    noisy.values[0, 2:] = [1e9, -5]
    noisy.times[0, 2:] = [-1, 5]
    features = [SeriesFeature(series="s", stat=s) for s in STATS]
    a = series_features(features, {"s": base})
    b = series_features(features, {"s": noisy})
    np.testing.assert_array_equal(a, b)
    _, problems = check_padded(SeriesSpec(name="s", max_length=4), noisy)
    assert problems == []


def test_rules_name_the_point() -> None:
    spec = SeriesSpec(name="hr", max_length=3, max_gap=3600)
    padded = Padded(
        np.array([[1.0, np.nan, 3.0, 0.0]]),
        np.array([[7200.0, 3600.0, 7000.0, 0.0]]),
        np.array([4]),
    )
    _, problems = check_padded(spec, padded)
    rules = {(p["rule"], p["index"]) for p in problems}
    assert ("max_length", 3) in rules
    assert ("non_numeric", 1) in rules
    assert ("unsorted", 2) in rules
    assert ("max_gap", 3) in rules  # 7000 s between points 2 and 3
    assert all(p["field"] == "series.hr" and p["row"] == 0 for p in problems)


def test_unsorted_series_may_be_accepted_and_sorted() -> None:
    spec = SeriesSpec(name="hr", max_length=3, refuse_unsorted=False)
    padded = pad([[(3600.0, 2.0), (7200.0, 1.0), (0.0, 3.0)]], 3)
    fixed, problems = check_padded(spec, padded)
    assert problems == []
    assert fixed.times[0].tolist() == [7200.0, 3600.0, 0.0]
    assert fixed.values[0].tolist() == [1.0, 2.0, 3.0]


def test_duplicates_are_found_once_an_accepted_unsorted_series_is_sorted() -> None:
    """Two measurements at the same time, not sent next to each other: refused all the same
    (the rule looks at the series in time order)."""
    spec = SeriesSpec(name="hr", max_length=3, refuse_unsorted=False)
    padded = pad([[(7200.0, 1.0), (3600.0, 2.0), (7200.0, 3.0)]], 3)
    _, problems = check_padded(spec, padded)
    assert [(p["rule"], p["index"]) for p in problems] == [("duplicate_time", 1)]
    allowed = spec.model_copy(update={"refuse_duplicates": False})
    assert check_padded(allowed, padded)[1] == []


def test_iso_points_are_made_relative_to_as_of() -> None:
    spec = SeriesSpec(name="lactate", unit="mmol/L", max_length=5)
    problems: list[dict[str, object]] = []
    raw = [["2026-03-01T12:00:00+01:00", 2.0], ["2026-03-01T12:30:00Z", 2.5]]
    points = points_from_json(spec, raw, AS_OF, 0, problems)
    assert problems == []
    assert points == [(7200.0, 2.0), (1800.0, 2.5)]
    assert parse_instant("2026-03-01T12:00:00") is None  # no offset: ambiguous
    assert parse_instant("2026-03-01") is None
    assert parse_instant("2026-03-01T12:00:00-05:00") == AS_OF + timedelta(hours=4)


def test_pack_and_unpack_round_trip() -> None:
    specs = [SeriesSpec(name="a", max_length=3), SeriesSpec(name="b", max_length=2)]
    batch = {
        "a": pad([[(10.0, 1.0), (5.0, 2.0)], []], 3),
        "b": pad([[(4.0, 7.0)], [(9.0, 8.0), (1.0, 9.0)]], 2),
    }
    matrix = pack(specs, batch)
    assert matrix.shape == (2, len(padded_columns(specs)))
    back = unpack([("a", 3), ("b", 2)], matrix, 0)
    for name, padded in batch.items():
        assert back[name].lengths.tolist() == padded.lengths.tolist()
        mask = padded.mask
        np.testing.assert_array_equal(back[name].values[mask], padded.values[mask])
        np.testing.assert_array_equal(back[name].times[mask], padded.times[mask])


def test_lookback_leaves_older_points_out_and_counts_max_length_inside_it() -> None:
    spec = SeriesSpec(name="lactate", max_length=2, lookback=6 * 3600)
    old_and_new = pad(
        [[(30 * 3600.0, 9.0), (20 * 3600.0, 8.0), (5 * 3600.0, 2.0), (600.0, 3.0)]], 2
    )
    only_new = pad([[(5 * 3600.0, 2.0), (600.0, 3.0)]], 2)
    checked, problems = check_padded(spec, old_and_new)
    assert problems == []
    assert checked.lengths.tolist() == [2]
    features = [SeriesFeature(series="lactate", stat=s) for s in STATS]
    np.testing.assert_array_equal(
        series_features(features, {"lactate": checked}),
        series_features(features, {"lactate": only_new}),
    )
    three_inside = pad([[(3 * 3600.0, 1.0), (2 * 3600.0, 2.0), (3600.0, 3.0)]], 2)
    _, problems = check_padded(spec, three_inside)
    assert [(p["rule"], p["index"]) for p in problems] == [("max_length", 2)]


def test_decoder_keeps_what_arrived_missing_for_the_log() -> None:
    from medserve.core.registry.signature import FeatureSpec, Signature, imputed_counts
    from medserve.core.series_input import SeriesDecoder

    feature = SeriesFeature(series="lactate", stat="last")
    signature = Signature(
        inputs=[
            FeatureSpec(name="age", missing="impute", impute_value=60),
            FeatureSpec(name=feature.column, required=False, missing="impute"),
        ],
        series=[SeriesSpec(name="lactate", max_length=4)],
        series_features=[feature],
    )
    decoder = SeriesDecoder(signature)
    matrix = decoder.records_to_matrix(
        [{"as_of": "2026-03-01T14:00:00+01:00", "series": {"lactate": []}}]
    )
    assert matrix[0, 0] == 60
    assert np.isnan(matrix[0, 1])
    counts = imputed_counts(matrix)
    assert counts is not None
    assert counts.tolist() == [1, 1]  # the age imputed, the empty window's NaN passed on


def test_a_signature_with_inconsistent_series_is_refused_at_registration(tmp_path: Path) -> None:
    """Series features whose columns are not among the inputs: a 4xx when registering, not a
    version that can never load."""
    from sklearn.linear_model import LogisticRegression

    from medserve.core.errors import InvalidRequestError
    from medserve.core.registry.service import Registry
    from medserve.core.registry.signature import FeatureSpec, Signature
    from medserve.core.settings import Settings

    X = pd.DataFrame({"age": [50.0, 60.0, 70.0, 80.0], "hr_last": [70.0, 90.0, 80.0, 120.0]})
    estimator = LogisticRegression().fit(X, [0, 1, 0, 1])
    hr = SeriesSpec(name="hr", max_length=4)
    good = Signature(
        inputs=[FeatureSpec(name="age"), FeatureSpec(name="hr_last")],
        series=[hr],
        series_features=[SeriesFeature(series="hr", stat="last", name="hr_last")],
    )
    bad = good.model_copy(
        update={"series_features": [SeriesFeature(series="hr", stat="max", name="hr_max")]}
    )
    registry = Registry.open(Settings(home=tmp_path / "home"))
    try:
        with pytest.raises(InvalidRequestError, match="hr_max"):
            registry.register("m", estimator, sample=X, signature=bad)
        assert registry.register("m", estimator, sample=X, signature=good).version == 1
    finally:
        registry.close()
