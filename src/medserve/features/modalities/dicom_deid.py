"""DICOM header de-identification: the PS3.15 Annex E Basic Application Level Confidentiality
Profile, applied before anything from a DICOM request is kept, logged or echoed.

The table below is the basic-profile column of PS3.15 Table E.1-1 for the attributes an image
object carries (where the standard allows a choice, the stricter action is taken). On top of it,
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

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

REMOVE: Final = "X"
EMPTY: Final = "Z"
DUMMY: Final = "D"
UID: Final = "U"

# keyword -> action (PS3.15 Table E.1-1, Basic Profile)
BASIC_PROFILE: Final[dict[str, str]] = {
    "AccessionNumber": EMPTY,
    "AcquisitionComments": REMOVE,
    "AcquisitionContextSequence": REMOVE,
    "AcquisitionDate": REMOVE,
    "AcquisitionDateTime": REMOVE,
    "AcquisitionDeviceProcessingDescription": REMOVE,
    "AcquisitionTime": REMOVE,
    "ActualHumanPerformersSequence": REMOVE,
    "AdditionalPatientHistory": REMOVE,
    "AdmissionID": REMOVE,
    "AdmittingDate": REMOVE,
    "AdmittingDiagnosesCodeSequence": REMOVE,
    "AdmittingDiagnosesDescription": REMOVE,
    "AdmittingTime": REMOVE,
    "Allergies": REMOVE,
    "Arbitrary": REMOVE,
    "AuthorObserverSequence": REMOVE,
    "BranchOfService": REMOVE,
    "CassetteID": REMOVE,
    "CommentsOnThePerformedProcedureStep": REMOVE,
    "ConcatenationUID": UID,
    "ConsultingPhysicianName": REMOVE,
    "ContentCreatorName": EMPTY,
    "ContentDate": EMPTY,
    "ContentSequence": REMOVE,
    "ContentTime": EMPTY,
    "ContextGroupExtensionCreatorUID": UID,
    "CountryOfResidence": REMOVE,
    "CurrentPatientLocation": REMOVE,
    "CurveData": REMOVE,
    "CurveDate": REMOVE,
    "CurveTime": REMOVE,
    "DerivationDescription": REMOVE,
    "DetectorID": REMOVE,
    "DeviceSerialNumber": REMOVE,
    "DeviceUID": UID,
    "DigitalSignaturesSequence": REMOVE,
    "DimensionOrganizationUID": UID,
    "DischargeDiagnosisDescription": REMOVE,
    "EthnicGroup": REMOVE,
    "FillerOrderNumberImagingServiceRequest": REMOVE,
    "FrameComments": REMOVE,
    "FrameOfReferenceUID": UID,
    "GantryID": REMOVE,
    "GeneratorID": REMOVE,
    "IconImageSequence": REMOVE,
    "ImageComments": REMOVE,
    "ImagePresentationComments": REMOVE,
    "ImagingServiceRequestComments": REMOVE,
    "InstanceCreationDate": REMOVE,
    "InstanceCreationTime": REMOVE,
    "InstanceCreatorUID": UID,
    "InstitutionAddress": REMOVE,
    "InstitutionCodeSequence": REMOVE,
    "InstitutionName": REMOVE,
    "InstitutionalDepartmentName": REMOVE,
    "InsurancePlanIdentification": REMOVE,
    "IntendedRecipientsOfResultsIdentificationSequence": REMOVE,
    "InterpretationApproverSequence": REMOVE,
    "InterpretationAuthor": REMOVE,
    "InterpretationRecorder": REMOVE,
    "InterpretationTranscriber": REMOVE,
    "IrradiationEventUID": UID,
    "IssuerOfAdmissionID": REMOVE,
    "IssuerOfPatientID": REMOVE,
    "LastMenstrualDate": REMOVE,
    "MediaStorageSOPInstanceUID": UID,
    "MedicalAlerts": REMOVE,
    "MedicalRecordLocator": REMOVE,
    "MilitaryRank": REMOVE,
    "ModifiedAttributesSequence": REMOVE,
    "ModifyingDeviceID": REMOVE,
    "ModifyingDeviceManufacturer": REMOVE,
    "NameOfPhysiciansReadingStudy": REMOVE,
    "NamesOfIntendedRecipientsOfResults": REMOVE,
    "Occupation": REMOVE,
    "OperatorIdentificationSequence": REMOVE,
    "OperatorsName": REMOVE,
    "OriginalAttributesSequence": REMOVE,
    "OtherPatientIDs": REMOVE,
    "OtherPatientIDsSequence": REMOVE,
    "OtherPatientNames": REMOVE,
    "OverlayComments": REMOVE,
    "OverlayData": REMOVE,
    "ParticipantSequence": REMOVE,
    "PatientAddress": REMOVE,
    "PatientAlternativeCalendar": REMOVE,
    "PatientBirthDateInAlternativeCalendar": REMOVE,
    "PatientDeathDateInAlternativeCalendar": REMOVE,
    "PatientAge": REMOVE,
    "PatientBirthDate": EMPTY,
    "PatientBirthName": REMOVE,
    "PatientBirthTime": REMOVE,
    "PatientComments": REMOVE,
    "PatientID": EMPTY,
    "PatientInsurancePlanCodeSequence": REMOVE,
    "PatientMotherBirthName": REMOVE,
    "PatientName": EMPTY,
    "PatientPrimaryLanguageCodeSequence": REMOVE,
    "PatientReligiousPreference": REMOVE,
    "PatientSex": EMPTY,
    "PatientSexNeutered": REMOVE,
    "PatientSize": REMOVE,
    "PatientState": REMOVE,
    "PatientTelecomInformation": REMOVE,
    "PatientTelephoneNumbers": REMOVE,
    "PatientWeight": REMOVE,
    "PerformedLocation": REMOVE,
    "PerformedProcedureStepDescription": REMOVE,
    "PerformedProcedureStepID": REMOVE,
    "PerformedProcedureStepStartDate": REMOVE,
    "PerformedProcedureStepStartTime": REMOVE,
    "PerformedStationAETitle": REMOVE,
    "PerformedStationName": REMOVE,
    "PerformingPhysicianIdentificationSequence": REMOVE,
    "PerformingPhysicianName": REMOVE,
    "PersonAddress": REMOVE,
    "PersonName": REMOVE,
    "PersonTelephoneNumbers": REMOVE,
    "PhysicianApprovingInterpretation": REMOVE,
    "PhysiciansOfRecord": REMOVE,
    "PhysiciansOfRecordIdentificationSequence": REMOVE,
    "PhysiciansReadingStudyIdentificationSequence": REMOVE,
    "PlacerOrderNumberImagingServiceRequest": REMOVE,
    "PlateID": REMOVE,
    "PregnancyStatus": REMOVE,
    "ProtocolName": REMOVE,
    "ReasonForTheImagingServiceRequest": REMOVE,
    "ReasonForTheRequestedProcedure": REMOVE,
    "ReasonForStudy": REMOVE,
    "ReferencedImageSequence": REMOVE,
    "ReferencedPatientAliasSequence": REMOVE,
    "ReferencedPatientSequence": REMOVE,
    "ReferencedPerformedProcedureStepSequence": REMOVE,
    "ReferencedSOPInstanceUID": UID,
    "ReferencedStudySequence": REMOVE,
    "ReferringPhysicianAddress": REMOVE,
    "ReferringPhysicianIdentificationSequence": REMOVE,
    "ReferringPhysicianName": EMPTY,
    "ReferringPhysicianTelephoneNumbers": REMOVE,
    "RegionOfResidence": REMOVE,
    "RelatedFrameOfReferenceUID": UID,
    "RequestAttributesSequence": REMOVE,
    "RequestedProcedureDescription": REMOVE,
    "RequestedProcedureID": REMOVE,
    "RequestingPhysician": REMOVE,
    "RequestingService": REMOVE,
    "ResponsibleOrganization": REMOVE,
    "ResponsiblePerson": REMOVE,
    "ResultsComments": REMOVE,
    "ResultsDistributionListSequence": REMOVE,
    "ResultsIDIssuer": REMOVE,
    "ReviewerName": REMOVE,
    "ScheduledHumanPerformersSequence": REMOVE,
    "ScheduledPatientInstitutionResidence": REMOVE,
    "ScheduledPerformingPhysicianIdentificationSequence": REMOVE,
    "ScheduledPerformingPhysicianName": REMOVE,
    "ScheduledProcedureStepDescription": REMOVE,
    "SeriesDate": REMOVE,
    "SeriesDescription": REMOVE,
    "SeriesInstanceUID": UID,
    "SeriesTime": REMOVE,
    "ServiceEpisodeDescription": REMOVE,
    "ServiceEpisodeID": REMOVE,
    "SmokingStatus": REMOVE,
    "SOPInstanceUID": UID,
    "SourceImageSequence": REMOVE,
    "SpecialNeeds": REMOVE,
    "StationName": REMOVE,
    "StorageMediaFileSetUID": UID,
    "StudyComments": REMOVE,
    "StudyDate": EMPTY,
    "StudyDescription": REMOVE,
    "StudyID": EMPTY,
    "StudyIDIssuer": REMOVE,
    "StudyInstanceUID": UID,
    "StudyTime": EMPTY,
    "SynchronizationFrameOfReferenceUID": UID,
    "TextComments": REMOVE,
    "TextString": REMOVE,
    "TimezoneOffsetFromUTC": REMOVE,
    "TopicAuthor": REMOVE,
    "TopicKeywords": REMOVE,
    "TopicSubject": REMOVE,
    "TopicTitle": REMOVE,
    "TransactionUID": UID,
    "UID": UID,
    "VerifyingObserverIdentificationCodeSequence": REMOVE,
    "VerifyingObserverName": EMPTY,
    "VerifyingObserverSequence": REMOVE,
    "VerifyingOrganization": REMOVE,
    "VisitComments": REMOVE,
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
