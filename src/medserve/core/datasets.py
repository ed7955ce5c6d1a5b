"""Loading the data a spec names, and its fingerprint.

The fingerprint is the sha256 of the frame's canonical CSV form (columns in order, no index),
so the same data give the same fingerprint whether they came from a file or from Python.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from medserve.core.errors import InvalidRequestError

BUILTIN = ("sklearn:breast_cancer", "sklearn:diabetes", "lifelines:rossi")


def fingerprint(frame: pd.DataFrame) -> str:
    return hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()


def load_data(source: str, base: Path | None = None) -> pd.DataFrame:
    if source in BUILTIN:
        return builtin(source)
    path = Path(source)
    if not path.is_absolute() and base is not None:
        path = base / path
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except (OSError, ImportError, ValueError) as exc:
        raise InvalidRequestError(f"cannot read the data file {path}: {exc}") from exc
    raise InvalidRequestError(
        f"data must be a .csv or .parquet file or one of {', '.join(BUILTIN)}; got {source!r}"
    )


def builtin(source: str) -> pd.DataFrame:
    """Public research data sets that ship with the libraries (no download)."""
    if source == "sklearn:breast_cancer":
        # lazy import (heavy: scikit-learn, kept off the serving path)
        from sklearn.datasets import load_breast_cancer  # noqa: PLC0415

        data = load_breast_cancer(as_frame=True)
        frame = data.data.copy()
        frame["diagnosis"] = np.asarray(data.target_names)[data.target]
        return frame
    if source == "sklearn:diabetes":
        # lazy import (heavy: scikit-learn, kept off the serving path)
        from sklearn.datasets import load_diabetes  # noqa: PLC0415

        scaled = load_diabetes(as_frame=True)
        raw = load_diabetes(as_frame=True, scaled=False).data
        frame = scaled.data.copy()
        frame["progression"] = scaled.target
        # Subgroup columns from the unscaled originals (evaluation only, never model inputs):
        # the data code sex as 1/2 without saying which is which, so we keep the codes.
        frame["sex_code"] = raw["sex"].round().astype(int).map(lambda v: f"sex code {v}")
        frame["age_years"] = raw["age"]
        return frame
    # lazy import (heavy: lifelines, kept off the serving path)
    from lifelines.datasets import load_rossi  # noqa: PLC0415

    return load_rossi()


def add_age_bands(frame: pd.DataFrame, column: str, edges: list[float], name: str) -> None:
    if column not in frame:
        raise InvalidRequestError(f"age_bands.column {column!r} is not in the data")
    bounds = [-np.inf, *sorted(edges), np.inf]
    labels = []
    for lo, hi in itertools.pairwise(bounds):
        if lo == -np.inf:
            labels.append(f"<{hi:g}")
        elif hi == np.inf:
            labels.append(f">={lo:g}")
        else:
            labels.append(f"{lo:g}-{hi:g}")
    frame[name] = pd.cut(frame[column], bounds, right=False, labels=labels).astype(str)


def add_synthetic_subgroups(frame: pd.DataFrame, which: list[str], seed: int) -> None:
    """Randomly assigned sex / age band, named ``synthetic_*`` so nobody mistakes them for data."""
    rng = np.random.default_rng(seed + 7919)
    n = len(frame)
    if "sex" in which:
        frame["synthetic_sex"] = rng.choice(["female", "male"], size=n)
    if "age_band" in which:
        frame["synthetic_age_band"] = rng.choice(
            ["<40", "40-59", ">=60"], size=n, p=[0.25, 0.45, 0.3]
        )
