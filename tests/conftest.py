"""Fixtures shared by every test package: where the repo and ../shared are, free ports."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the checkout (read-only); SRNODE_SHARED_DIR overrides.
SHARED_DIR = Path(os.environ.get("SRNODE_SHARED_DIR", REPO_ROOT.parent / "shared")).resolve()


def free_port() -> int:
    """A TCP port that was free a moment ago (tests never use fixed ports)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED_DIR / "data").is_dir():
        pytest.fail(f"shared test data not found at {SHARED_DIR} (set SRNODE_SHARED_DIR)")
    return SHARED_DIR


@pytest.fixture(scope="session")
def ct_dirs(shared_dir: Path) -> list[Path]:
    return sorted(p for p in (shared_dir / "data" / "ct").iterdir() if p.is_dir())
