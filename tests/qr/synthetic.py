"""Small generated CT instances with chosen patient/study/series attributes (for matching tests)."""
from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ROOT = "1.2.826.0.1.3680043.10.1234."  # test-only UID root


def make_instance(
    patient_name: str = "DOE^JOHN",
    patient_id: str = "P1",
    study_uid: str | None = None,
    study_date: str = "20240101",
    study_time: str = "101500",
    accession: str = "ACC1",
    study_description: str = "CHEST",
    series_uid: str | None = None,
    modality: str = "CT",
    series_number: int = 1,
    series_description: str = "AXIAL 1.0",
    sop_uid: str | None = None,
    instance_number: int = 1,
    size: int = 8,
) -> Dataset:
    """A valid CT Image instance with a tiny int16 HU pixel array."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid or generate_uid(ROOT)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid or generate_uid(ROOT)
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.AccessionNumber = accession
    ds.StudyID = "1"
    ds.StudyDescription = study_description
    ds.ReferringPhysicianName = ""
    ds.SeriesInstanceUID = series_uid or generate_uid(ROOT)
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.InstanceNumber = instance_number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.FrameOfReferenceUID = ds.StudyInstanceUID + ".1"
    ds.ImagePositionPatient = [0.0, 0.0, float(instance_number)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [1.0, 1.0]
    ds.SliceThickness = 1.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.PixelData = (np.arange(size * size, dtype=np.int16) - 1000).tobytes()
    return ds
