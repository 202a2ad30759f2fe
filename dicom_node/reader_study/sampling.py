"""Which stored slices a study uses: picked by SOP Instance UID, or drawn with a seed from a filter."""
from __future__ import annotations

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_node.index.models import Instance, Series
from dicom_node.reader_study.definition import StudyDefinition


class SliceSelectionError(ValueError):
    """The definition names slices that are not stored (or a filter that matches none)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


def select_slices(session: Session, definition: StudyDefinition) -> list[Instance]:
    """Stored single-frame image instances for the study, in the order they become cases."""
    if definition.slices:
        rows = session.execute(
            select(Instance).where(Instance.sop_instance_uid.in_(definition.slices))
        ).scalars().all()
        by_uid = {r.sop_instance_uid: r for r in rows}
        missing = [u for u in definition.slices if u not in by_uid]
        if missing:
            raise SliceSelectionError("slices", f"{len(missing)} slice(s) not stored here, e.g. {missing[0]}")
        chosen = [by_uid[u] for u in definition.slices]
        bad = [i.sop_instance_uid for i in chosen if not i.is_image or (i.number_of_frames or 1) > 1]
        if bad:
            raise SliceSelectionError("slices", f"not a single-frame image: {bad[0]}")
        size = definition.slice_size
        wrong = [i for i in chosen if size is not None and (i.rows, i.columns) != (size, size)]
        if wrong:
            raise SliceSelectionError("slices", f"{len(wrong)} slice(s) are not {size}x{size} (slice_size), "
                                                f"e.g. {wrong[0].sop_instance_uid}: {wrong[0].rows}x{wrong[0].columns}")
        return chosen
    assert definition.random is not None
    flt = definition.random
    query = (
        select(Instance).join(Series)
        .where(Instance.is_image, Series.modality == flt.modality)
        .where((Instance.number_of_frames.is_(None)) | (Instance.number_of_frames <= 1))
    )
    if flt.series_uids:
        query = query.where(Series.series_uid.in_(flt.series_uids))
    if not flt.include_derived:
        query = query.where(Series.derived_from_job.is_(None))
    if definition.slice_size is not None:
        query = query.where(Instance.rows == definition.slice_size, Instance.columns == definition.slice_size)
    # Sorted by UID so the same seed draws the same slices whatever order the index returns.
    pool = sorted(session.execute(query).scalars().all(), key=lambda i: i.sop_instance_uid)
    if not pool:
        of_size = f" of {definition.slice_size}x{definition.slice_size}" if definition.slice_size else ""
        raise SliceSelectionError("random", f"no stored {flt.modality} slices{of_size} match the filter")
    rng = np.random.default_rng(definition.seed)
    picks = rng.choice(len(pool), size=min(flt.count, len(pool)), replace=False)
    return [pool[int(i)] for i in picks]
