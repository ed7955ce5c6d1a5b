"""The FHIR media handler validates a request's rows once: the rationales of a RiskAssessment
answer are explained from the matrix the prediction was made from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.unit.serving.inprocess_app import MODEL, make_template, records, serve

from medserve.core.registry.signature import Validator

FHIR = "application/fhir+json"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_template(tmp_path_factory.mktemp("fhir-once") / "home")


def test_fhir_answer_with_rationales_validates_the_rows_once(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = Validator.records_to_matrix

    def counted(self: Validator, rows: Any) -> np.ndarray:
        calls.append(len(rows))
        return original(self, rows)

    monkeypatch.setattr(Validator, "records_to_matrix", counted)
    rows = records(3)
    with serve(home, security=False) as (client, _):
        response = client.post(
            f"/v1/models/{MODEL}/predict",
            json={"instances": rows},
            headers={"Accept": FHIR},
        )
        plain = client.post(f"/v1/models/{MODEL}/predict", json={"instances": rows})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(FHIR)
    assert calls[0] == 3
    assert len(calls) == 2  # the FHIR request once, then the plain one once
    entries = response.json()["entry"]
    assert len(entries) == 3
    for entry, expected in zip(entries, plain.json()["predictions"], strict=True):
        [prediction] = entry["resource"]["prediction"]
        assert prediction["rationale"]  # explained (from the one validated matrix)
        positive = list(expected["probabilities"].values())[-1]  # the 2nd class of two
        assert prediction["probabilityDecimal"] == pytest.approx(positive, abs=1e-6)
