"""Where a test set comes from, for a model trained outside medserve.

medserve's own training records its patient-grouped split; a model trained elsewhere has no such
record, so the promotion gate could never see that its test data are separate from its training
data. An evaluation of kind ``test`` may therefore carry the author's declaration of the test
set's provenance ("held-out site B, 2025") and, when the training data are at hand, a check that
no patient id of the test set is among the training set's. Only counts are kept: the ids are
compared in memory and never stored.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from medserve.core.errors import InvalidRequestError


def _ids(frame: pd.DataFrame, column: str, which: str) -> set[str]:
    if column not in frame:
        raise InvalidRequestError(
            f"the {which} data have no patient-id column {column!r}",
            details=[{"field": "patient_id", "rule": f"a column of the {which} data"}],
        )
    return {str(v) for v in frame[column].dropna().tolist()}


def declared_test_split(
    test: pd.DataFrame,
    *,
    declared: str | None,
    patient_id: str | None = None,
    train: pd.DataFrame | None = None,
    train_name: str | None = None,
) -> dict[str, Any] | None:
    """The split record of a test evaluation, or None when nothing is declared.

    ``declared`` is the author's statement; ``patient_id`` names the id column, compared with
    ``train``'s when given. A patient-id column without training data checks nothing, so it
    needs a declaration."""
    statement = (declared or "").strip()
    if patient_id is None and train is not None:
        raise InvalidRequestError(
            "--train-data needs --patient-id: the column whose ids must not be in both sets"
        )
    if not statement and patient_id is None:
        return None
    record: dict[str, Any] = {"method": "declared by the author", "patient_overlap": None}
    if patient_id is not None:
        test_ids = _ids(test, patient_id, "test")
        record["test_patients"] = len(test_ids)
        if train is not None:
            train_ids = _ids(train, patient_id, "training")
            record["train_patients"] = len(train_ids)
            record["patient_overlap"] = len(test_ids & train_ids)
            record["method"] = (
                "declared by the author; patient ids checked against the training data"
                if statement
                else "patient ids checked against the training data"
            )
            record["checked_against"] = train_name
            statement = statement or f"patients not in the training data ({train_name})"
        elif not statement:
            raise InvalidRequestError(
                "--patient-id without --train-data checks nothing: give the training data "
                "(--train-data FILE), or declare the test set's provenance (--split-declared TEXT)"
            )
    record["declared"] = statement
    return record
