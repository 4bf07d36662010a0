"""Results back to the PACS as DICOM (runs in executors: score's Python tasks, beside the prediction).

For every image of a scored DICOM object (``score.dicom_results``), one Comprehensive SR following
TID 1500 (Measurement Report) in a new series of the source's study, referencing the source instance
(and frame); for an image flagged for review, also a FRACTIONAL Segmentation (probability, 0..255)
of the heatmap the run's explanation made, in the source's pixel geometry, which viewers overlay on
the source. Both are built with highdicom; docs/dicom.md is the conformance statement (objects,
templates, codes, UIDs).

Identity: the new objects' UIDs are derived from (kind, source instance, frame, model, version)
under ``dicom.uid_root`` (``object_uid``), so a rerun writes the same UIDs and replaces, never adds.
They copy the source's patient and study modules, as an object in that study must; those values
live only in the parsed header (``result_header``) and the written object, never in a table or a log.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass

import numpy as np

EXAMPLE_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root: the documented default for tests
LOCAL_SCHEME = "99LSPARK"  # a private coding scheme (PS3.16 8.2: designators starting "99")
SR_SERIES_NUMBER, SEG_SERIES_NUMBER = 7301, 7302
NOT_FOR_DIAGNOSIS = ("Research use only; not for diagnosis. Computed by lesionspark from the referenced "
                     "image without clinician review; a clinician decides.")
# The source attributes the result objects copy or need: patient and study modules, the references,
# and the geometry a Segmentation must match. Nothing else of the source is kept.
HEADER_KEYWORDS = (
    "SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber", "InstanceNumber",
    "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit",
    "PixelRepresentation", "PlanarConfiguration", "NumberOfFrames",
    "PatientOrientation", "Laterality", "ImageLaterality")
TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
         "ReferringPhysicianName", "StudyID", "AccessionNumber")
# (scheme, value, meaning) of each class the models know; docs/dicom.md says why each was chosen.
CLASS_CODES = {
    "akiec": ("SCT", "201101007", "Actinic keratosis"),
    "bcc": ("SCT", "254701007", "Basal cell carcinoma of skin"),
    "bkl": (LOCAL_SCHEME, "BKL", "Benign keratosis-like lesion"),
    "df": (LOCAL_SCHEME, "DF", "Dermatofibroma"),
    "mel": ("SCT", "93655004", "Malignant melanoma of skin"),
    "nv": ("SCT", "400096001", "Melanocytic nevus"),
    "vasc": ("SCT", "400210000", "Angioma"),
    "benign": ("SCT", "30807003", "Benign"),
    "malignant": ("SCT", "21594007", "Malignant"),
}
REVIEW = (LOCAL_SCHEME, "REVIEW", "Clinician review recommended")
DERMOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.7"


class NotBuilt(ValueError):
    """An object this source cannot have; the message is fixed text, safe for a table."""


@dataclass(frozen=True)
class ModelIdentity:
    """What the objects say of the algorithm: its name, version, card fingerprint, calibration note."""
    name: str
    version: str
    card_sha256: str
    calibration: str
    heatmap: str

    @classmethod
    def from_card(cls, card: dict, heatmap: str) -> "ModelIdentity":
        return cls(card["name"], card["version"], card_fingerprint(card), calibration_note(card), heatmap)


def card_fingerprint(card: dict) -> str:
    """SHA-256 of the model card as canonical JSON (sorted keys): the card the run scored with."""
    return hashlib.sha256(json.dumps(card, sort_keys=True, default=str).encode()).hexdigest()


def calibration_note(card: dict) -> str:
    """One sentence on how the probabilities were calibrated, from the card."""
    cal = card.get("calibration") or {}
    if cal.get("temperature") is None:
        return "Probabilities are the model's outputs, not calibrated (the model card records no calibration)."
    return (f"Probabilities calibrated by temperature scaling, T = {float(cal['temperature']):.3f}, fitted on the "
            f"{cal.get('split', 'val')} split for the lowest {cal.get('objective', 'ece')}.")


def object_uid(root: str, *parts) -> str:
    """A UID under ``root`` derived from ``parts`` (SHA-512 of them, pydicom's ``generate_uid``):
    the same parts give the same UID, so a rerun replaces its objects."""
    from pydicom.uid import generate_uid
    return generate_uid(prefix=root, entropy_srcs=[str(p) for p in parts])


def check_root(root: str) -> str:
    """``dicom.uid_root``: digits and dots, ending with a dot, leaving room for a suffix."""
    import re
    if not isinstance(root, str) or not re.fullmatch(r"[1-9][0-9]*(\.(0|[1-9][0-9]*))*\.", root) or len(root) > 40:
        raise ValueError(f"dicom.uid_root must be an organisation's UID root ending with '.', at most 40 "
                         f"characters (e.g. '1.2.826.0.1.3680043.8.498.'), got {root!r}")
    return root


def result_header(ds):
    """The source's attributes the result objects need (``HEADER_KEYWORDS``), as a new Dataset;
    Type 2 attributes the source lacks are present and empty, as the result's modules require."""
    from pydicom.dataset import Dataset
    out = Dataset()
    for keyword in HEADER_KEYWORDS:
        if keyword in ds:
            setattr(out, keyword, ds[keyword].value)
    for keyword in TYPE2:
        if keyword not in out:
            setattr(out, keyword, "")
    return out


def _code(triple):
    from highdicom.sr import CodedConcept
    scheme, value, meaning = triple
    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def _frames(source) -> int:
    """The frames a result can reference: the object's, where its IOD is a multi-frame one; 1 for a
    single-frame IOD (a Secondary Capture holding several frames is referenced as one instance)."""
    from highdicom._standard_utils import is_multiframe_image
    return int(source.get("NumberOfFrames", 1) or 1) if is_multiframe_image(source) else 1


def _local_scheme():
    from pydicom.dataset import Dataset
    item = Dataset()
    item.CodingSchemeDesignator = LOCAL_SCHEME
    item.CodingSchemeName = "lesionspark local codes"
    item.CodingSchemeResponsibleOrganization = "lesionspark"
    return item


def _to_bytes(obj) -> bytes:
    buf = io.BytesIO()
    obj.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def build_sr(source, frame: int | None, classes: list, probabilities: list, malignant: float, flagged: bool,
             model: ModelIdentity, root: str) -> tuple[str, bytes]:
    """(SOP Instance UID, Part 10 bytes) of the Comprehensive SR (TID 1500) for one scored image of
    ``source`` (a ``result_header``): the predicted class as a coded finding, every class's
    probability and the malignant probability as measurements, the review flag, the calibration
    note and the not-for-diagnosis statement, the model as algorithm and device observer."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    key = (source.SOPInstanceUID, frame or 1, model.name, model.version)
    algorithm = hd.sr.AlgorithmIdentification(name=f"lesionspark {model.name}", version=model.version,
                                              parameters={"model_card_sha256": model.card_sha256})
    unit = _code(("UCUM", "1", "no units"))
    measurements = [hd.sr.Measurement(name=_code(CLASS_CODES[c]), value=float(p), unit=unit, algorithm_id=algorithm)
                    for c, p in zip(classes, probabilities)]
    measurements.append(hd.sr.Measurement(name=codes.DCM.ProbabilityOfCancer, value=float(malignant), unit=unit,
                                          algorithm_id=algorithm))
    predicted = classes[int(np.argmax(probabilities))]
    evaluations = [hd.sr.QualitativeEvaluation(codes.DCM.Finding, _code(CLASS_CODES[predicted])),
                   hd.sr.QualitativeEvaluation(_code(REVIEW), codes.SCT.Yes if flagged else codes.SCT.No)]
    frames = [frame] if frame is not None and _frames(source) > 1 else None
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=object_uid(root, "tracking", *key),
                                                     identifier="lesionspark lesion classification"),
        finding_type=codes.SCT.SkinLesion, algorithm_id=algorithm, measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source, referenced_frame_numbers=frames)])
    for text in (model.calibration, NOT_FOR_DIAGNOSIS):
        group[0].ContentSequence.append(hd.sr.TextContentItem(name=codes.DCM.Comment, value=text,
                                                              relationship_type="CONTAINS"))
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=object_uid(root, "device", model.name, model.version), name="lesionspark",
        manufacturer_name="lesionspark", model_name=f"{model.name} {model.version}")
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device)),
        procedure_reported=codes.SCT.DermoscopicPhotography if source.SOPClassUID == DERMOSCOPIC
        else codes.SCT.ImagingProcedure,
        imaging_measurements=[group], title=codes.DCM.ImagingMeasurementReport)
    uid = object_uid(root, "sr", *key)
    sr = hd.sr.ComprehensiveSR(
        evidence=[source], content=report[0], series_instance_uid=object_uid(root, "sr-series", source.StudyInstanceUID,
                                                                            model.name, model.version),
        series_number=SR_SERIES_NUMBER, sop_instance_uid=uid, instance_number=frame or 1, manufacturer="lesionspark",
        is_complete=True, series_description="lesionspark AI result (not for diagnosis)")
    sr.CodingSchemeIdentificationSequence = [_local_scheme()]
    return uid, _to_bytes(sr)


def map_to_source(heatmap: np.ndarray, rows: int, columns: int, mode: str) -> np.ndarray:
    """A model-sized heatmap (0..1) in the source frame's geometry: the inverse of ``images.fit_array``
    (``squash``: stretched back; ``crop``: the centre square, zero outside it)."""
    from PIL import Image
    img = Image.fromarray(np.clip(heatmap, 0, 1).astype(np.float32), "F")
    if mode != "crop":
        return np.asarray(img.resize((columns, rows), Image.BILINEAR), dtype=np.float32)
    side = min(rows, columns)
    out = np.zeros((rows, columns), np.float32)
    top, left = (rows - side) // 2, (columns - side) // 2
    out[top:top + side, left:left + side] = np.asarray(img.resize((side, side), Image.BILINEAR), dtype=np.float32)
    return out


def build_seg(source, frame: int | None, heatmap: np.ndarray, mode: str, predicted: str, model: ModelIdentity,
              root: str) -> tuple[str, bytes]:
    """(SOP Instance UID, Part 10 bytes) of a FRACTIONAL (probability) Segmentation of one image's
    heatmap, in the source's rows and columns, referencing the source; ``NotBuilt`` for a frame of
    a multi-frame source (no plane positions to place it by)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    if _frames(source) > 1 and "FrameOfReferenceUID" not in source:
        raise NotBuilt("no Segmentation for one frame of a multi-frame object without a frame of reference "
                       "(highdicom builds those for a single-frame source only); the report references the frame")
    key = (source.SOPInstanceUID, frame or 1, model.name, model.version)
    pixels = map_to_source(heatmap, int(source.Rows), int(source.Columns), mode)
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label=f"evidence for {predicted} ({model.heatmap})",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure, segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=f"lesionspark {model.name} {model.heatmap}", family=codes.DCM.ArtificialIntelligence,
            version=model.version))
    uid = object_uid(root, "seg", *key)
    seg = hd.seg.Segmentation(
        source_images=[source], pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY, max_fractional_value=255,
        segment_descriptions=[segment],
        series_instance_uid=object_uid(root, "seg-series", source.StudyInstanceUID, model.name, model.version),
        series_number=SEG_SERIES_NUMBER, sop_instance_uid=uid, instance_number=frame or 1, manufacturer="lesionspark",
        manufacturer_model_name=f"lesionspark {model.name}", software_versions=model.version,
        device_serial_number=model.card_sha256[:16], series_description="lesionspark heatmap (not for diagnosis)")
    seg.PatientOrientation = source.get("PatientOrientation", "")  # Type 2C: no frame of reference
    return uid, _to_bytes(seg)
