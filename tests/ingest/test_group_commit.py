"""The group committer (dicom_node.group_commit): owned by whoever creates it, started on first use."""
from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.group_commit import BatchFailed, GroupCommitter, commit_alone


class Clean(Exception):
    """Raised before writing anything: the batch goes on without it."""


@pytest.fixture
def factory(tmp_path: Path) -> sessionmaker[Session]:
    engine = create_engine(f"sqlite:///{tmp_path / 'gc.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (v INTEGER)"))
    return sessionmaker(engine)


def _insert(v: int) -> Callable[[Session], int]:
    def fn(session: Session) -> int:
        session.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": v})
        return v
    return fn


def _values(factory: sessionmaker[Session]) -> list[int]:
    with factory() as s:
        return sorted(s.scalars(text("SELECT v FROM t")))


def _writers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "srnode-group-commit"]


def test_committer_starts_on_first_run_and_again_after_close(factory: sessionmaker[Session]) -> None:
    before = len(_writers())
    committer = GroupCommitter(factory)
    assert len(_writers()) == before  # a node that never receives starts no thread
    assert committer.run(_insert(1)) == 1
    assert len(_writers()) == before + 1
    committer.close()
    assert len(_writers()) == before
    assert committer.run(_insert(2)) == 2  # a restarted node commits again
    committer.close()
    committer.close()  # nothing left to stop
    assert _values(factory) == [1, 2]


def test_clean_error_is_raised_and_other_errors_fail_the_batch(factory: sessionmaker[Session]) -> None:
    committer = GroupCommitter(factory)

    def clean(_session: Session) -> None:
        raise Clean()

    def broken(session: Session) -> None:
        session.execute(text("INSERT INTO missing (v) VALUES (1)"))

    try:
        with pytest.raises(Clean):
            committer.run(clean, (Clean,))
        with pytest.raises(BatchFailed):
            committer.run(broken, (Clean,))
    finally:
        committer.close()


def test_commit_alone_has_the_outcomes_of_a_batch_of_one(factory: sessionmaker[Session]) -> None:
    assert commit_alone(factory, _insert(3)) == 3

    def clean(session: Session) -> None:
        raise Clean()

    def broken(session: Session) -> None:
        session.execute(text("INSERT INTO missing (v) VALUES (1)"))

    with pytest.raises(Clean):
        commit_alone(factory, clean, (Clean,))
    with pytest.raises(BatchFailed):
        commit_alone(factory, broken, (Clean,))
    assert _values(factory) == [3]
