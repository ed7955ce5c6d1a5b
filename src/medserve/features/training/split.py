"""Patient-grouped splitting: no patient's rows on both sides, checked, and recorded as counts
(never the identifiers themselves)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.model_selection import GroupKFold, GroupShuffleSplit, StratifiedGroupKFold

from medserve.core.errors import InvalidRequestError


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    test: np.ndarray
    record: dict[str, Any]


def patient_split(
    groups: np.ndarray,
    *,
    test_size: float,
    seed: int,
    stratify: np.ndarray | None,
    grouped_by: str | None,
) -> Split:
    """Hold out about ``test_size`` of the patients (stratified by outcome when given)."""
    index = np.arange(len(groups))
    if stratify is not None:
        folds = max(2, round(1 / test_size))
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        train, test = next(splitter.split(index, stratify, groups))
        method = f"stratified grouped hold-out (1 of {folds} folds by patient)"
    else:
        shuffle = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
        train, test = next(shuffle.split(index, groups=groups))
        method = f"grouped shuffle hold-out ({test_size:.0%} of patients)"
    overlap = len(set(groups[train].tolist()) & set(groups[test].tolist()))
    if overlap:
        raise InvalidRequestError(f"{overlap} patients are in both train and test")
    return Split(
        train,
        test,
        {
            "method": method,
            "grouped_by": grouped_by or "row (no patient identifier column: one row = one patient)",
            "seed": seed,
            "train_rows": len(train),
            "test_rows": len(test),
            "train_patients": len(np.unique(groups[train])),
            "test_patients": len(np.unique(groups[test])),
            "patient_overlap": overlap,
        },
    )


def cv_folds(
    n_splits: int, groups: np.ndarray, stratify: np.ndarray | None, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    index = np.arange(len(groups))
    if stratify is not None:
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        return list(splitter.split(index, stratify, groups))
    return list(GroupKFold(n_splits=n_splits).split(index, groups=groups))
