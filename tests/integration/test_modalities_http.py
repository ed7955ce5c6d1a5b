"""Image, text and sequence models served end to end by a real server process on loopback."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from tests.support import ServerProcess, start_server
from tests.unit.modalities.helpers import ct_with_phi, dicom_file, phi_strings, text_bundle

from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.faces.demo.modalities import image_bundle_path
from medserve.features.modalities.register import (
    register_image_bundle,
    register_sequence_model,
    register_text_model,
)
from medserve.features.modalities.sequence import KmerFeaturizer, KmerSpec
from medserve.features.modalities.sequence_demo_data import MOTIF, sequences


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("modalities-home")
    registry = Registry.open(Settings(home=home))
    try:
        register_image_bundle(registry, "ct-lesion", image_bundle_path(), alias="production")
        register_text_model(registry, "triage", text_bundle(pytestconfig), alias="production")
        spec = KmerSpec(k=6)
        texts, labels = sequences(400)
        model = LogisticRegression(C=10.0, max_iter=2000).fit(
            KmerFeaturizer(spec).transform(texts), labels
        )
        register_sequence_model(registry, "motif", model, spec, texts[:50], alias="production")
    finally:
        registry.close()
    proc = start_server(home, workers=1)
    yield proc
    proc.stop()


def _post(
    server: ServerProcess, model: str, body: bytes, media: str, query: str = ""
) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/models/{model}/predict{query}",
        content=body,
        headers={**server.headers, "Content-Type": media},
        timeout=60,
    )


def test_bundled_ct_dicom_is_served_with_a_saliency_map(server: ServerProcess) -> None:
    response = _post(
        server, "ct-lesion", dicom_file("CT_small.dcm").read_bytes(), "application/dicom"
    )
    assert response.status_code == 200, response.text
    body = response.json()
    prediction = body["predictions"][0]
    assert set(prediction["probabilities"]) == {"no_lesion", "lesion"}
    assert abs(sum(prediction["probabilities"].values()) - 1) < 1e-5
    explanation = prediction["explanation"]
    assert explanation["method"] == "occlusion"
    assert explanation["intensity"] == "window"  # CT: Hounsfield-unit window, not min-max
    png = Image.open(io.BytesIO(base64.b64decode(explanation["saliency_png"])))
    assert png.format == "PNG"
    assert png.size == (64, 64)
    assert body["input"]["Modality"] == "CT"
    assert body["input"]["PatientIdentityRemoved"] == "YES"
    skipped = _post(
        server,
        "ct-lesion",
        dicom_file("MR_small.dcm").read_bytes(),
        "application/dicom",
        "?explain=false",
    )
    assert skipped.status_code == 200
    assert "explanation" not in skipped.json()["predictions"][0]


def test_non_image_dicom_and_non_dicom_bodies_are_refused(server: ServerProcess) -> None:
    report = _post(
        server, "ct-lesion", dicom_file("reportsi.dcm").read_bytes(), "application/dicom"
    )
    assert report.status_code == 422
    assert report.json()["details"][0]["field"] == "PixelData"
    assert "Basic Text SR Storage" in report.json()["error"]
    garbage = _post(server, "ct-lesion", b"hello" * 100, "application/dicom")
    assert garbage.status_code == 415
    wrong_model = _post(
        server, "motif", dicom_file("CT_small.dcm").read_bytes(), "application/dicom"
    )
    assert wrong_model.status_code == 415
    assert "not an image model" in wrong_model.json()["error"]
    # and the server keeps serving
    ok = _post(server, "ct-lesion", dicom_file("CT_small.dcm").read_bytes(), "application/dicom")
    assert ok.status_code == 200


def test_png_body_is_served(server: ServerProcess) -> None:
    buffer = io.BytesIO()
    Image.new("L", (80, 80), color=90).save(buffer, format="PNG")
    response = _post(server, "ct-lesion", buffer.getvalue(), "image/png")
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["explanation"]["intensity"] == "display"


def test_text_model_served_as_plain_text_and_as_json_records(server: ServerProcess) -> None:
    note = "Sudden severe headache, worst of her life, with neck stiffness."
    plain = _post(server, "triage", note.encode(), "text/plain; charset=utf-8")
    assert plain.status_code == 200, plain.text
    prediction = plain.json()["predictions"][0]
    assert prediction["label"] == "urgent"
    words = {t["word"] for t in prediction["explanation"]["tokens"]}
    assert {"headache", "worst"} <= words
    records = httpx.post(
        f"{server.url}/v1/models/triage/predict",
        json={"instances": [{"text": "Repeat prescription for eczema cream please."}]},
        headers=server.headers,
        timeout=60,
    )
    assert records.status_code == 200, records.text
    assert records.json()["predictions"][0]["label"] == "routine"


def test_sequence_model_served_from_fasta_and_json_with_clear_alphabet_errors(
    server: ServerProcess,
) -> None:
    background = "ACGT" * 20
    fasta = (
        f">s1 background\n{background[:40]}\n{background[40:]}\n>s2\n{'A' * 30}{MOTIF}{'C' * 30}\n"
    )
    response = _post(server, "motif", fasta.encode(), "text/plain")
    assert response.status_code == 200, response.text
    labels = [p["label"] for p in response.json()["predictions"]]
    assert labels == ["background", "motif"]
    bad = httpx.post(
        f"{server.url}/v1/models/motif/predict",
        json={"instances": [{"sequence": "ACGTNNACGTXACG"}]},
        headers=server.headers,
        timeout=60,
    )
    assert bad.status_code == 422
    detail = bad.json()["details"][0]
    assert (detail["field"], detail["rule"], detail["position"]) == ("sequence", "alphabet", 11)


def test_phi_in_dicom_headers_is_absent_from_everything_stored(server: ServerProcess) -> None:
    response = _post(server, "ct-lesion", ct_with_phi(), "application/dicom")
    assert response.status_code == 200, response.text
    for value in phi_strings():
        assert value not in response.text
    server.stop()  # drain every writer (prediction log, audit) before reading the home
    leaks = []
    for path in Path(server.home).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            leaks += [f"{path.name}: {v}" for v in phi_strings() if v.encode() in data]
    assert leaks == []
