"""Survival models: Cox proportional hazards (lifelines) and a random survival forest built on
scikit-learn (scikit-survival is GPL, so not used).

The forest grows regression trees on the null model's martingale residuals (event minus the
Nelson-Aalen cumulative hazard at the row's time; LeBlanc & Crowley 1992, Therneau et al. 1990):
its prediction is the expected excess of events, a risk score where higher means earlier. The
survival curve of a new patient is the Nelson-Aalen estimate over the training rows weighted by
how often they share a leaf with that patient (random-forest weights, as in quantile forests).

Both serve a plain scikit-learn risk-score model (``serving_estimator``), which the registry
converts to ONNX: for Cox the linear predictor x·beta, for the forest the forest itself.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import Pipeline


def _nelson_aalen_at(time: np.ndarray, event: np.ndarray, at: np.ndarray) -> np.ndarray:
    order = np.argsort(time)
    t, e = time[order], event[order]
    times = np.unique(t[e == 1])
    at_risk = len(t) - np.searchsorted(t, times, side="left")
    deaths = np.array([np.sum((t == s) & (e == 1)) for s in times], dtype=float)
    cum = np.cumsum(deaths / at_risk)
    idx = np.searchsorted(times, at, side="right") - 1
    return np.where(idx >= 0, cum[np.clip(idx, 0, None)], 0.0)


# A ConvergenceWarning with one of these means Newton-Raphson did not reach a unique maximum;
# lifelines' other ConvergenceWarnings (low variance before fitting) are advice about the data.
_NOT_CONVERGED = ("Newton-Raphson", "suspiciously close to 0")
PENALIZERS = (0.01, 0.1, 1.0)


class CoxConvergenceError(Exception):
    """Cox did not converge at any penalizer tried: the fit has no usable coefficients."""


class CoxModel:
    name = "cox_ph"

    def __init__(self, seed: int, penalizers: tuple[float, ...] = PENALIZERS) -> None:
        self.seed = seed
        self.penalizers = penalizers
        self.penalizer = penalizers[0]
        self.convergence: list[str] = []  # what went wrong before the accepted fit, if anything

    def fit(self, X: pd.DataFrame, time: np.ndarray, event: np.ndarray) -> CoxModel:
        """Fit at the first penalizer that converges. A non-converged Cox fit still returns
        coefficients, which then score near 0.5 and quietly steer model selection, so
        lifelines' convergence warnings and errors are caught and the fit is retried with a
        stronger L2 penalty; ``convergence`` says what happened."""
        # lazy import (heavy: lifelines, kept off the serving path)
        from lifelines import CoxPHFitter  # noqa: PLC0415
        from lifelines.exceptions import ConvergenceError, ConvergenceWarning  # noqa: PLC0415

        self.imputer = SimpleImputer(strategy="median").fit(X)
        frame = pd.DataFrame(self.imputer.transform(X), columns=X.columns)
        frame["__time"], frame["__event"] = time, event
        self.convergence = []
        for penalizer in self.penalizers:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")  # recorded here, judged below; none leak
                try:
                    cph = CoxPHFitter(penalizer=penalizer).fit(frame, "__time", "__event")
                except (ConvergenceError, np.linalg.LinAlgError, ValueError) as exc:
                    self.convergence.append(f"penalizer {penalizer:g}: {_first_line(exc)}")
                    continue
            failed = [
                _first_line(w.message)
                for w in caught
                if issubclass(w.category, ConvergenceWarning)
                and any(k in str(w.message) for k in _NOT_CONVERGED)
            ]
            if failed or not np.all(np.isfinite(cph.params_.to_numpy(dtype=float))):
                why = failed[0] if failed else "non-finite coefficients"
                self.convergence.append(f"penalizer {penalizer:g}: {why}")
                continue
            self.cph, self.penalizer = cph, penalizer
            return self
        raise CoxConvergenceError(
            "Cox regression did not converge at any penalizer "
            f"({', '.join(f'{p:g}' for p in self.penalizers)}): {'; '.join(self.convergence)}"
        )

    def _frame(self, X: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(self.imputer.transform(X), columns=X.columns)

    def risk(self, X: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.cph.predict_log_partial_hazard(self._frame(X)), dtype=float)

    def survival_at(self, X: pd.DataFrame, horizons: list[float]) -> dict[float, np.ndarray]:
        surv = self.cph.predict_survival_function(self._frame(X), times=horizons)
        return {h: surv.loc[h].to_numpy(dtype=float) for h in horizons}

    def serving_estimator(self, X: pd.DataFrame) -> Any:
        beta = self.cph.params_.reindex(X.columns).to_numpy(dtype=float)
        mean = self.cph._norm_mean.reindex(X.columns).to_numpy(dtype=float)
        linear = LinearRegression()
        linear.coef_ = beta
        linear.intercept_ = float(-mean @ beta)
        linear.n_features_in_ = len(beta)
        pipe = Pipeline([("impute", self.imputer), ("log_partial_hazard", linear)])
        return pipe

    def description(self) -> str:
        retried = " after non-convergence at weaker penalties" if self.convergence else ""
        return (
            f"Cox proportional hazards (lifelines CoxPHFitter, L2 penalty {self.penalizer:g}"
            f"{retried})"
        )

    def baseline(self) -> tuple[float, np.ndarray, np.ndarray]:
        """(coefficient on the served risk, times, cumulative baseline hazard): the served
        log partial hazard r gives S(t | x) = exp(-H0(t) * exp(r)), exactly lifelines'."""
        h0 = self.cph.baseline_cumulative_hazard_
        return 1.0, h0.index.to_numpy(dtype=float), h0.iloc[:, 0].to_numpy(dtype=float)


class SurvivalForest:
    name = "survival_forest"

    def __init__(self, seed: int, n_estimators: int = 200, min_samples_leaf: int = 10) -> None:
        self.forest = RandomForestRegressor(
            n_estimators=n_estimators,
            min_samples_leaf=min_samples_leaf,
            max_features="sqrt",
            random_state=seed,
            n_jobs=1,
        )

    def fit(self, X: pd.DataFrame, time: np.ndarray, event: np.ndarray) -> SurvivalForest:
        self.imputer = SimpleImputer(strategy="median").fit(X)
        residual = event - _nelson_aalen_at(time, event, time)
        self.pipe = Pipeline([("impute", self.imputer), ("forest", self.forest)]).fit(X, residual)
        self.train_leaves = self.forest.apply(self.imputer.transform(X))
        self._train_X = X
        self.time, self.event = time.astype(float), event.astype(int)
        return self

    def risk(self, X: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.pipe.predict(X), dtype=float)

    def _weights(self, X: pd.DataFrame) -> np.ndarray:
        leaves = self.forest.apply(self.imputer.transform(X))
        w = np.zeros((len(X), len(self.time)))
        for tree in range(leaves.shape[1]):
            same = leaves[:, tree][:, None] == self.train_leaves[:, tree][None, :]
            w += same / same.sum(axis=1, keepdims=True)
        return np.asarray(w / leaves.shape[1])

    def survival_at(self, X: pd.DataFrame, horizons: list[float]) -> dict[float, np.ndarray]:
        w = self._weights(X)
        event_times = np.unique(self.time[self.event == 1])
        at_risk = (self.time[:, None] >= event_times[None, :]).astype(float)
        deaths = ((self.time[:, None] == event_times[None, :]) & (self.event[:, None] == 1)).astype(
            float
        )
        hazard = np.divide(
            w @ deaths,
            w @ at_risk,
            out=np.zeros((len(X), len(event_times))),
            where=(w @ at_risk) > 0,
        )
        cum = np.cumsum(hazard, axis=1)
        out = {}
        for h in horizons:
            k = np.searchsorted(event_times, h, side="right") - 1
            out[h] = np.exp(-cum[:, k]) if k >= 0 else np.ones(len(X))
        return out

    def serving_estimator(self, X: pd.DataFrame) -> Any:
        return self.pipe

    def baseline(self) -> tuple[float, np.ndarray, np.ndarray]:
        """(coefficient, times, cumulative baseline hazard) of a Breslow-Cox model of the
        training outcomes on the forest's risk score: the served output carries only the risk,
        so this is how a later evaluation turns it into survival probabilities."""
        # lazy import (heavy: lifelines, kept off the serving path)
        from lifelines import CoxPHFitter  # noqa: PLC0415

        frame = pd.DataFrame({"risk": self.pipe.predict(self._train_X)})
        frame["__time"], frame["__event"] = self.time, self.event
        cph = CoxPHFitter(penalizer=0.0).fit(frame, "__time", "__event")
        coef = float(cph.params_["risk"])
        h0 = cph.baseline_cumulative_hazard_.iloc[:, 0]
        # lifelines centres covariates: H0 is at the mean risk; shift it to risk 0.
        scale = float(np.exp(-coef * float(cph._norm_mean["risk"])))
        return coef, h0.index.to_numpy(dtype=float), h0.to_numpy(dtype=float) * scale

    def description(self) -> str:
        return (
            "random survival forest on martingale residuals (scikit-learn RandomForestRegressor, "
            "200 trees, min 10 rows per leaf); risk = expected excess events"
        )


def make_survival(name: str, seed: int) -> CoxModel | SurvivalForest:
    return CoxModel(seed) if name == "cox_ph" else SurvivalForest(seed)


def _first_line(message: object) -> str:
    return str(message).strip().splitlines()[0][:200] if str(message).strip() else "failed"
