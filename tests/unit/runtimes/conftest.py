"""Real data shipped with scikit-learn: breast-cancer diagnosis and diabetes progression."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes


@pytest.fixture(scope="session")
def cancer() -> tuple[pd.DataFrame, pd.Series]:
    data: Any = load_breast_cancer(as_frame=True)
    return data.data, data.target


@pytest.fixture(scope="session")
def diabetes() -> tuple[pd.DataFrame, pd.Series]:
    data: Any = load_diabetes(as_frame=True)
    return data.data, data.target


@pytest.fixture(scope="session")
def cancer_matrix(cancer: tuple[pd.DataFrame, pd.Series]) -> np.ndarray:
    """What the data plane hands a runtime: float32, signature column order."""
    return cancer[0].to_numpy(dtype=np.float32)


@pytest.fixture(scope="session")
def diabetes_matrix(diabetes: tuple[pd.DataFrame, pd.Series]) -> np.ndarray:
    return diabetes[0].to_numpy(dtype=np.float32)
