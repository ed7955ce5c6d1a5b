"""DICOM decoding and PS3.15 Annex E de-identification on pydicom's bundled files."""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import pydicom
import pytest
from tests.unit.modalities.helpers import ct_with_phi, dicom_file, phi_strings

from medserve.core.errors import UnsupportedMediaTypeError, ValidationFailedError
from medserve.features.modalities.dicom_deid import anonymous_uid, deidentify_dataset
from medserve.features.modalities.image_io import read_dicom, read_png
from medserve.features.modalities.image_preprocessing import ImagePreprocessing, Window, preprocess

SALT = b"s" * 32


def test_deidentification_removes_every_planted_identifier() -> None:
    ds = pydicom.dcmread(io.BytesIO(ct_with_phi()))
    study_uid = str(ds.StudyInstanceUID)
    deidentify_dataset(ds, salt=SALT)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    dumped = buffer.getvalue() + str(ds).encode()
    for value in phi_strings():
        assert value.encode() not in dumped, value
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.StudyInstanceUID == anonymous_uid(study_uid, SALT)
    assert str(ds.StudyInstanceUID).startswith("2.25.")
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage  # a class, not an identifier: kept
    assert "ContentSequence" not in ds
    assert not any(elem.tag.is_private for elem in ds)


def test_uid_replacement_is_stable_under_one_salt_only() -> None:
    uid = "1.2.840.113619.2.1.1.322987881.621.736170080.681"
    assert anonymous_uid(uid, SALT) == anonymous_uid(uid, SALT)
    assert anonymous_uid(uid, SALT) != anonymous_uid(uid, b"t" * 32)


def test_ct_is_read_in_hounsfield_units_and_described_without_phi() -> None:
    image = read_dicom(ct_with_phi(), modalities=["CT", "MR"], salt=SALT)
    raw = pydicom.dcmread(dicom_file("CT_small.dcm"))
    expected = raw.pixel_array * float(raw.RescaleSlope) + float(raw.RescaleIntercept)
    np.testing.assert_allclose(image.pixels, expected)
    assert image.modality == "CT"
    assert image.describe() == "dicom:CT:128x128"
    assert image.header["SOPClassName"] == "CT Image Storage"
    assert not any(v in str(image.header) for v in phi_strings())


@pytest.mark.parametrize("name", ["reportsi.dcm", "rtplan.dcm", "waveform_ecg.dcm"])
def test_non_image_objects_are_refused_naming_pixel_data(name: str) -> None:
    with pytest.raises(ValidationFailedError) as caught:
        read_dicom(dicom_file(name).read_bytes())
    assert caught.value.details[0]["field"] == "PixelData"
    assert "no pixel data" in caught.value.message


def test_modality_outside_the_model_is_refused() -> None:
    with pytest.raises(ValidationFailedError) as caught:
        read_dicom(dicom_file("examples_rgb_color.dcm").read_bytes(), modalities=["CT", "MR"])
    assert caught.value.details[0]["field"] == "Modality"
    assert "US" in caught.value.message


def test_bytes_that_are_not_dicom_are_unsupported_media() -> None:
    with pytest.raises(UnsupportedMediaTypeError):
        read_dicom(b"\x00" * 200 + b"not dicom")
    with pytest.raises(UnsupportedMediaTypeError):
        read_png(b"GIF89a....")


def test_a_truncated_or_corrupt_dicom_file_is_422_not_415() -> None:
    """Neither is a question of media type: the file is DICOM, and damaged."""
    whole = ct_with_phi()
    with pytest.raises(ValidationFailedError) as short_pixels:
        read_dicom(whole[: len(whole) - 4000], modalities=["CT"], salt=SALT)  # cut in PixelData
    assert short_pixels.value.details[0]["field"] == "PixelData"
    assert "truncated or corrupt" in short_pixels.value.message
    with pytest.raises(ValidationFailedError) as cut_header:
        read_dicom(whole[:400], modalities=["CT"], salt=SALT)  # cut inside the header
    assert "truncated or corrupt" in cut_header.value.message


def test_ct_window_maps_hounsfield_units_to_unit_range() -> None:
    spec = ImagePreprocessing(
        size=(2, 3), window=Window(center=40, width=400), class_labels=["a", "b"], mean=0, std=1
    )
    hu = np.array([[-1000, -160, 40], [240, 1000, 140]], dtype=np.float32)
    tensor, unit, mode = preprocess(hu, "CT", spec)
    assert mode == "window"
    np.testing.assert_allclose(unit, [[0, 0, 0.5], [1, 1, 0.75]], atol=1e-6)
    assert tensor.shape == (1, 2, 3)
    _, _, mr_mode = preprocess(hu, "MR", spec)
    assert mr_mode == "percentile"


def test_parsing_warnings_never_show_header_values(caplog: pytest.LogCaptureFixture) -> None:
    """A header value that breaks its VR's rules (here an identifier in a UID and an over-long
    patient id) makes pydicom warn with the value: nothing of it reaches warnings or logs."""
    ds = pydicom.dcmread(io.BytesIO(ct_with_phi()))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # planting the values warns too: not under test
        ds["StudyInstanceUID"].value = "1.2.Quaxley^Zebulon.98765432"
        ds["AccessionNumber"].value = "ACC-55501234-Quaxley-Zebulon-overlong-value"
        ds.save_as(buffer, enforce_file_format=True)
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_dicom(buffer.getvalue(), salt=SALT)
    shown = " ".join(str(w.message) for w in caught) + caplog.text
    assert "Quaxley" not in shown
    assert "98765432" not in shown


# PS3.15 Table E.1-1 attributes that name or reach a person (tag -> a planted value); each must
# be gone from the de-identified header (issue 16: (0010,2155) survived once).
PERSON_TAGS = {
    0x00102155: "quaxley@example.org",  # PatientTelecomInformation
    0x00102154: "+44 20 7946 0991",  # PatientTelephoneNumbers
    0x00101040: "7 Quaxley Lane, Leeds",  # PatientAddress
    0x0040A123: "Quaxley^Ermintrude",  # PersonName
    0x00401104: "ermintrude@quaxley.example",  # PersonTelecomInformation
    0x00401103: "+44 113 496 0000",  # PersonTelephoneNumbers
    0x00401102: "9 Quaxley Row",  # PersonAddress
    0x00080092: "12 Fennimore Street",  # ReferringPhysicianAddress
    0x00080094: "+44 113 496 0123",  # ReferringPhysicianTelephoneNumbers
    0x001021F0: "Quaxleyan",  # PatientReligiousPreference
    0x00402011: "callback quaxley@example.org",  # OrderCallbackTelecomInformation
    0x00402010: "0113 496 0777",  # OrderCallbackPhoneNumber
    0x00380400: "Quaxley Ward 7",  # PatientInstitutionResidence
    0x00321066: "Quaxley family visit",  # ReasonForVisit
    0x00080015: "20240101120000",  # InstanceCoercionDateTime
    0x0016004D: "Quaxley Camera Owner",  # CameraOwnerName
}


def test_every_person_attribute_of_the_profile_is_removed() -> None:
    from pydicom.datadict import dictionary_VR

    ds = pydicom.dcmread(io.BytesIO(ct_with_phi()))
    for tag, value in PERSON_TAGS.items():
        ds.add_new(tag, dictionary_VR(tag), value)
    deidentify_dataset(ds, salt=SALT)
    for tag in PERSON_TAGS:
        assert tag not in ds or not ds[tag].value, hex(tag)
    dumped = str(ds)
    assert not any(value in dumped for value in PERSON_TAGS.values())


def test_the_profile_names_only_real_attributes_and_covers_the_table() -> None:
    from pydicom.datadict import tag_for_keyword

    from medserve.features.modalities.dicom_deid import BASIC_PROFILE

    assert [k for k in BASIC_PROFILE if tag_for_keyword(k) is None] == []
    assert len(BASIC_PROFILE) > 600  # PS3.15 (2024b) Table E.1-1 lists ~620 attributes
    kept = {"SOPClassUID", "Modality", "PixelData", "Rows", "Columns", "RescaleSlope"}
    assert not kept & set(BASIC_PROFILE)  # what decoding needs is not in the profile


def test_parser_warnings_with_values_are_held_not_printed(
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pydicom warns *and* logs a malformed value with the value quoted: here a UID holding a
    name, validated by pydicom's own ``validate_value`` as a WARN-mode read does. Nothing of it
    reaches stdout, stderr, warnings or the logs; only a count is logged. The telecom is gone."""
    from pydicom.valuerep import validate_value

    ds = pydicom.dcmread(io.BytesIO(ct_with_phi()))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds["StudyInstanceUID"].value = "1.2.Quaxley^Zebulon.98765432"
        ds.save_as(buffer, enforce_file_format=True)
    real_dcmread = pydicom.dcmread

    def warning_dcmread(*args: object, **kwargs: object) -> pydicom.Dataset:
        read = real_dcmread(*args, **kwargs)  # type: ignore[arg-type]
        validate_value("UI", str(read["StudyInstanceUID"].value), pydicom.config.WARN)
        return read

    monkeypatch.setattr(pydicom, "dcmread", warning_dcmread)
    caplog.set_level(logging.DEBUG)
    logging.getLogger("pydicom").addHandler(handler := logging.StreamHandler())  # as an app might
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # what a server shows: printed once to stderr
            image = read_dicom(buffer.getvalue(), salt=SALT)
    finally:
        logging.getLogger("pydicom").removeHandler(handler)
    out, err = capsys.readouterr()
    shown = out + err + caplog.text
    assert "Quaxley" not in shown
    assert "98765432" not in shown
    assert "example.org" not in shown
    assert "DICOM parsing raised 2 warnings/log records" in caplog.text  # the count only
    assert image.modality == "CT"
    raw = real_dcmread(io.BytesIO(buffer.getvalue()))
    assert "PatientTelecomInformation" in raw
    assert "PatientTelecomInformation" not in deidentify_dataset(raw, salt=SALT)
