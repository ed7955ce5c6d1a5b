"""Fixtures for the third-party-client contract tests: the server URL and the reference models."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from tests.support import ServerProcess

from medserve.faces.demo import DemoModel, demo_models


class Reference:
    """The demo estimators refitted locally with the demo's fixed seeds: the expected answers."""

    def __init__(self) -> None:
        self.models: dict[str, DemoModel] = {}
        for demo in demo_models():
            demo.estimator.fit(demo.frame, demo.target)
            self.models[demo.name] = demo

    def matrix(self, name: str, n: int, dtype: Any = np.float32) -> np.ndarray:
        """The first ``n`` rows, columns in signature (= training frame) order."""
        return np.ascontiguousarray(self.models[name].frame.iloc[:n].to_numpy(dtype=dtype))

    def records(self, name: str, n: int) -> list[dict[str, float]]:
        frame = self.models[name].frame.iloc[:n]
        return [
            {str(k): float(v) for k, v in row.items()} for row in frame.to_dict(orient="records")
        ]

    def _frame(self, name: str, X: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame(X.astype(np.float64), columns=self.models[name].frame.columns)

    def classes(self, name: str) -> list[str]:
        return [str(c) for c in self.models[name].estimator.classes_]

    def probabilities(self, name: str, X: np.ndarray) -> np.ndarray:
        """Local ``predict_proba`` on exactly the values sent, columns in ``classes`` order."""
        return np.asarray(self.models[name].estimator.predict_proba(self._frame(name, X)))

    def values(self, name: str, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.models[name].estimator.predict(self._frame(name, X)))


@pytest.fixture(scope="session")
def reference() -> Reference:
    return Reference()


@pytest.fixture(scope="session")
def base_url(demo_server: ServerProcess) -> str:
    """``http://127.0.0.1:PORT`` of the shared demo server process."""
    return demo_server.url


@pytest.fixture(scope="session")
def auth_headers(demo_server: ServerProcess) -> dict[str, str]:
    """The admin credentials of the shared demo server (security is on, as in production)."""
    return demo_server.headers


@pytest.fixture(scope="session")
def api_key(auth_headers: dict[str, str]) -> str:
    return auth_headers["Authorization"].removeprefix("Bearer ")


@pytest.fixture(scope="session")
def host_port(base_url: str) -> str:
    """``127.0.0.1:PORT``, the form tritonclient takes."""
    return base_url.removeprefix("http://")
