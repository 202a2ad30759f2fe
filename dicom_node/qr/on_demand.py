"""Extension point for upscaling on demand (issue 5, item 5).

For routing rules with ``on_demand: true`` the pipeline does not run at arrival; instead a
SERIES-level C-FIND lists the derived series that *would* be produced, and a C-MOVE/C-GET of it
starts the job (or joins the running one) and streams the instances as they are written.

Query/retrieve only needs two questions answered, so the pipeline plugs in one object that
implements `OnDemandProvider`: it installs it in its node's `OnDemandSlot` (NodeContext.on_demand,
created by NodeServer), which the node's QRService and DICOMweb app ask. Until then `NO_ON_DEMAND`
answers "nothing virtual", and Q/R serves what the index holds. See docs/query_retrieve.md for the
contract in prose.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from sqlalchemy.orm import Session


@dataclass(frozen=True)
class VirtualSeries:
    """A derived series that does not exist yet but would, deterministically, if requested."""

    series_uid: str  # dicom_node.derive.uids.derived_series_uid(source, model, sha256, scale)
    source_series_uid: str
    modality: str
    series_description: str
    series_number: int | None
    expected_instances: int
    rule_name: str = ""


@dataclass(frozen=True)
class ProducedInstance:
    """One derived instance, written and indexed, ready to send."""

    path: Path  # absolute path of the stored file
    sop_instance_uid: str


@runtime_checkable
class OnDemandProvider(Protocol):
    def virtual_series(self, session: Session, source_series_uids: Sequence[str]) -> list[VirtualSeries]:
        """The not-yet-produced derived series for these (original) source series, if any."""
        ...

    def lookup(self, session: Session, series_uid: str) -> VirtualSeries | None:
        """The virtual series with this UID, or None if it is not one of ours."""
        ...

    def materialise(self, series_uid: str) -> Iterator[ProducedInstance]:
        """Start the job (or join the running one) and yield instances as they are produced.

        Raise `OnDemandError` when the job fails; the retrieve then ends with a failure status
        that carries the message, and the instances already yielded stay delivered.
        """
        ...


class OnDemandError(RuntimeError):
    """The on-demand job could not produce the series (message says why)."""


class _NoOnDemand:
    """The default: no rule is on demand, nothing is virtual."""

    def virtual_series(self, session: Session, source_series_uids: Sequence[str]) -> list[VirtualSeries]:
        return []

    def lookup(self, session: Session, series_uid: str) -> VirtualSeries | None:
        return None

    def materialise(self, series_uid: str) -> Iterator[ProducedInstance]:
        raise OnDemandError(f"series {series_uid} is not an on-demand series")


NO_ON_DEMAND: OnDemandProvider = _NoOnDemand()


class OnDemandSlot:
    """One node's on-demand provider: NO_ON_DEMAND until its pipeline service installs its own.

    NodeServer creates one per node (NodeContext.on_demand); the pipeline service installs its
    provider on start-up and removes it on stop. The node's QRService and DICOMweb app are handed
    the slot itself, an OnDemandProvider that asks whatever is installed at the time of each request.
    """

    def __init__(self) -> None:
        self.provider: OnDemandProvider = NO_ON_DEMAND

    def install(self, provider: OnDemandProvider) -> None:
        self.provider = provider

    def remove(self, provider: OnDemandProvider) -> None:
        """Back to NO_ON_DEMAND, if `provider` is still the one installed."""
        if self.provider is provider:
            self.provider = NO_ON_DEMAND

    def virtual_series(self, session: Session, source_series_uids: Sequence[str]) -> list[VirtualSeries]:
        return self.provider.virtual_series(session, source_series_uids)

    def lookup(self, session: Session, series_uid: str) -> VirtualSeries | None:
        return self.provider.lookup(session, series_uid)

    def materialise(self, series_uid: str) -> Iterator[ProducedInstance]:
        return self.provider.materialise(series_uid)
