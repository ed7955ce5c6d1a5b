"""DICOM header de-identification: the PS3.15 Annex E Basic Application Level Confidentiality
Profile, applied before anything from a DICOM request is kept, logged or echoed.

``dicom_profile`` holds the basic-profile column of PS3.15 Table E.1-1 (2024b), every attribute
of it (where the standard allows a choice, the stricter action is taken). On top of it,
and as the profile requires: every private tag is removed, overlay and curve groups are removed,
every person name (VR PN) left anywhere is emptied, every date/time (DA, DT, TM) is emptied, and
UIDs are replaced by salted one-way ``2.25`` UIDs so that instances of one study still share a
study UID but the original cannot be recovered. Nested sequences are processed recursively.
Burned-in text in the pixels is out of the profile's scope: medserve never stores pixels.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Final

from medserve.features.modalities.dicom_profile import EMPTIED, REMOVED, REPLACED_UIDS

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

REMOVE: Final = "X"
EMPTY: Final = "Z"
DUMMY: Final = "D"
UID: Final = "U"

# keyword -> action: PS3.15 Table E.1-1, Basic Profile (the table is in ``dicom_profile``)
BASIC_PROFILE: Final[dict[str, str]] = {
    **dict.fromkeys(EMPTIED, EMPTY),
    **dict.fromkeys(REPLACED_UIDS, UID),
    **dict.fromkeys(REMOVED, REMOVE),
}
_REPEATING_GROUPS: Final = (0x5000, 0x6000)  # curves and overlays (50xx / 60xx)
_DATE_TIME_VRS: Final = frozenset({"DA", "DT", "TM"})
METHOD: Final = "DICOM PS3.15 Annex E Basic Profile (medserve)"


def anonymous_uid(uid: str, salt: bytes) -> str:
    """A ``2.25.<int>`` UID derived one-way from ``uid``: stable under one salt, not reversible."""
    digest = hmac.new(salt, uid.encode("ascii", "replace"), hashlib.sha256).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def deidentify_dataset(ds: Dataset, *, salt: bytes) -> Dataset:
    """De-identify ``ds`` in place (and return it) by the Annex E basic profile."""
    ds.remove_private_tags()
    _clean(ds, salt)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta:
        meta.MediaStorageSOPInstanceUID = anonymous_uid(str(meta.MediaStorageSOPInstanceUID), salt)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD
    return ds


def _clean(ds: Dataset, salt: bytes) -> None:
    for elem in list(ds):
        group = elem.tag.group
        if group & 0xFF00 in _REPEATING_GROUPS:
            del ds[elem.tag]
            continue
        action = BASIC_PROFILE.get(elem.keyword) if elem.keyword else None
        if action == REMOVE:
            del ds[elem.tag]
            continue
        if elem.VR == "SQ":
            for item in elem.value or []:
                _clean(item, salt)
            if action == EMPTY:
                elem.value = []
            continue
        if action == UID or (action is None and elem.VR == "UI" and _is_instance_uid(elem.keyword)):
            if elem.value:
                values = elem.value if elem.VM > 1 else [elem.value]
                replaced = [anonymous_uid(str(v), salt) for v in values]
                elem.value = replaced if elem.VM > 1 else replaced[0]
            continue
        if action in (EMPTY, DUMMY) or elem.VR == "PN" or elem.VR in _DATE_TIME_VRS:
            elem.value = "" if elem.VR not in {"US", "SS", "UL", "SL", "FL", "FD"} else None


def _is_instance_uid(keyword: str) -> bool:
    """Instance-identifying UIDs not named in the table; class UIDs (SOP class, transfer
    syntax) identify a kind of object, not a patient, and are kept."""
    return keyword.endswith("InstanceUID") or keyword.endswith("FrameOfReferenceUID")
