"""workers.embedded_transport, srnode's one adapter to kombu's internals: its version guard, the
private names it alone uses, and its strict queue order on a real SQLite broker."""
from __future__ import annotations

import re
from pathlib import Path

import kombu
import pytest
from kombu import Connection, Exchange, Producer, Queue
from kombu.transport.sqlalchemy import Channel as SQLChannel

from tests.conftest import REPO_ROOT
from tests.library_internals import consume, uses_outside
from workers import embedded_transport
from workers.app import EMBEDDED_TRANSPORT
from workers.embedded_transport import TESTED_VERSIONS, UntestedKombu, check_version

# kombu internals the adapter overrides or uses: each may appear only in the adapter.
PRIVATE = re.compile(r"\b(_reset_cycle|_active_queues|_get_and_deliver|_cycle)\b")
ADAPTER = REPO_ROOT / "workers" / "embedded_transport.py"


def test_an_untested_version_is_refused_with_what_to_install() -> None:
    with pytest.raises(UntestedKombu, match=r"tested with kombu 5\.7\.0; found 5\.6\.1\. Install kombu==5\.7\.0"):
        check_version("5.6.1")


def test_the_installed_version_is_tested_and_pinned_exactly() -> None:
    check_version()
    assert kombu.__version__ in TESTED_VERSIONS
    pins = re.findall(r"^\s*kombu==(\S+)\s*$", (REPO_ROOT / "setup.cfg").read_text(encoding="utf-8"), re.M)
    assert pins == [TESTED_VERSIONS[-1]]


def test_the_transport_refuses_to_start_on_an_untested_kombu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kombu, "__version__", "6.0.0")
    with Connection(f"sqlite:///{tmp_path / 'broker.db'}", transport=EMBEDDED_TRANSPORT) as conn:
        with pytest.raises(UntestedKombu, match="found 6.0.0"):
            conn.connect()


def test_kombu_private_names_appear_only_in_the_adapter() -> None:
    assert uses_outside(PRIVATE, ADAPTER) == []


def test_the_names_it_overrides_exist_in_kombu() -> None:
    # Overriding a method kombu no longer calls would silently bring back round robin.
    assert callable(SQLChannel._reset_cycle) and callable(SQLChannel._get_and_deliver)


def test_a_consumer_takes_stat_before_routine(tmp_path: Path) -> None:
    exchange = Exchange("srnode-test", type="direct")
    queues = [Queue(f"m.{name}", exchange, routing_key=name) for name in ("routine", "stat")]  # routine first
    with Connection(f"sqlite:///{tmp_path / 'broker.db'}", transport=EMBEDDED_TRANSPORT) as conn:
        channel = conn.default_channel
        assert isinstance(channel, embedded_transport.Channel)
        producer = Producer(channel, exchange)
        for queue in queues:
            queue(channel).declare()
        for body, key in (("r1", "routine"), ("r2", "routine"), ("s1", "stat"), ("s2", "stat")):
            producer.publish(body, routing_key=key, serializer="json")

        got = consume(conn, channel, queues, 4, lambda body, message: body)
    assert got == ["s1", "s2", "r1", "r2"]  # round robin would give r1, s1, r2, s2 or similar
