"""A text model's explanation error never carries the note (issue 16: one printed it to stderr).

The tabular explainers raise ``could not convert string to float: '<the note>'`` on free text;
such an error, or a tokenizer's or session's, reaches the caller and the logs by its type only,
and is not chained (a logged traceback would print the original message)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.unit.modalities.helpers import text_bundle
from tests.unit.serving.inprocess_app import registry_at, serve

from medserve.core.errors import MedserveError
from medserve.core.loaded_model import load_version
from medserve.features.explain.service import ExplainService
from medserve.features.modalities.register import register_bundle
from medserve.features.modalities.text_runtime import TextRuntime

MODEL = "triage"
NOTE = "Pt Quaxley Zebulon, MRN 98765432, 7 Quaxley Lane: crushing chest pain since 06:00."
SECRETS = ("Quaxley", "Zebulon", "98765432")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Path:
    home = tmp_path_factory.mktemp("text-explain") / "home"
    with registry_at(home) as registry:
        register_bundle(
            registry,
            MODEL,
            text_bundle(pytestconfig),
            flavor="text",
            input_name="note",
            alias="production",
        )
    return home


def _shown(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> str:
    out, err = capsys.readouterr()
    return out + err + caplog.text


def test_the_explainers_error_on_a_note_names_its_type_only(
    template: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with registry_at(template) as registry:
        loaded = load_version(registry.artifacts, registry.store.get_version(MODEL, 1))
        service = ExplainService(registry.store, registry.artifacts)
        with pytest.raises(MedserveError) as caught:
            service._explained(loaded, np.array([[NOTE]], dtype=object))
    error = caught.value
    assert "ValueError" in error.message  # the explainers' own error, by type
    assert error.__cause__ is None
    assert error.__suppress_context__
    assert not any(s in str(error) or s in str(error.details) for s in SECRETS)
    shown = _shown(capsys, caplog)
    assert "explanation failed for triage v1: ValueError" in shown
    assert not any(s in shown for s in SECRETS)


def test_a_tokenizer_error_in_the_text_explanation_names_its_type_only(
    template: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    with registry_at(template) as registry:
        runtime = load_version(registry.artifacts, registry.store.get_version(MODEL, 1)).runtime
    assert isinstance(runtime, TextRuntime)

    class Quoting:  # a tokenizer that, like many libraries, quotes what it could not take
        def encode(self, text: str) -> Any:
            raise ValueError(f"cannot encode {text!r}")

    monkeypatch.setattr(runtime, "_tokenizer", Quoting())
    with pytest.raises(MedserveError) as caught:
        runtime.explain_text(NOTE)
    assert (
        caught.value.message == "the text explanation failed (ValueError); the input is not shown"
    )
    assert caught.value.__cause__ is None
    assert not any(s in _shown(capsys, caplog) for s in SECRETS)


def test_asking_the_served_text_model_for_an_explanation_logs_no_note(
    template: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    import shutil

    home = Path(shutil.copytree(template, tmp_path / "home"))
    caplog.set_level(logging.DEBUG)
    with serve(home, security=False) as (client, _):
        answers = [
            client.post(f"/v1/models/{MODEL}/explain", json={"instances": [{"note": NOTE}]}),
            client.post(
                f"/v1/models/{MODEL}/predict",
                json={"instances": [{"note": NOTE}], "explain": True},
            ),
        ]
    for answer in answers:
        assert answer.status_code == 400, answer.text
        assert not any(s in answer.text for s in SECRETS)
    assert not any(s in _shown(capsys, caplog) for s in SECRETS)
