"""The refusals: a RejectedInstance subclass per reason, each with the DIMSE failure status to answer."""
from __future__ import annotations


class RejectedInstance(ValueError):
    """An instance the node refuses; `status` is the DIMSE failure status to answer with."""

    status = 0xC000  # Failure: cannot understand


class DuplicateConflict(RejectedInstance):
    """The SOP Instance UID is already indexed under a different study or series."""

    status = 0xC001


class MalformedDataset(RejectedInstance):
    """Truncated, undecodable, or with missing/short pixel data."""

    status = 0xC002


class BadUID(RejectedInstance):
    """A UID that cannot be used (invalid per PS3.5; could otherwise name a path)."""

    status = 0xC003


class SOPClassMismatch(RejectedInstance):
    """No SOP Class UID, or not the one of the presentation context / C-STORE request."""

    status = 0xA900  # Error: data set does not match SOP class
