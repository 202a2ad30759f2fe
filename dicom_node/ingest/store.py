"""One instance: check it (parse, validate, UIDs, place on disk), write it, index it (`store_encoded`,
`store_dataset`), with the cache of known series behind the hot path of `store_encoded`."""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.group_commit import BatchFailed, GroupCommitter, commit_alone
from dicom_node.index.models import Instance
from dicom_node.ingest.errors import BadUID, DuplicateConflict
from dicom_node.ingest.files import remove_new, write_instance
from dicom_node.ingest.index_writer import (
    _commit_with_retry,
    _index_known_series,
    _StaleSeriesCache,
    index_instance,
)
from dicom_node.ingest.parse import encode_part10, parse_header
from dicom_node.storage import InvalidUID, instance_rel_path, resolve_in, validate_uid


@dataclass(frozen=True)
class StoreResult:
    """What `store_encoded`/`store_dataset` did, for the caller's status and log line."""

    instance_pk: int
    series_pk: int
    rel_path: str
    file_size: int
    duplicate: bool
    is_image: bool
    # The stored instance's validated UIDs, set by store_encoded (STOW-RS answers with them
    # without decoding the instance a second time); "" where not set.
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_uid: str = ""
    series_uid: str = ""


# (database URL, study UID, series UID) -> Series primary key, for the receive hot path: an
# instance of a series already seen costs one SELECT, one INSERT and one UPDATE (no ORM).
# Module-level on purpose: a per-process cache of index facts, keyed by database and checked on use.
_SERIES_PK_CACHE: OrderedDict[tuple[str, str, str], int] = OrderedDict()
_SERIES_PK_CACHE_SIZE = 4096
_cache_lock = threading.Lock()


def _cache_get(key: tuple[str, str, str]) -> int | None:
    with _cache_lock:
        return _SERIES_PK_CACHE.get(key)


def _cache_put(key: tuple[str, str, str], pk: int) -> None:
    with _cache_lock:
        _SERIES_PK_CACHE[key] = pk
        _SERIES_PK_CACHE.move_to_end(key)
        while len(_SERIES_PK_CACHE) > _SERIES_PK_CACHE_SIZE:
            _SERIES_PK_CACHE.popitem(last=False)


def _cache_drop(key: tuple[str, str, str]) -> None:
    with _cache_lock:
        _SERIES_PK_CACHE.pop(key, None)


def _url_of(factory: sessionmaker[Session]) -> str:
    bind = factory.kw.get("bind")
    return str(getattr(bind, "url", id(factory)))


@dataclass(frozen=True)
class _Checked:
    """A parsed instance whose UIDs were validated, with its place under storage_dir."""

    ds: Dataset
    sop: str
    rel: PurePosixPath
    target: Path
    tsyntax: str
    series_key: tuple[str, str, str]


def _check(factory: sessionmaker[Session], storage_dir: Path, data: bytes,
           expected_sop_instance_uid: str | None = None, expected_sop_class_uid: str | None = None) -> _Checked:
    ds = parse_header(data, expected_sop_class_uid)
    try:
        study = validate_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID")
        series = validate_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID")
        sop = validate_uid(ds.get("SOPInstanceUID"), "SOPInstanceUID")
        if expected_sop_instance_uid is not None and sop != str(expected_sop_instance_uid).rstrip("\x00 "):
            raise BadUID("SOPInstanceUID in the dataset differs from the C-STORE request's")
        rel = instance_rel_path(study, series, sop)
    except InvalidUID as exc:
        raise BadUID(str(exc)) from None
    return _Checked(ds, sop, rel, resolve_in(storage_dir, rel), str(ds.file_meta.get("TransferSyntaxUID", "")),
                    (_url_of(factory), study, series))


def _index_checked(session: Session, item: _Checked, size: int, sender_ae: str,
                   derived_from_job: int | None) -> StoreResult:
    dup = session.scalar(select(Instance.id).where(Instance.sop_instance_uid == item.sop)) is not None
    inst = index_instance(session, item.ds, item.rel, size, item.tsyntax, sender_ae, derived_from_job)
    _cache_put(item.series_key, inst.series_pk)
    return StoreResult(inst.id, inst.series_pk, str(item.rel), size, dup, inst.is_image)


def store_encoded(
    factory: sessionmaker[Session],
    storage_dir: Path,
    data: bytes,
    sender_ae: str,
    expected_sop_instance_uid: str | None = None,
    derived_from_job: int | None = None,
    expected_sop_class_uid: str | None = None,
    committer: GroupCommitter | None = None,
) -> StoreResult:
    """Validate, write (atomic, fsynced) and index a Part 10 byte string; return what was done.

    `expected_sop_class_uid`: the presentation context's abstract syntax (a C-STORE's dataset must
    be of that class). Raises a RejectedInstance subclass (with a DIMSE status) for anything
    refused; nothing is left on disk or in the index for a refused instance.
    """
    item = _check(factory, storage_dir, data, expected_sop_instance_uid, expected_sop_class_uid)
    existed = item.target.exists()
    size = write_instance(item.target, data, storage_dir)  # `target` is already resolved inside storage_dir

    def known_series(session: Session, series_pk: int) -> StoreResult:
        pk, dup, is_image = _index_known_series(session, series_pk, item.ds, item.rel, size, item.tsyntax, sender_ae)
        return StoreResult(pk, series_pk, str(item.rel), size, dup, is_image)

    def with_uids(result: StoreResult) -> StoreResult:
        _, study, series = item.series_key
        return replace(result, sop_class_uid=str(item.ds.get("SOPClassUID", "")), sop_instance_uid=item.sop,
                       study_uid=study, series_uid=series)

    try:
        cached = _cache_get(item.series_key) if derived_from_job is None else None
        if cached is not None:
            # Hot path: an instance of a series already seen, committed together with whatever the
            # other associations are storing right now (with the node's committer; else alone).
            clean = (DuplicateConflict, _StaleSeriesCache)
            try:
                if committer is not None:
                    result = committer.run(lambda session: known_series(session, cached), clean)
                else:
                    result = commit_alone(factory, lambda session: known_series(session, cached), clean)
                return with_uids(result)
            except _StaleSeriesCache:
                _cache_drop(item.series_key)
            except BatchFailed:
                pass  # redo it alone below
        return with_uids(_commit_with_retry(
            factory, lambda session: _index_checked(session, item, size, sender_ae, derived_from_job)))
    except BaseException:
        if not existed:
            remove_new([item.target])
        raise


def store_dataset(
    factory: sessionmaker[Session],
    storage_dir: Path,
    ds: Dataset,
    sender_ae: str = "",
    derived_from_job: int | None = None,
) -> StoreResult:
    """Write and index a pydicom Dataset (e.g. a derived instance) in one call."""
    return store_encoded(factory, storage_dir, encode_part10(ds), sender_ae, derived_from_job=derived_from_job)
