"""Build derived (upscaled) DICOM objects with highdicom.

Classic encoding: one single-frame object per source slice, in the source's SOP class (CT Image,
MR Image...), so viewers window, measure and reformat it like the original. Enhanced encoding:
highdicom's Legacy Converted Enhanced CT/MR object made from those same classic objects.
Every UID is deterministic (`dicom_node.derive.uids`), so rewriting after a retry is harmless.
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
)
from pydicom.valuerep import format_number_as_ds

from config.schema import SRNodeConfig
from dicom_node.derive.geometry import scaled_image_position, scaled_pixel_spacing
from dicom_node.derive.pixels import to_stored_pixels
from dicom_node.derive.uids import derived_multiframe_sop_uid, derived_series_uid, derived_sop_uid

SOFTWARE_NAME = "srnode"

TRANSFER_SYNTAXES: dict[str, UID] = {
    "explicit_le": ExplicitVRLittleEndian,
    "jpeg2000_lossless": JPEG2000Lossless,
    "jpegls_lossless": JPEGLSLossless,
    "rle": RLELossless,
}
# pydicom encoder plugin per compressed syntax. RLE: pylibjpeg-rle, ~10x faster than pydicom's own
# numpy encoder at 2048² (BENCHMARKS.md, "Output encoding"); JPEG-LS: pyjpegls (CharLS).
_ENCODER_PLUGINS: dict[UID, str] = {JPEG2000Lossless: "pylibjpeg", JPEGLSLossless: "pyjpegls", RLELossless: "pylibjpeg"}

_ENHANCED_CLASSES = {
    CTImageStorage: hd.legacy.LegacyConvertedEnhancedCTImage,
    MRImageStorage: hd.legacy.LegacyConvertedEnhancedMRImage,
}

# Source attributes that no longer describe the derived pixels, or that are set anew here.
_NOT_COPIED = {
    "PixelData", "FloatPixelData", "DoubleFloatPixelData", "Rows", "Columns", "BitsAllocated",
    "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel", "PixelSpacing",
    "ImagePositionPatient", "RescaleSlope", "RescaleIntercept", "RescaleType",
    "SmallestImagePixelValue", "LargestImagePixelValue", "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries", "PixelPaddingValue", "PixelPaddingRangeLimit", "IconImageSequence",
    "ImageType", "SeriesNumber", "SeriesDescription", "DerivationDescription",
    "DerivationCodeSequence", "SourceImageSequence", "ReferencedSeriesSequence",
    "ContributingEquipmentSequence", "InstanceCreationDate", "InstanceCreationTime",
    "PixelAspectRatio", "PlanarConfiguration", "LossyImageCompressionRatio",
    "LossyImageCompressionMethod", "SOPInstanceUID", "SeriesInstanceUID", "SOPClassUID",
    "InstanceNumber", "ContentDate", "ContentTime", "EncapsulatedPixelDataValueTotalLength",
}


def node_version() -> str:
    """srnode's installed version (for Contributing Equipment)."""
    try:
        return metadata.version("srnode")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class Derivation:
    """What made the derived series: model identity, scale, and output settings."""

    model: str
    checkpoint_sha256: str
    scale: int
    node_ae: str = "SRNODE"
    software_version: str = "0"
    series_description_prefix: str = "SRx{scale} {model}: "
    series_number_offset: int = 1000
    transfer_syntax: str = "explicit_le"

    @classmethod
    def from_config(cls, cfg: SRNodeConfig, model: str, checkpoint_sha256: str, scale: int) -> Derivation:
        """The derivation a job of `model` makes under this node's output settings."""
        return cls(
            model=model, checkpoint_sha256=checkpoint_sha256, scale=scale, node_ae=cfg.node.ae_title,
            software_version=node_version(), series_description_prefix=cfg.output.series_description_prefix,
            series_number_offset=cfg.output.series_number_offset, transfer_syntax=cfg.output.transfer_syntax,
        )

    def series_uid(self, source_series_uid: str) -> str:
        return derived_series_uid(source_series_uid, self.model, self.checkpoint_sha256, self.scale)

    def sop_uid(self, source_sop_uid: str) -> str:
        return derived_sop_uid(source_sop_uid, self.model, self.checkpoint_sha256, self.scale)

    def description(self) -> str:
        sha = self.checkpoint_sha256 or "none (built-in interpolation)"
        return (
            f"Super-resolution x{self.scale} in-plane by {SOFTWARE_NAME} {self.software_version}, "
            f"model {self.model}, checkpoint sha256 {sha}. Values in the source's units (not windowed)."
        )


def _ds_values(values: Sequence[float]) -> list[str]:
    # DS is at most 16 characters; keep as many significant digits as fit.
    return [format_number_as_ds(float(v)) for v in values]


def _text(value: str, limit: int) -> str:
    return value[:limit]


def derived_series_number(source_number: int | None, derivation: Derivation) -> int:
    """SeriesNumber of the derived series: the source's plus output.series_number_offset."""
    return max(1, int(source_number or 0) + derivation.series_number_offset)


def derived_series_description(source_description: str, derivation: Derivation) -> str:
    """SeriesDescription of the derived series: the configured prefix + the source's, ≤ 64 chars."""
    prefix = derivation.series_description_prefix.format(scale=derivation.scale, model=derivation.model)
    return _text(prefix + (source_description or ""), 64)


def _patient_sex(source: Dataset) -> str | None:
    sex = str(getattr(source, "PatientSex", "") or "")
    return sex if sex in ("M", "F", "O") else None


def contributing_equipment(derivation: Derivation) -> hd.ContributingEquipment:
    """The Contributing Equipment item naming node, version, model and checkpoint sha256."""
    # The 64-character digest goes first: padding to an even length lands on the last value,
    # which must not be the one already at LO's 64-character limit.
    versions = [derivation.checkpoint_sha256] if derivation.checkpoint_sha256 else []
    versions += [f"{SOFTWARE_NAME} {derivation.software_version}", _text(derivation.model, 63)]
    return hd.ContributingEquipment(
        manufacturer=SOFTWARE_NAME,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=_text(derivation.model, 64),
        software_versions=versions,
        station_name=_text(derivation.node_ae, 16),
        contribution_description=_text(f"super-resolution x{derivation.scale} {derivation.model}", 64),
    )


def _source_image_item(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    purpose = hd.sr.CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)
    item.PurposeOfReferenceCodeSequence = DicomSequence([purpose])
    return item


def _referenced_series_item(source: Dataset) -> Dataset:
    instance = Dataset()
    instance.ReferencedSOPClassUID = source.SOPClassUID
    instance.ReferencedSOPInstanceUID = source.SOPInstanceUID
    item = Dataset()
    item.SeriesInstanceUID = source.SeriesInstanceUID
    item.ReferencedInstanceSequence = DicomSequence([instance])
    return item


def derive_classic(source: Dataset, values: np.ndarray, derivation: Derivation) -> Dataset:
    """One derived single-frame object from one source slice and its upscaled float values."""
    if values.ndim != 2:
        raise ValueError(f"expected a 2-D slice, got shape {values.shape}")
    scale = derivation.scale
    if values.shape != (int(source.Rows) * scale, int(source.Columns) * scale):
        raise ValueError(
            f"upscaled slice is {values.shape}, expected {(int(source.Rows) * scale, int(source.Columns) * scale)}"
        )
    with warnings.catch_warnings():
        # highdicom warns about single-component patient names, common in de-identified data.
        warnings.simplefilter("ignore", UserWarning)
        ds = _base_object(source, derivation)
    _copy_source_attributes(source, ds)
    _describe_derivation(source, ds, derivation)
    _set_geometry(source, ds, scale)
    _set_pixels(source, ds, values, derivation.transfer_syntax)
    return ds


def _base_object(source: Dataset, derivation: Derivation) -> Dataset:
    return hd.SOPClass(
        study_instance_uid=source.StudyInstanceUID,
        series_instance_uid=derivation.series_uid(source.SeriesInstanceUID),
        series_number=derived_series_number(getattr(source, "SeriesNumber", None), derivation),
        sop_instance_uid=derivation.sop_uid(source.SOPInstanceUID),
        sop_class_uid=source.SOPClassUID,
        instance_number=max(1, int(getattr(source, "InstanceNumber", 1) or 1)),
        modality=source.Modality,
        manufacturer=getattr(source, "Manufacturer", None) or None,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        patient_id=getattr(source, "PatientID", None),
        patient_name=getattr(source, "PatientName", None),
        patient_birth_date=getattr(source, "PatientBirthDate", None) or None,
        patient_sex=_patient_sex(source),
        accession_number=getattr(source, "AccessionNumber", None),
        study_id=getattr(source, "StudyID", None),
        study_date=getattr(source, "StudyDate", None) or None,
        study_time=getattr(source, "StudyTime", None) or None,
        referring_physician_name=getattr(source, "ReferringPhysicianName", None),
        series_description=derived_series_description(str(getattr(source, "SeriesDescription", "") or ""), derivation),
    )


def _copy_source_attributes(source: Dataset, ds: Dataset) -> None:
    # Everything else the source says about patient, study, frame of reference, acquisition and
    # windowing still holds for the derived pixels (same units, same place in the patient).
    for elem in source:
        if elem.tag.group in (0x0002,) or elem.tag.is_private or (elem.tag.group & 0xFF00) == 0x6000:
            continue
        if elem.keyword in _NOT_COPIED or elem.tag in ds:
            continue
        ds.add(copy.deepcopy(elem))
    # Type 2 in the image IODs: present, empty where the source does not know them.
    for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "ReferringPhysicianName"):
        if keyword not in ds:
            setattr(ds, keyword, None)


def _describe_derivation(source: Dataset, ds: Dataset, derivation: Derivation) -> None:
    rest = list(getattr(source, "ImageType", []))[2:]
    if not rest and source.Modality == "CT":
        rest = ["AXIAL"]
    ds.ImageType = ["DERIVED", "SECONDARY", *rest]
    ds.DerivationDescription = _text(derivation.description(), 1024)
    ds.SourceImageSequence = DicomSequence([_source_image_item(source)])
    ds.ReferencedSeriesSequence = DicomSequence([_referenced_series_item(source)])
    ds.ContributingEquipmentSequence = DicomSequence(
        [*getattr(source, "ContributingEquipmentSequence", []), contributing_equipment(derivation)]
    )


def _set_geometry(source: Dataset, ds: Dataset, scale: int) -> None:
    if "PixelSpacing" in source:
        ds.PixelSpacing = _ds_values(scaled_pixel_spacing(source.PixelSpacing, scale))
        if "ImagePositionPatient" in source and "ImageOrientationPatient" in source:
            ds.ImagePositionPatient = _ds_values(
                scaled_image_position(
                    source.ImagePositionPatient, source.ImageOrientationPatient, source.PixelSpacing, scale
                )
            )
    elif "ImagePositionPatient" in source:
        ds.ImagePositionPatient = source.ImagePositionPatient


def _set_pixels(source: Dataset, ds: Dataset, values: np.ndarray, transfer_syntax: str) -> None:
    # JPEG 2000 needs unsigned samples here; JPEG-LS encodes signed ones, but as their unsigned bit
    # patterns, so air at -1000 HU next to tissue at +40 becomes a 64 k jump: shifted, it compresses.
    stored = to_stored_pixels(values, source, unsigned_only=transfer_syntax in ("jpeg2000_lossless", "jpegls_lossless"))
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = getattr(source, "PhotometricInterpretation", "MONOCHROME2")
    ds.Rows, ds.Columns = stored.array.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = stored.pixel_representation
    if "RescaleSlope" in source or "RescaleIntercept" in source or source.Modality == "CT":
        ds.RescaleSlope = stored.slope
        ds.RescaleIntercept = stored.intercept
        if "RescaleType" in source:
            ds.RescaleType = source.RescaleType
    ds.PixelData = stored.array.tobytes()
    ds["PixelData"].VR = "OW"


def encode(ds: Dataset, transfer_syntax: str) -> Dataset:
    """Re-encode `ds` in place in the configured transfer syntax (lossless only)."""
    uid = TRANSFER_SYNTAXES[transfer_syntax]
    if uid != ds.file_meta.TransferSyntaxUID:
        # pydicom would otherwise give a compressed copy a new SOP Instance UID: ours are deterministic.
        ds.compress(uid, encoding_plugin=_ENCODER_PLUGINS.get(uid, ""), generate_instance_uid=False)
    return ds


def derive_enhanced(
    classic: Sequence[Dataset], source_series_uid: str, derivation: Derivation
) -> Dataset:
    """One Legacy Converted Enhanced CT/MR object made from the derived classic objects of a series."""
    if not classic:
        raise ValueError("no derived slices to convert")
    sop_class = classic[0].SOPClassUID
    if sop_class not in _ENHANCED_CLASSES:
        raise ValueError(f"no enhanced multi-frame conversion for SOP class {sop_class}")
    first = classic[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        converted = _convert(classic, source_series_uid, derivation)
    converted.SeriesDescription = first.SeriesDescription
    converted.DerivationDescription = first.DerivationDescription
    # Common Instance Reference: the frames cite source and referenced images, so the object
    # must list them as evidence (Type 1C in the Enhanced CT/MR Image module).
    sources = [item for ds in classic for item in getattr(ds, "SourceImageSequence", [])]
    referenced = [item for ds in classic for item in getattr(ds, "ReferencedImageSequence", [])]
    if sources:
        converted.SourceImageEvidenceSequence = _evidence(first.StudyInstanceUID, source_series_uid, sources)
    if referenced:
        converted.ReferencedImageEvidenceSequence = _evidence(
            first.StudyInstanceUID, source_series_uid, referenced
        )
    return converted


def _convert(classic: Sequence[Dataset], source_series_uid: str, derivation: Derivation) -> Dataset:
    first = classic[0]
    return _ENHANCED_CLASSES[first.SOPClassUID](
        legacy_datasets=list(classic),
        series_instance_uid=first.SeriesInstanceUID,
        series_number=int(first.SeriesNumber),
        sop_instance_uid=derived_multiframe_sop_uid(
            source_series_uid, derivation.model, derivation.checkpoint_sha256, derivation.scale
        ),
        instance_number=1,
        transfer_syntax_uid=TRANSFER_SYNTAXES[derivation.transfer_syntax],
        contributing_equipment=[contributing_equipment(derivation)],
    )


def _evidence(study_uid: str, series_uid: str, items: Sequence[Dataset]) -> DicomSequence:
    # Referenced images of a CT are (nearly always) in the same study; the series of a localizer
    # is not recorded in ReferencedImageSequence, so the source series stands in for it.
    seen: dict[str, Dataset] = {}
    for item in items:
        ref = Dataset()
        ref.ReferencedSOPClassUID = item.ReferencedSOPClassUID
        ref.ReferencedSOPInstanceUID = item.ReferencedSOPInstanceUID
        seen.setdefault(str(item.ReferencedSOPInstanceUID), ref)
    series = Dataset()
    series.SeriesInstanceUID = series_uid
    series.ReferencedSOPSequence = DicomSequence(list(seen.values()))
    study = Dataset()
    study.StudyInstanceUID = study_uid
    study.ReferencedSeriesSequence = DicomSequence([series])
    return DicomSequence([study])
