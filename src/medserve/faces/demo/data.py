"""The breast-cancer data set (shipped with scikit-learn) as the demo and drift scenario use it."""

from __future__ import annotations

import numpy as np
import pandas as pd


def breast_cancer_frame() -> tuple[pd.DataFrame, pd.Series]:
    # lazy import (heavy: scikit-learn, kept off the serving path)
    from sklearn.datasets import load_breast_cancer  # noqa: PLC0415

    data = load_breast_cancer(as_frame=True)
    names = np.asarray(data.target_names)  # 0 = malignant, 1 = benign
    return data.data, pd.Series(names[data.target], name="diagnosis")
