"""Drift of a window of live inputs and predictions against the registration reference.

A window may hold millions of predictions, so it is never held whole: the log is streamed in
pages into fixed-size summaries (``NumericSketch``, ``CategoricalSketch``), whose size depends on
the reference only, and the statistics are computed from those.

Per feature: PSI on the reference's decile bins (categories for categorical features), a
Kolmogorov-Smirnov test for numeric features, a chi-squared test for categorical ones, the
missing-value rate (what arrived missing, before imputation) against the reference's, and the
out-of-range rate (outside the range seen at registration; unseen categories for categorical
features). The same PSI/KS is applied to the model's outputs.

Like is compared with like: a value is compared in float32, the precision the model got it in
and the reference was built from (a value at a bin edge or at the sample's minimum must not
switch sides because one side was read back from decimal text).

KS: the window's CDF is counted exactly at a grid of points fixed by the reference (its
distinct quantiles, each with the float32 just below it so that point masses keep their left
limits, and ``KS_SUBDIVISIONS`` points between neighbouring quantiles). The reference CDF is
its stored levels where it has them (a feature with few distinct values: exact), else linear
between its 101 quantiles (within 0.01 of the sample's CDF). Between grid points the statistic
can exceed its value on the grid by at most the reference mass of one grid cell
(``ks_statistic_error``, at most 1/1600 for a continuous feature); on the same data it matches
scipy's two-sample statistic to those bounds. The p-value is scipy's asymptotic one
(``kstwo`` at ``n*m/(n+m)``), as ``scipy.stats.ks_2samp`` computes it for large samples.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
from scipy import stats

from medserve.core.monitoring_config import ModelMonitoringConfig

EPS = 1e-4
KS_SUBDIVISIONS = 16  # grid points between neighbouring reference quantiles
INSUFFICIENT = "insufficient data"


def psi(reference: list[float], current: list[float]) -> float:
    """Population stability index; empty bins are floored at 1e-4 so the log stays finite."""
    r = np.maximum(np.asarray(reference, dtype=np.float64), EPS)
    c = np.maximum(np.asarray(current, dtype=np.float64), EPS)
    return float(np.sum((c - r) * np.log(c / r)))


def as_f32(values: Any) -> np.ndarray:
    """Values at the precision they are compared in (float32, as the model got them)."""
    return np.asarray(np.asarray(values, dtype=np.float64), dtype=np.float32)


def _below(values: np.ndarray) -> np.ndarray:
    """The float32 just below each value: ``x <= below(v)`` is ``x < v`` for float32 ``x``."""
    below: np.ndarray = np.nextafter(values, np.float32(-np.inf)).astype(np.float32)
    return below


class ReferenceCdf:
    """The reference CDF, from its exact levels where stored, else its quantiles."""

    def __init__(self, summary: dict[str, Any]) -> None:
        levels = summary.get("levels")
        if levels:
            values = as_f32([v for v, _ in levels])
            order = np.argsort(values, kind="stable")
            self.points = values[order]
            self.cumulative = np.cumsum(np.asarray([p for _, p in levels])[order])
            self.knots = np.unique(self.points)
            self.exact = True
            return
        q = as_f32(summary["quantiles"]).astype(np.float64)
        p = np.linspace(0.0, 1.0, len(q))
        knots, first = np.unique(q, return_index=True)
        last = len(q) - 1 - np.unique(q[::-1], return_index=True)[1]
        self.knots = knots.astype(np.float32)
        self.left = p[first]  # F(v-): the lowest level at a repeated quantile
        self.right = p[last]  # F(v): the highest
        self.exact = False

    def at(self, x: np.ndarray) -> np.ndarray:
        """F(x) (right-continuous) at float32 points ``x``."""
        if self.exact:
            idx = np.searchsorted(self.points, x, side="right")
            found: np.ndarray = np.where(idx > 0, self.cumulative[np.maximum(idx - 1, 0)], 0.0)
            return found
        xs = x.astype(np.float64)
        knots = self.knots.astype(np.float64)
        k = np.searchsorted(knots, xs, side="right") - 1  # the last knot <= x
        out = np.zeros(len(xs))
        inside = (k >= 0) & (k < len(knots) - 1)
        on_knot = (k >= 0) & (knots[np.maximum(k, 0)] == xs)
        kk = k[inside]
        width = knots[kk + 1] - knots[kk]
        frac = (xs[inside] - knots[kk]) / width
        out[inside] = self.right[kk] + frac * (self.left[kk + 1] - self.right[kk])
        out[k >= len(knots) - 1] = 1.0
        out[on_knot] = self.right[k[on_knot]]
        return out


class NumericSketch:
    """A numeric column's window summarized in fixed size: counts on a grid the reference
    fixes (PSI edges, range ends and KS points among them), missing values, sum and count.
    Mergeable (counts add), so a window is folded in page by page."""

    def __init__(self, summary: dict[str, Any]) -> None:
        self.summary = summary
        self.n = 0  # rows seen
        self.missing = 0  # NaN in the log, plus what arrived missing before imputation
        self.total = 0.0
        self.ready = "edges" in summary
        if not self.ready:
            return
        self.cdf = ReferenceCdf(summary)
        knots = self.cdf.knots
        fine = [knots]
        if not self.cdf.exact and len(knots) > 1:
            steps = np.linspace(0.0, 1.0, KS_SUBDIVISIONS + 1)[1:-1]
            a, b = knots[:-1].astype(np.float64), knots[1:].astype(np.float64)
            fine.append((a[:, None] + (b - a)[:, None] * steps[None, :]).ravel().astype(np.float32))
        self.edges = as_f32(summary["edges"])
        self.ends = as_f32([summary["min"], summary["max"]])  # the range seen at registration
        marks = np.concatenate(
            [*fine, _below(knots), self.edges, _below(self.edges), self.ends, _below(self.ends)]
        )
        self.grid = np.unique(marks.astype(np.float32))
        self.grid = self.grid[np.isfinite(self.grid)]
        self.at_most = np.zeros(len(self.grid), dtype=np.int64)  # window values <= each point

    def add(self, values: np.ndarray, missing: int = 0) -> None:
        """Fold in one page of a column (float32 as logged, or float64 from JSON)."""
        self.n += len(values)
        self.missing += missing
        x = values if values.dtype == np.float32 else as_f32(values)
        nan = np.isnan(x)
        n_nan = int(nan.sum())
        if n_nan:
            self.missing += n_nan
            x = x[~nan]
        if not len(x):
            return
        self.total += float(x.sum(dtype=np.float64))
        if self.ready:
            # Sorting the page and looking the grid up in it is ~20x cheaper than looking each
            # value up in the grid (numpy's SIMD sort), and gives the cumulative counts at once.
            self.at_most += np.searchsorted(np.sort(x), self.grid, side="right")

    def _at_most(self, points: np.ndarray) -> np.ndarray:
        """How many window values are <= each of ``points`` (grid points)."""
        return self.at_most[np.searchsorted(self.grid, points, side="left")]

    def result(self, cfg: ModelMonitoringConfig, enough: bool) -> dict[str, Any]:
        finite = self.n - self.missing
        out = _missingness("numeric", self.summary, self.missing, self.n, cfg)
        if not self.ready or finite <= 0:
            if not enough:
                out["status"] = INSUFFICIENT
            return out
        below_edges = self._at_most(_below(self.edges))
        bins = np.diff(np.concatenate([[0], below_edges, [finite]]))
        value = psi(self.summary["proportions"], list(bins / finite))
        d, err = self._ks(finite)
        n_ref = int(self.summary.get("n", 0) * (1 - self.summary.get("missing_rate", 0.0)))
        n_eff = finite * n_ref / (finite + n_ref) if n_ref else finite
        p = float(stats.kstwo.sf(d, max(1, round(n_eff))))
        below_low, up_to_high = self._at_most(np.array([_below(self.ends)[0], self.ends[1]]))
        out_of_range = (int(below_low) + finite - int(up_to_high)) / finite
        out.update(
            psi=value,
            ks_statistic=d,
            ks_statistic_error=err,
            ks_pvalue=min(1.0, max(0.0, p)),
            out_of_range_rate=out_of_range,
            mean=self.total / finite,
            reference_mean=self.summary["mean"],
            status=_status(value, cfg) if enough else INSUFFICIENT,
            ks_drift=bool(p < cfg.ks_alpha) if enough else None,
        )
        return out

    def _ks(self, finite: int) -> tuple[float, float]:
        """The KS statistic on the grid, and the most it can miss between grid points."""
        window = self.at_most / finite  # F_window at each grid point
        reference = self.cdf.at(self.grid)
        d = float(np.max(np.abs(window - reference), initial=0.0))
        # A cell (g[k-1], g[k]] holding more than its end point can hide reference mass.
        lower = np.concatenate([[0.0], reference[:-1]])
        wide = np.concatenate([[True], _below(self.grid[1:]) > self.grid[:-1]])
        err = float(np.max((reference - lower)[wide], initial=0.0))
        return d, err


class CategoricalSketch:
    """A categorical column's window: counts per reference category, the unseen and missing."""

    def __init__(self, summary: dict[str, Any]) -> None:
        self.summary = summary
        self.levels: dict[str, float] = summary["frequencies"]
        self.counts: Counter[str] = Counter()
        self.n = 0
        self.missing = 0
        self.unseen = 0

    def add(self, values: list[Any], missing: int = 0) -> None:
        self.n += len(values)
        self.missing += missing
        seen = Counter(
            str(v) for v in values if v is not None and not (isinstance(v, float) and v != v)
        )
        self.missing += len(values) - sum(seen.values())
        for key, count in seen.items():
            if key in self.levels:
                self.counts[key] += count
            else:
                self.unseen += count

    def result(self, cfg: ModelMonitoringConfig, enough: bool) -> dict[str, Any]:
        present = self.n - self.missing
        out = _missingness("categorical", self.summary, self.missing, self.n, cfg)
        if present <= 0:
            if not enough:
                out["status"] = INSUFFICIENT
            return out
        levels = list(self.levels)
        observed = np.array([self.counts[k] for k in levels], dtype=np.float64)
        reference = [*self.levels.values(), 0.0]
        current = list(np.append(observed, self.unseen) / present)
        # Chi-squared on the reference's categories only: an unseen value has no expected
        # count (it is reported as the unseen rate), and a bin for it would add a degree of
        # freedom that is not there.
        seen = observed.sum()
        chi2 = p = None
        if seen > 0 and len(levels) > 1:
            expected = np.asarray(list(self.levels.values()), dtype=np.float64)
            expected = expected / expected.sum() * seen
            chi2_value, p_value = stats.chisquare(observed, expected)
            chi2, p = float(chi2_value), float(p_value)
        value = psi(reference, current)
        out.update(
            psi=value,
            chi2=chi2,
            chi2_pvalue=p,
            unseen=self.unseen,
            out_of_range_rate=self.unseen / present,
            status=_status(value, cfg) if enough else INSUFFICIENT,
            chi2_drift=bool(p is not None and p < cfg.ks_alpha) if enough else None,
        )
        return out


def _missingness(
    kind: str, summary: dict[str, Any], missing: int, n: int, cfg: ModelMonitoringConfig
) -> dict[str, Any]:
    """A feature's result starts with its window's missing rate against the reference's, and
    Fisher's exact test of the two (the same for numeric and categorical features)."""
    out: dict[str, Any] = {
        "kind": kind,
        "n": n,
        "missing": missing,
        "missing_rate": missing / n if n else 0.0,
        "reference_missing_rate": summary.get("missing_rate", 0.0),
    }
    n_ref = int(summary.get("n", 0))
    if not n or not n_ref:
        return out
    ref_missing = round(summary.get("missing_rate", 0.0) * n_ref)
    table = [[missing, n - missing], [ref_missing, n_ref - ref_missing]]
    p = float(stats.fisher_exact(table)[1])
    out.update(missing_pvalue=p, missing_drift=bool(p < cfg.ks_alpha))
    return out


def _status(value: float, cfg: ModelMonitoringConfig) -> str:
    if value >= cfg.psi_alert:
        return "alert"
    if value >= cfg.psi_warn:
        return "warn"
    return "ok"


Sketch = NumericSketch | CategoricalSketch


class WindowDrift:
    """The drift summaries of one model version's window, folded in page by page."""

    def __init__(
        self, reference: dict[str, Any], feature_names: list[str], score_keys: list[str]
    ) -> None:
        self.reference = reference
        self.names = feature_names
        self.features: dict[int, tuple[str, Sketch]] = {}
        for j, name in enumerate(feature_names):
            summary = reference["features"].get(name)
            if summary is None:
                continue  # identifiers are not a distribution to monitor
            sketch: Sketch = (
                CategoricalSketch(summary)
                if summary["kind"] == "categorical"
                else NumericSketch(summary)
            )
            self.features[j] = (name, sketch)
        self.predictions = {
            key: NumericSketch(summary)
            for key, summary in reference.get("predictions", {}).items()
            if key in score_keys
        }
        self.n = 0

    def add(
        self,
        inputs: np.ndarray | list[list[Any]],
        scores: dict[str, np.ndarray],
        missing: np.ndarray | None,
    ) -> None:
        """One page: the logged input rows, the monitored score columns, and per feature how
        many values arrived missing (imputed before the model saw them)."""
        self.n += inputs.shape[0] if isinstance(inputs, np.ndarray) else len(inputs)
        if isinstance(inputs, np.ndarray) and inputs.dtype != object:
            by_feature = np.ascontiguousarray(inputs.T)  # one copy: each column contiguous
            for j, (_, sketch) in self.features.items():
                imputed = int(missing[j]) if missing is not None else 0
                if isinstance(sketch, CategoricalSketch):
                    sketch.add(by_feature[j].tolist(), imputed)
                else:
                    sketch.add(by_feature[j], imputed)
        else:
            columns = _columns(inputs, len(self.names))
            for j, (_, sketch) in self.features.items():
                imputed = int(missing[j]) if missing is not None else 0
                if isinstance(sketch, CategoricalSketch):
                    sketch.add(columns[j], imputed)
                else:
                    sketch.add(_floats(columns[j]), imputed)
        for key, sketch in self.predictions.items():
            sketch.add(scores[key])

    def result(self, cfg: ModelMonitoringConfig) -> dict[str, Any]:
        enough = self.n >= cfg.min_window_n
        features = {name: sketch.result(cfg, enough) for name, sketch in self.features.values()}
        predictions = {key: s.result(cfg, enough) for key, s in self.predictions.items()}
        psis = [f["psi"] for f in features.values() if "psi" in f]
        alert = sorted(k for k, f in features.items() if f.get("status") == "alert")
        warn = sorted(k for k, f in features.items() if f.get("status") == "warn")
        summary = {
            "n": self.n,
            "status": INSUFFICIENT
            if not enough
            else "alert"
            if alert
            else "warn"
            if warn
            else "ok",
            "psi_max": max(psis) if psis else 0.0,
            "features_alert": alert,
            "features_warn": warn,
            "features_missing_drift": sorted(
                k for k, f in features.items() if f.get("missing_drift") and enough
            ),
            "missing_rate_max": max((f["missing_rate"] for f in features.values()), default=0.0),
            "out_of_range_rate_max": max(
                (f.get("out_of_range_rate", 0.0) for f in features.values()), default=0.0
            ),
            "prediction_psi": max((p.get("psi", 0.0) for p in predictions.values()), default=0.0),
        }
        return {
            "summary": _finite(summary),
            "features": features,
            "predictions": predictions,
            "enough_data": enough,
            "min_window_n": cfg.min_window_n,
        }


def _columns(rows: Any, width: int) -> list[list[Any]]:
    columns: list[list[Any]] = [[] for _ in range(width)]
    for row in rows:
        for j in range(width):
            columns[j].append(row[j] if j < len(row) else None)
    return columns


def _floats(values: list[Any]) -> np.ndarray:
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values):
        if isinstance(v, int | float):  # booleans too: True is 1.0, as the model got it
            out[i] = float(v)
    return out


def _finite(values: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()
    }
