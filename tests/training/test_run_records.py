"""What a run records about itself: the split warning and whether validation overlapped training,
the LR milestones actually stepped, and a log.csv with every step once after a resume."""
from __future__ import annotations

import csv
import json
import logging
import shutil
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from tests.training.conftest import TINY_ARCH
from training.export import export_run
from training.loop import RunConfig, train
from training.presets import PAPER_MILESTONES, get_preset


@dataclass
class Runs:
    base: Path
    two: Path  # --data with two patients, no --val-data
    indep: Path  # --val-data another patient
    warnings: list[str]
    card: dict


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def runs(ct_by_name: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Runs:
    base = tmp_path_factory.mktemp("records")
    preset = get_preset("realesrgan").with_overrides(
        arch_overrides=TINY_ARCH, steps=6, batch_size=1, hr_patch=32, val_every=3, ckpt_every=4,
        log_every=1, blind=False)
    two = base / "two"
    cfg = RunConfig(data=[ct_by_name["cptac"], ct_by_name["lung"]], out=two, val_slices=1, val_crop=64,
                    progress=False, cache_dir=base / "cache", threads=1, stop_after=4)
    handler = _Collect()
    logging.getLogger("training").addHandler(handler)
    try:
        train(preset, cfg)  # checkpoint at step 4
        shutil.copy(two / "last.pt", base / "step4.pt")
        train(preset, replace(cfg, stop_after=5))  # logs step 5, checkpoints it
        # As if the process had been killed after logging step 5 but before checkpointing it.
        shutil.copy(base / "step4.pt", two / "last.pt")
        train(preset, replace(cfg, stop_after=None))  # resumes at 4, runs to 6
    finally:
        logging.getLogger("training").removeHandler(handler)
    indep = base / "indep"
    train(preset.with_overrides(steps=1), replace(cfg, out=indep, data=[ct_by_name["cptac"]],
                                                   val_data=[ct_by_name["ge"]], stop_after=None))
    card = export_run(two, base / "export", name="ct-two")
    return Runs(base, two, indep, handler.messages, card)


def test_split_warning_counts_the_patients(runs: Runs) -> None:
    split = [m for m in runs.warnings if "validating on" in m]
    assert split and all("--data has 2 patients" in m for m in split), runs.warnings
    assert not any("only one" in m for m in runs.warnings)
    data = json.loads((runs.two / "run.json").read_text())["data"]
    assert data["train_patients"] == 2


def test_validation_overlap_is_recorded_and_on_the_card(runs: Runs) -> None:
    two = json.loads((runs.two / "run.json").read_text())["data"]["validation"]
    assert two["overlaps_training"] is True and two["series_also_in_training"] == 1
    assert two["patients_also_in_training"] == 1
    indep = json.loads((runs.indep / "run.json").read_text())["data"]["validation"]
    assert indep == {"source": "--val-data", "overlaps_training": False, "series_also_in_training": 0,
                     "patients_also_in_training": 0}
    assert runs.card["validation_overlaps_training"] is True
    card_json = json.loads((runs.base / "export" / "model_card.json").read_text())
    assert card_json["data"]["validation"]["overlaps_training"] is True
    md = (runs.base / "export" / "MODEL_CARD.md").read_text()
    assert "**Validation overlapped training**: 1 validation series" in md
    assert "validation (last check of the run; overlaps training)" in md


def test_milestones_recorded_are_the_ones_stepped(runs: Runs) -> None:
    state = torch.load(runs.two / "last.pt", weights_only=False)
    stepped = sorted(state["scheduler"]["milestones"])
    assert stepped == [3, 5, 6]  # the paper's 500k..1M scaled to 6 steps
    preset = json.loads((runs.two / "run.json").read_text())["preset"]
    assert preset["milestones"] == stepped
    assert preset["preset_milestones"] == list(PAPER_MILESTONES)
    assert runs.card["milestones"] == stepped and runs.card["preset"]["milestones"] == stepped
    assert "MultiStepLR gamma 0.5 at [3, 5, 6]" in (runs.base / "export" / "MODEL_CARD.md").read_text()


def test_log_has_every_step_once_after_a_resume(runs: Runs) -> None:
    with (runs.two / "log.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    counts = Counter((r["step"], r["key"]) for r in rows)
    assert [k for k, n in counts.items() if n > 1] == []
    assert [int(r["step"]) for r in rows if r["key"] == "train/l1"] == [1, 2, 3, 4, 5, 6]
    assert [int(r["step"]) for r in rows if r["key"] == "val/psnr"] == [0, 3, 6]


def test_card_names_the_init_weights_as_they_were_when_training_began(runs: Runs, ct_by_name: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    """Exporting over the file a run started from (as retraining a shipped model does) must not
    make the card claim the run started from the new weights."""
    from sr_engine.archs import file_sha256

    init = tmp_path / "init.pth"
    shutil.copy(runs.base / "export" / "ct-two.pth", init)
    before = file_sha256(init)
    preset = get_preset("realesrgan").with_overrides(
        arch_overrides=TINY_ARCH, steps=1, batch_size=1, hr_patch=32, val_every=1, log_every=1, blind=False)
    run = tmp_path / "from-init"
    train(preset, RunConfig(data=[ct_by_name["cptac"]], val_data=[ct_by_name["ge"]], out=run, init=init,
                            val_slices=1, val_crop=64, progress=False, cache_dir=runs.base / "cache", threads=1))
    init.write_bytes(b"replaced after training")
    card = export_run(run, tmp_path / "export", name="ct-from-init")
    assert card["init_sha256"] == before != file_sha256(init)
