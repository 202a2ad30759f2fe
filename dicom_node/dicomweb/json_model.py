"""The DICOM JSON model (PS3.18 F) of datasets, through pydicom's `Dataset.to_json_dict`."""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

DICOM_JSON = "application/dicom+json"
# Binary values above this many bytes (base64) are given as a BulkDataURI instead of inline.
BULK_THRESHOLD = 16 * 1024


def dataset_json(ds: Dataset, bulk_base: str | None = None) -> dict[str, Any]:
    """`ds` in the DICOM JSON model; large binary elements point to `{bulk_base}/bulkdata/{tag}`.

    Elements whose value cannot be encoded are left out rather than failing the whole answer.
    """
    def bulk_uri(elem: DataElement) -> str:
        return f"{bulk_base}/bulkdata/{int(elem.tag):08X}"

    return ds.to_json_dict(bulk_data_threshold=BULK_THRESHOLD,
                           bulk_data_element_handler=bulk_uri if bulk_base else None,
                           suppress_invalid_tags=True)


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def json_array(items: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    """A JSON array written item by item (for streamed metadata of long series)."""
    yield b"["
    for n, item in enumerate(items):
        yield (b"," if n else b"") + dumps(item)
    yield b"]"
