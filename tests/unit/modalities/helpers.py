"""Shared builders for the modalities tests (real files shipped by pydicom and MiniLM weights)."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

PHI = {
    "PatientName": "Quaxley^Zebulon",
    "PatientID": "MRN-98765432",
    "PatientBirthDate": "19470312",
    "InstitutionName": "St Quaxley Memorial Hospital",
    "ReferringPhysicianName": "Fennimore^Ottoline",
    "AccessionNumber": "ACC-55501234",
    "StudyDescription": "Quaxley chest follow-up",
    "OperatorsName": "Tech^Wilhelmina",
    "PatientTelecomInformation": "quaxley@example.org",
    "ResponsiblePerson": "Quaxley^Ermintrude",
    "ResponsibleOrganization": "Quaxley Family Trust",
    "PatientBirthDateInAlternativeCalendar": "5707-06-14",
}
PRIVATE_PHI = "Zebulon private note 4471"
NESTED_PHI = "Prudence^Quaxley"


def dicom_file(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None
    return Path(str(path))


def ct_with_phi() -> bytes:
    """pydicom's bundled CT_small.dcm with identifying values written into its header."""
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    block = ds.private_block(0x0011, "QUAXLEY HOSPITAL", create=True)
    block.add_new(0x01, "LO", PRIVATE_PHI)
    item = Dataset()
    item.PersonName = NESTED_PHI
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    ds.ReferencedPerformedProcedureStepSequence = Sequence([item])
    ds.ContentSequence = Sequence([item])
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def phi_strings() -> list[str]:
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    values = [*PHI.values(), PRIVATE_PHI, NESTED_PHI, "Quaxley", "Zebulon", "98765432"]
    return [*values, str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)]


def text_bundle(config: pytest.Config) -> Path:
    """The demo text bundle (~90 MB), built once and kept in pytest's cache directory."""
    from medserve.features.modalities.recipes.build_text_classifier import build

    cache = getattr(config, "cache", None)  # absent under -p no:cacheprovider
    if cache is not None:
        folder = Path(cache.mkdir("medserve-text-bundle"))
    else:
        folder = Path(tempfile.gettempdir()) / f"medserve-text-bundle-{os.getuid()}"
        folder.mkdir(exist_ok=True)
    path = folder / "triage-text.zip"
    if not path.exists():
        tmp = folder / "triage-text.zip.partial"
        build(tmp)
        tmp.replace(path)
    return path
