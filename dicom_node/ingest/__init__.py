"""Put an instance on disk and in the index: the one path every producer uses.

The C-STORE handler, the derived-series writer, Q/R tests and fixtures all call
`store_encoded` (bytes as received), `store_dataset` (a pydicom Dataset) or their batch forms
(`store_encoded_many`, `store_datasets`: one commit for several instances), which validate,
write the file atomically and upsert Patient/Study/Series/Instance through `index_instance`.

Policies (see docs/storage.md):
- Duplicate SOP Instance UID in the same series: the new file replaces the old one (last write
  wins; a PACS re-sends to correct) and the row is updated. The same SOP Instance UID arriving
  under a different study/series is refused (`DuplicateConflict`).
- Any arrival (new or duplicate) sets the series back to `receiving` and restarts its
  stability timer, whatever its state: the stable hook then fires again and routing (which is
  idempotent) decides whether there is anything new to do.
- Objects without pixel data (SR, RTSTRUCT, presentation states, ...) are stored and indexed with
  is_image=False; assembly never hands a series without images to the next stage. An image
  storage SOP class without pixel data is refused (a truncated image, not a non-image object).
- Receive-time validation (`parse_header`, `validate_instance`) follows docs/storage.md, "Bad input".

PHI: pydicom reports odd values through `warnings.warn` as well as logging, quoting the raw bytes
(a corrupt length field makes them include the patient's name and ID). Importing this package turns
off pydicom's value validation on reading (the main source) and routes every warning through
logging (`logging.captureWarnings`), where `_QuietWhileParsing` drops whatever pydicom says while a
received dataset is parsed in that thread: the node logs one line per refusal, without values.

Modules:
- `errors`: the refusals (`RejectedInstance` and its subclasses, each with its DIMSE status).
- `header`: values read from a parsed header (`instance_values`, `slice_position`, `has_pixel_data`).
- `validate`: receive-time validation (`validate_instance`: SOP class, image attributes, pixel data).
- `parse`: Part 10 bytes <-> Dataset (`parse_header`, `decode_header`, the quiet decode, `encode_part10`).
- `index_writer`: the index rows (`index_instance`, the hot path's compiled statements, the retried
  transaction).
- `files`: the instance files (atomic writes, one directory fsync per batch, removal on refusal).
- `store`: one instance, checked, written and indexed (`store_encoded`, `store_dataset`, `StoreResult`),
  and the cache of known series behind the hot path.
- `batch`: several instances in one transaction (`store_encoded_many`, `store_datasets`).
"""
from __future__ import annotations

from dicom_node.ingest.batch import store_datasets, store_encoded_many
from dicom_node.ingest.errors import (
    BadUID,
    DuplicateConflict,
    MalformedDataset,
    RejectedInstance,
    SOPClassMismatch,
)
from dicom_node.ingest.header import PIXEL_TAGS, has_pixel_data, instance_values, slice_position
from dicom_node.ingest.index_writer import index_instance
from dicom_node.ingest.parse import decode_header, encode_part10, parse_header, quiet_library_warnings
from dicom_node.ingest.store import StoreResult, store_dataset, store_encoded
from dicom_node.ingest.validate import requires_pixel_data, validate_instance

__all__ = [
    "PIXEL_TAGS",
    "BadUID",
    "DuplicateConflict",
    "MalformedDataset",
    "RejectedInstance",
    "SOPClassMismatch",
    "StoreResult",
    "decode_header",
    "encode_part10",
    "has_pixel_data",
    "index_instance",
    "instance_values",
    "parse_header",
    "quiet_library_warnings",
    "requires_pixel_data",
    "slice_position",
    "store_dataset",
    "store_datasets",
    "store_encoded",
    "store_encoded_many",
    "validate_instance",
]
