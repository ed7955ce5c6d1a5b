"""A body of 100k invalid rows (about 1 MB) gets a small 422 (issue 16: one such body once made a
289 MB answer): the first ``MAX_DETAILS`` problems are listed and the message counts them all."""

from __future__ import annotations

from pathlib import Path

import orjson
from tests.unit.serving.inprocess_app import MODEL, make_template, serve

from medserve.core.registry.signature import MAX_DETAILS


def test_a_megabyte_of_invalid_rows_gets_a_bounded_422(tmp_path: Path) -> None:
    home = make_template(tmp_path / "home")
    body = orjson.dumps({"instances": [{"x": 1}] * 100_000})
    assert 500_000 < len(body) < 1_000_000
    with serve(home, security=False) as (client, _):
        answer = client.post(
            f"/v1/models/{MODEL}/predict",
            content=body,
            headers={"Content-Type": "application/json"},
        )
    assert answer.status_code == 422, answer.text[:300]
    error = answer.json()
    assert len(answer.content) < 100_000
    assert len(error["details"]) == MAX_DETAILS
    # 30 features missing and one unknown field per row, all counted
    assert error["error"].startswith("3100000 problems in 100000 rows")
