"""kombu's SQLAlchemy transport on a local SQLite file, consuming queues in priority order.

The embedded default needs no broker server. kombu's virtual transports visit queues round-robin;
here a worker always takes from its first non-empty queue, so `stat` queues (listed first) are
emptied before `routine` ones. Messages a killed worker had taken are not redelivered by this
transport: the node requeues such jobs from their rows (see dicom_node.pipeline).

This is srnode's one adapter to kombu's internals: the channel's private `_reset_cycle`,
`_active_queues`, `_get_and_deliver` and `_cycle` are overridden or used here and nowhere else.
They were read in kombu 5.7.0 (`TESTED_VERSIONS`, pinned exactly in setup.cfg); the transport
refuses to start (`check_version`, called when kombu creates it) on any other version. Upgrading
kombu: re-read those names in the new version, run tests/workers/test_kombu_adapter.py and
tests/workers/test_workers.py, then add the version here and change the pin.
"""
from __future__ import annotations

from typing import Any

import kombu
from kombu.transport.sqlalchemy import Channel as _SQLChannel
from kombu.transport.sqlalchemy import Transport as _SQLTransport
from kombu.utils.scheduling import FairCycle

TESTED_VERSIONS = ("5.7.0",)


class UntestedKombu(RuntimeError):
    """The installed kombu is not a version this transport was written and tested against."""


def check_version(found: str | None = None) -> None:
    """Raise UntestedKombu unless `found` (default: the installed kombu) is a tested version."""
    found = kombu.__version__ if found is None else found
    if found not in TESTED_VERSIONS:
        raise UntestedKombu(
            f"srnode's kombu adapter (workers/embedded_transport.py) is tested with kombu "
            f"{', '.join(TESTED_VERSIONS)}; found {found}. Install kombu=={TESTED_VERSIONS[-1]} "
            "(the version setup.cfg pins)."
        )


class _OrderedCycle(FairCycle):
    """Try resources in list order on every get (strict priority instead of fairness)."""

    def get(self, callback, **kwargs):  # type: ignore[no-untyped-def]
        self.pos = 0
        return super().get(callback, **kwargs)


def queue_rank(name: str) -> int:
    """Sort key: stat queues first."""
    return 0 if name.endswith(".stat") else 1


class Channel(_SQLChannel):
    def _reset_cycle(self) -> None:
        self._active_queues.sort(key=queue_rank)
        self._cycle = _OrderedCycle(self._get_and_deliver, self._active_queues, self.__class__._empty())

    @staticmethod
    def _empty() -> type[Exception]:
        from queue import Empty

        return Empty

    def basic_consume(self, queue, *args, **kwargs):  # type: ignore[no-untyped-def]
        result = super().basic_consume(queue, *args, **kwargs)
        self._active_queues.sort(key=queue_rank)
        return result


class Transport(_SQLTransport):
    Channel = Channel
    # kombu polls virtual transports once a second by default: up to 1 s of queue time per job.
    # Five short SELECTs a second on an idle SQLite file cost nothing measurable.
    polling_interval = 0.2

    def __init__(self, client: Any, **kwargs: Any) -> None:
        check_version()  # a worker on an untested kombu refuses to connect (and so to start)
        super().__init__(client, **kwargs)
