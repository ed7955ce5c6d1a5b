"""OIP v2 numeric tensors take numbers only: a numeric string or a boolean inside an FP32 tensor
is refused as the records API refuses it (it was read as a number), in the one-pass layout and in
the general path; an integer tensor does not truncate 1.5."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.unit.serving.inprocess_app import MODEL, create_key, records, serve


def _columns(row: dict[str, float], datatype: str = "FP64") -> list[dict[str, Any]]:
    return [{"name": k, "shape": [1], "datatype": datatype, "data": [v]} for k, v in row.items()]


@pytest.mark.parametrize("bad", ["14.2", True])
def test_a_non_number_in_a_float_tensor_is_refused_like_records(home: Path, bad: Any) -> None:
    headers = create_key(home, ["app"])
    row = records(1)[0]
    first = next(iter(row))
    with serve(home, security=True) as (client, _):
        good = client.post(
            f"/v2/models/{MODEL}/infer", json={"inputs": _columns(row)}, headers=headers
        )
        assert good.status_code == 200, good.text
        tensors = _columns(row)
        tensors[0]["data"] = [bad]
        refused = client.post(
            f"/v2/models/{MODEL}/infer", json={"inputs": tensors}, headers=headers
        )
        as_records = client.post(
            f"/v1/models/{MODEL}/predict",
            json={"instances": [{**row, first: bad}]},
            headers=headers,
        )
    assert refused.status_code in {400, 422}, refused.text
    assert "inputs[0].data" in refused.text
    assert as_records.status_code in {400, 422}  # one rule for both


def test_an_integer_tensor_does_not_truncate(home: Path) -> None:
    headers = create_key(home, ["app"])
    row = records(1)[0]
    tensors = _columns(row)
    tensors[0]["datatype"] = "INT64"
    tensors[0]["data"] = [1.5]
    with serve(home, security=True) as (client, _):
        refused = client.post(
            f"/v2/models/{MODEL}/infer", json={"inputs": tensors}, headers=headers
        )
    assert refused.status_code in {400, 422}
    assert "whole numbers" in refused.json()["error"]
