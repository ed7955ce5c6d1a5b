"""Live performance on labelled predictions whose outcome horizon has passed (matured).

Every figure carries the number of labelled predictions behind it; a figure that cannot be
computed (one class only, too few rows) is ``None`` with that ``n``, never a guess.

A matured window may hold millions of labelled predictions, so they are folded in page by page
into fixed-size summaries. Counts (sensitivity, PPV, O:E) and sums (MAE, RMSE, bias) are exact.
AUROC and the calibration slope are exact up to ``EXACT_ROWS`` labelled rows per group; past it
the scores go into ``LOGIT_BINS`` bins of logit(p) on [-14, 14] (width 0.0068): AUROC then
counts a positive and a negative in one bin as a tie, which moves it by at most
``auroc_max_error`` (reported: half the share of positive-negative pairs sharing a bin), and
the calibration slope is fitted on the bin centres (logits within 0.0034 of the true ones).
"""

from __future__ import annotations

from typing import Any

import numpy as np

MIN_SUBGROUP_N = 10
EXACT_ROWS = 20_000  # labelled rows per group kept as they are before binning
LOGIT_BINS = 4096
LOGIT_RANGE = 14.0  # logit(1e-6) is -13.8: _logit clips there
MAX_GROUPS = 200  # subgroup values per key; more are counted under OTHER
OTHER = "(other)"


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.asarray(np.log(p / (1 - p)), dtype=np.float64)


def _fit_slope(x: np.ndarray, positives: np.ndarray, totals: np.ndarray) -> float | None:
    """Slope of a logistic regression of the outcome on ``x`` (binomial counts per ``x``)."""
    X = np.column_stack([np.ones_like(x), x])
    beta = np.zeros(2)
    for _ in range(50):  # Newton-Raphson; converges in a handful of steps
        mu = 1 / (1 + np.exp(-np.clip(X @ beta, -30, 30)))
        w = totals * mu * (1 - mu)
        hessian = X.T @ (X * w[:, None]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, X.T @ (positives - totals * mu))
        beta += step
        if np.max(np.abs(step)) < 1e-8:
            break
    if not np.isfinite(beta[1]) or abs(beta[1]) > 20:
        return None  # (quasi-)separated outcomes: the slope is not estimable
    return float(beta[1])


def calibration_slope(y: np.ndarray, p: np.ndarray) -> float | None:
    """Slope of a logistic regression of the outcome on logit(p) (1 = well calibrated)."""
    if len(np.unique(y)) < 2:
        return None
    return _fit_slope(_logit(p), y.astype(np.float64), np.ones(len(y)))


def _auroc_exact(y: np.ndarray, p: np.ndarray) -> float:
    """Mann-Whitney AUROC (ties count a half), equal to scikit-learn's ``roc_auc_score``."""
    from scipy.stats import rankdata  # noqa: PLC0415 (kept off the serving path)

    ranks = rankdata(p)
    positives = int(y.sum())
    negatives = len(y) - positives
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


class BinaryPerformance:
    """A binary classifier's labelled rows, summarized in bounded size (mergeable counts)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.n = self.positives = self.tp = self.predicted = 0
        self.expected = 0.0
        self._y: list[np.ndarray] = []
        self._p: list[np.ndarray] = []
        self._kept = 0
        self.pos_bins: np.ndarray | None = None  # per logit bin, once past EXACT_ROWS
        self.neg_bins: np.ndarray | None = None

    def add(self, y: np.ndarray, p: np.ndarray) -> None:
        ok = np.isfinite(p)
        y, p = y[ok].astype(np.int64), p[ok]
        predicted = p >= self.threshold
        self.n += len(y)
        self.positives += int(y.sum())
        self.tp += int(np.sum(predicted & (y == 1)))
        self.predicted += int(predicted.sum())
        self.expected += float(p.sum())
        if self.pos_bins is None:
            self._y.append(y)
            self._p.append(p)
            self._kept += len(y)
            if self._kept <= EXACT_ROWS:
                return
            y, p = np.concatenate(self._y), np.concatenate(self._p)
            self._y, self._p = [], []
            self.pos_bins = np.zeros(LOGIT_BINS, dtype=np.int64)
            self.neg_bins = np.zeros(LOGIT_BINS, dtype=np.int64)
        assert self.neg_bins is not None
        bins = _bin(p)
        self.pos_bins += np.bincount(bins[y == 1], minlength=LOGIT_BINS)
        self.neg_bins += np.bincount(bins[y == 0], minlength=LOGIT_BINS)

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n": self.n, "n_positive": self.positives}
        if self.n == 0:
            return out
        out["sensitivity"] = self.tp / self.positives if self.positives else None
        out["ppv"] = self.tp / self.predicted if self.predicted else None
        out["observed_expected"] = self.positives / self.expected if self.expected > 0 else None
        if not 0 < self.positives < self.n:
            out.update(auroc=None, calibration_slope=None)
        elif self.pos_bins is None:
            y, p = np.concatenate(self._y), np.concatenate(self._p)
            out.update(auroc=_auroc_exact(y, p), calibration_slope=calibration_slope(y, p))
        else:
            assert self.neg_bins is not None
            pos, neg = self.pos_bins.astype(np.float64), self.neg_bins.astype(np.float64)
            pairs = pos.sum() * neg.sum()
            below = np.cumsum(neg) - neg  # negatives in lower bins
            out["auroc"] = float((pos * (below + 0.5 * neg)).sum() / pairs)
            out["auroc_max_error"] = float(0.5 * (pos * neg).sum() / pairs)
            centres = (np.arange(LOGIT_BINS) + 0.5) / LOGIT_BINS * 2 * LOGIT_RANGE - LOGIT_RANGE
            used = (pos + neg) > 0
            out["calibration_slope"] = _fit_slope(centres[used], pos[used], (pos + neg)[used])
            out["binned"] = True
        return out


def _bin(p: np.ndarray) -> np.ndarray:
    scaled = (_logit(p) + LOGIT_RANGE) / (2 * LOGIT_RANGE) * LOGIT_BINS
    return np.clip(scaled.astype(np.int64), 0, LOGIT_BINS - 1)


class RegressionPerformance:
    """A regressor's labelled rows: exact sums."""

    def __init__(self) -> None:
        self.n = 0
        self.abs_err = self.sq_err = self.err = 0.0

    def add(self, y: np.ndarray, yhat: np.ndarray) -> None:
        ok = np.isfinite(y) & np.isfinite(yhat)
        err = yhat[ok] - y[ok]
        self.n += len(err)
        self.abs_err += float(np.abs(err).sum())
        self.sq_err += float((err**2).sum())
        self.err += float(err.sum())

    def result(self) -> dict[str, Any]:
        if self.n == 0:
            return {"n": 0}
        return {
            "n": self.n,
            "mae": self.abs_err / self.n,
            "rmse": float(np.sqrt(self.sq_err / self.n)),
            "bias": self.err / self.n,
        }


Summary = BinaryPerformance | RegressionPerformance


class LivePerformance:
    """Overall and per-subgroup performance, folded in page by page."""

    def __init__(self, threshold: float, subgroups: list[str]) -> None:
        self.threshold = threshold
        self.subgroups = subgroups
        self.task: str | None = None
        self.overall: Summary | None = None
        self.groups: dict[str, dict[str, Summary]] = {key: {} for key in subgroups}

    def _new(self) -> Summary:
        if self.task == "classification":
            return BinaryPerformance(self.threshold)
        return RegressionPerformance()

    def add(
        self, task: str, y: np.ndarray, score: np.ndarray, groups: dict[str, list[Any]]
    ) -> None:
        """Labelled rows of one page: outcome (0/1 or number), score, and per subgroup key
        each row's value (``None``: not in any group of that key)."""
        if self.task != task:  # the task of the newest labelled version decides
            self.task = task
            self.overall = None
            self.groups = {key: {} for key in self.subgroups}
        if self.overall is None:
            self.overall = self._new()
        self.overall.add(y, score)
        for key, values in groups.items():
            named = self.groups[key]
            codes = np.full(len(values), -1, dtype=np.int64)
            order: dict[str, int] = {}
            fresh = 0  # values this page adds as groups
            for i, value in enumerate(values):
                if value is None:
                    continue
                text = str(value)
                if text not in named and text not in order:
                    if len(named) + fresh >= MAX_GROUPS:
                        text = OTHER  # bounded: a key with many values does not grow the summary
                    fresh += text not in named and text not in order
                codes[i] = order.setdefault(text, len(order))
            for text, code in order.items():
                if text not in named:
                    named[text] = self._new()
                chosen = codes == code
                named[text].add(y[chosen], score[chosen])

    def result(self) -> dict[str, Any]:
        overall = self.overall.result() if self.overall is not None else {"n": 0}
        subgroups: dict[str, Any] = {}
        for key, named in self.groups.items():
            shown = {}
            for value in sorted(named):
                summary = named[value]
                shown[value] = (
                    summary.result()
                    if summary.n >= MIN_SUBGROUP_N
                    else {"n": summary.n, "note": f"fewer than {MIN_SUBGROUP_N} labelled"}
                )
            if shown:
                subgroups[key] = shown
        return {"overall": overall, "subgroups": subgroups}


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    """The binary figures of one set of labelled rows (the summary above, in one call)."""
    summary = BinaryPerformance(threshold)
    summary.add(np.asarray(y), np.asarray(p, dtype=np.float64))
    return summary.result()


def regression_metrics(y: np.ndarray, yhat: np.ndarray) -> dict[str, Any]:
    summary = RegressionPerformance()
    summary.add(np.asarray(y, dtype=np.float64), np.asarray(yhat, dtype=np.float64))
    return summary.result()
