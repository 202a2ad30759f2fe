"""Fixtures for the fault-injection suite: a real CT series, fault runs, the figures they produce."""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.faults.harness import Destination, Node, Run
from tests.pipeline.conftest import node_config
from tests.pipeline.helpers import write_config

SCALE = 4  # bicubic x4: a 2048² slice is slow enough to kill a job or a send in the middle
SERIES_SLICES = 8


@pytest.fixture
def ct_series(ct_dirs: list[Path]) -> list[Path]:
    """Contiguous slices of the real Lung-PET-CT-Dx CT (CC BY 4.0, see SOURCES.md)."""
    folder = next(d for d in ct_dirs if d.name.startswith("lung-pet-ct-dx"))
    return sorted(folder.glob("*.dcm"))[:SERIES_SLICES]


def crash_config(tmp_path: Path, node_port: int, dest: Destination, **overrides: Any) -> dict[str, Any]:
    """The pipeline tests' node config with the knobs that keep a crash run to seconds."""
    base: dict[str, Any] = {
        "models": {"bicubic": {"arch": "bicubic", "scale": SCALE}},
        "series": {"stable_after_s": 3, "check_interval_s": 0.25},
        "send": {"backoff_initial_s": 0.5, "backoff_max_s": 2},
        "worker": {"device": "cpu", "heartbeat_timeout_s": 6, "batch_size": 1},
    }
    for key, value in overrides.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and key in base else value
    return node_config(tmp_path, node_port, dest, **base)


@pytest.fixture
def make_run(tmp_path: Path, ct_series: list[Path]) -> Iterator[Callable[..., Run]]:
    """Start a destination (storescp, `dest_sleep_s` per reception) and a node; all stopped after."""
    runs: list[Run] = []

    def _make(dest_sleep_s: int = 0, **overrides: Any) -> Run:
        dest = Destination(tmp_path / "received")
        dest.start(dest_sleep_s)
        cfg = crash_config(tmp_path, free_port(), dest, **overrides)
        node = Node(write_config(tmp_path / "srnode.yaml", cfg), cfg, tmp_path / "node.log")
        try:
            node.start()
        except BaseException:
            node.stop()
            dest.stop()
            raise
        run = Run(tmp_path, ct_series, dest, node, SCALE)
        runs.append(run)
        return run

    yield _make
    for run in runs:
        run.close()


@pytest.fixture(scope="session")
def fault_figures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    """Scenario -> figures; written to <pytest basetemp>/fault_figures.json at the end of the session."""
    figures: dict[str, dict[str, Any]] = {}
    yield figures
    if figures:
        out = tmp_path_factory.getbasetemp() / "fault_figures.json"
        out.write_text(json.dumps(figures, indent=2, sort_keys=True), encoding="utf-8")
        print(f"\nfault-injection figures: {out}")

