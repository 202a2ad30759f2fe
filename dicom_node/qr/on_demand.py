"""Extension point for upscaling on demand (issue 5, item 5).

For routing rules with ``on_demand: true`` the pipeline does not run at arrival; instead a
SERIES-level C-FIND lists the derived series that *would* be produced, and a C-MOVE/C-GET of it
starts the job (or joins the running one) and streams the instances as they are written.

Query/retrieve only needs two questions answered, so the pipeline plugs in one object that
implements `OnDemandProvider` and registers it with `set_on_demand_provider` (or passes it to
`QRService`). Until then `NO_ON_DEMAND` answers "nothing virtual", and Q/R serves what the
index holds. See docs/query_retrieve.md for the contract in prose.
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
_provider: OnDemandProvider = NO_ON_DEMAND


def set_on_demand_provider(provider: OnDemandProvider | None) -> None:
    """Install the pipeline's provider for every QRService created afterwards (None resets)."""
    global _provider
    _provider = provider or NO_ON_DEMAND


def on_demand_provider() -> OnDemandProvider:
    """The provider installed with `set_on_demand_provider` (NO_ON_DEMAND by default)."""
    return _provider
