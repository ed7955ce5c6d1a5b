"""Governance over HTTP on the demo server: cards (JSON and HTML), evaluations, report, gate."""

from __future__ import annotations

import httpx
from tests.support import ServerProcess


def test_demo_card_is_complete_and_served_as_json_and_html(demo_server: ServerProcess) -> None:
    base = f"{demo_server.url}/v1/models/breast-cancer/versions/production"
    card = httpx.get(f"{base}/card", headers=demo_server.headers, timeout=30)
    assert card.status_code == 200, card.text
    body = card.json()
    assert body["complete"] is True, body["missing"] + body["problems"]
    assert len(body["hti1_source_attributes"]) == 31
    assert body["training_record"]["split"]["patient_overlap"] == 0
    assert "synthetic_sex" in body["model_card"]["factors"]["synthetic_subgroups"]
    page = httpx.get(
        f"{base}/card", headers={**demo_server.headers, "Accept": "text/html"}, timeout=30
    )
    assert page.headers["content-type"].startswith("text/html")
    assert "every HTI-1 attribute is filled and nothing disagrees" in page.text
    report = httpx.get(f"{base}/report", headers=demo_server.headers, timeout=30)
    assert report.status_code == 200
    assert "id='plot-calibration'" in report.text
    gate = httpx.get(f"{base}/gate", headers=demo_server.headers, timeout=30).json()
    assert gate == {
        "model": "breast-cancer",
        "version": gate["version"],
        "passed": True,
        "problems": [],
        "fixes": [],
    }


def test_diabetes_evaluations_use_the_real_sex_and_age_columns(demo_server: ServerProcess) -> None:
    url = f"{demo_server.url}/v1/models/diabetes-progression/versions/production/evaluations"
    evaluations = httpx.get(url, headers=demo_server.headers, timeout=30).json()["evaluations"]
    result = evaluations[0]["result"]
    assert set(result["subgroups"]) == {"sex_code", "age_band"}
    assert result["synthetic_subgroups"] == []
    assert {row["level"] for row in result["subgroups"]["age_band"]} == {"<40", "40-60", ">=60"}
    missing = httpx.get(
        f"{demo_server.url}/v1/models/nope/versions/1/card", headers=demo_server.headers
    )
    assert missing.status_code == 404
