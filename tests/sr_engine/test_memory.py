"""Memory budget: the planner's arithmetic, the meta-device trace, the Upscaler following its plan,
the process-memory helpers, and `worker.max_memory_mb` reaching the models (no timed assertions:
measured peaks belong to bench/sr/memory.py)."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from config.loader import parse_config
from config.schema import WorkerConfig
from sr_engine import memory
from sr_engine.archs import create_model, load_state_dict, state_dict_for_export
from sr_engine.commands import _memory_budget
from sr_engine.memory import MIB
from sr_engine.upscale import MemoryPlan, Upscaler, balanced_tile, plan_memory, traced_activation_bytes
from srnode.cli import load_node_config
from tests.sr_engine.conftest import TINY
from workers import model_cache

GIB = 1024 * MIB


def _tiny_compact(num_feat: int = TINY["compact"]["num_feat"]):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    config = {**TINY["compact"], "num_feat": num_feat}
    return load_state_dict(state_dict_for_export(create_model("compact", num_in_ch=1, num_out_ch=1, **config)),
                           "compact")


# -- planning arithmetic -------------------------------------------------------------------------
def test_balanced_tile_uses_the_fewest_tiles_of_even_size() -> None:
    assert balanced_tile(300, 512, 16) == 300  # fits: one tile, the whole side
    assert balanced_tile(512, 440, 16) == 272  # 2 tiles of 272, not 432 + a sliver
    tile = balanced_tile(1024, 300, 16)
    assert tile % 16 == 0 and tile <= 300
    assert 4 * tile - 3 * 16 >= 1024  # 4 tiles with their overlaps still cover the side


def test_whole_slices_in_the_largest_batch_that_fits() -> None:
    bpp = 1000.0  # bytes of activations per LR pixel
    roomy = plan_memory(512, 512, 4, bpp, working_bytes=16 * GIB, max_batch=4)
    assert roomy == MemoryPlan(None, 4, roomy.estimate) and roomy.estimate <= 16 * GIB
    # Room for two slices' activations and result buffers, not three: batch 2.
    per_slice = (2048 * 2048 + 512 * 512) * 4 * 3 + bpp * 512 * 512
    two = plan_memory(512, 512, 4, bpp, working_bytes=int(2.5 * per_slice), max_batch=4)
    assert (two.tile, two.batch, two.fits) == (None, 2, True) and two.estimate <= 2.5 * per_slice


def test_tiles_when_one_whole_slice_does_not_fit() -> None:
    bpp = 20000.0
    budget = 1 * GIB
    plan = plan_memory(1024, 1024, 4, bpp, working_bytes=budget, max_batch=4)
    assert plan.tile is not None and plan.tile < 1024 and plan.tile % 16 == 0
    assert plan.fits and plan.estimate <= budget
    # The same size with a larger budget gets larger (fewer) tiles, never smaller ones.
    larger = plan_memory(1024, 1024, 4, bpp, working_bytes=2 * budget, max_batch=4)
    assert (larger.tile or 1024) >= plan.tile


def test_tiles_never_exceed_the_configured_tile_size() -> None:
    plan = plan_memory(512, 512, 4, 100.0, working_bytes=64 * GIB, max_batch=4, max_tile=128)
    assert plan.tile is not None and plan.tile <= 128


def test_held_slices_leave_room_for_the_writer() -> None:
    bpp = 1000.0
    per_slice = (2048 * 2048 + 512 * 512) * 4 * 3 + bpp * 512 * 512
    budget = int(4.2 * per_slice)
    free = plan_memory(512, 512, 4, bpp, working_bytes=budget, max_batch=4)
    held = plan_memory(512, 512, 4, bpp, working_bytes=budget, max_batch=4, held_slices=4)
    assert free.batch == 4 and held.tile is None and held.batch < 4 and held.estimate <= budget


def test_large_slices_get_smaller_chunks_not_an_overrun() -> None:
    # 2048² input (8192² output): one slice's buffers, the writer's slice and the tiled pass's
    # accumulators are ~3.3 GiB; a 4 GiB working budget still fits one slice per call, tiled,
    # where chunks of 4 slices would need 4x the buffers.
    plan = plan_memory(2048, 2048, 4, 600.0, working_bytes=4 * GIB, max_batch=4, held_slices=4)
    assert plan.fits and plan.batch == 1 and plan.tile is not None and plan.estimate <= 4 * GIB


def test_a_budget_too_small_for_any_tile_is_reported_not_fitting() -> None:
    plan = plan_memory(512, 512, 4, 1000.0, working_bytes=10 * MIB, max_batch=4, min_tile=32)
    assert (plan.tile, plan.batch, plan.fits) == (32, 1, False)


def test_the_plan_does_not_depend_on_the_chunk_length() -> None:
    # A series' last, shorter chunk must be tiled like the others (tiles move pixels by a few HU).
    up = Upscaler(_tiny_compact(), 4, tile=None, batch=4, runtime="torch", max_memory_mb=2048)
    up._baseline = 512 * MIB  # noqa: SLF001 - fixed, so the test does not depend on this process's RSS
    assert up.plan(64, 64) is up.plan(64, 64)
    assert up.plan(64, 64).batch == up.chunk_size(64, 64) == 4


# -- tracing and the Upscaler ----------------------------------------------------------------------
def test_traced_activation_bytes_grow_with_the_pixels() -> None:
    module = _tiny_compact().model
    small = traced_activation_bytes(module, 1, 1, 32, 32)
    large = traced_activation_bytes(module, 1, 1, 64, 64)
    batch = traced_activation_bytes(module, 1, 2, 32, 32)
    assert small > 0
    assert 3.5 * small <= large <= 4.5 * small  # linear in pixels (a fully convolutional network)
    assert 1.8 * small <= batch <= 2.2 * small
    # At least the x4 output itself, float32: 128 x 128 x 4 bytes.
    assert large >= 256 * 256 * 4


def test_upscaler_follows_a_tiled_plan_and_matches_untiled() -> None:
    d = _tiny_compact(num_feat=32)  # activations well above the result buffers, as in real models
    x = torch.rand(2, 1, 192, 192)
    untiled = Upscaler(d, 4, tile=None, runtime="torch").upscale_unit(x)
    probe = Upscaler(d, 4, tile=None, runtime="torch", max_memory_mb=1024)
    # A budget with room for about a 64 px tile's activations beside the result buffers of the batch.
    # One slice's result buffers (output, mapped back, a temporary) and the tiled pass's accumulators.
    io = ((192 * 4) ** 2 + 192 * 192) * 4 * 3 + (192 * 4) ** 2 * 4 * 3
    budget_mb = math.ceil((io + probe.bytes_per_pixel() * 64 * 64) / MIB)
    up = Upscaler(d, 4, tile=None, overlap=16, batch=2, runtime="torch", max_memory_mb=budget_mb)
    up._baseline = 0  # noqa: SLF001 - the whole budget is working memory here
    plan = up.plan(192, 192)
    assert plan is not None and plan.tile is not None and plan.tile < 192
    tiled = up.upscale_unit(x)
    assert tiled.shape == untiled.shape == (2, 1, 768, 768)
    assert (tiled - untiled).abs().max().item() < 0.02  # blended seams only (unit range)


def test_no_budget_no_plan() -> None:
    up = Upscaler(_tiny_compact(), 4, tile=None, runtime="torch")
    assert up.plan(64, 64) is None


# -- process memory ---------------------------------------------------------------------------------
def test_rss_and_peak_are_plausible() -> None:
    rss, peak = memory.rss_bytes(), memory.peak_rss_bytes()
    assert 10 * MIB < rss <= peak


def test_release_memory_returns_freed_bytes() -> None:
    assert memory.release_memory() >= 0


def test_measure_peak_sees_a_touched_allocation() -> None:
    if not memory.reset_peak_rss():
        pytest.skip("/proc/self/clear_refs not writable here")
    grown = memory.measure_peak(lambda: np.ones(64 * MIB // 8).sum())
    assert grown >= 48 * MIB


@pytest.mark.parametrize("machine_gib, expected_mb", [(1, 1024), (6, 3072), (64, 4096)])
def test_default_budget_is_half_the_machine_between_1_and_4_gib(monkeypatch, machine_gib: int,
                                                                expected_mb: int) -> None:
    monkeypatch.setattr(memory, "machine_memory_bytes", lambda: machine_gib * GIB)
    assert memory.default_budget_mb() == expected_mb


# -- configuration and wiring -------------------------------------------------------------------------
def test_worker_max_memory_mb_field(tmp_path: Path) -> None:
    assert WorkerConfig().max_memory_mb is None  # the machine-dependent default, decided where it runs
    cfg = parse_config({"worker": {"max_memory_mb": 2048}}, environ={})
    assert cfg.worker.max_memory_mb == 2048
    env = parse_config({}, environ={"SRNODE_WORKER__MAX_MEMORY_MB": "3000"})
    assert env.worker.max_memory_mb == 3000
    with pytest.raises(ValueError, match="max_memory_mb"):
        parse_config({"worker": {"max_memory_mb": 100}}, environ={})


def _compact_cfg(tmp_path: Path, **worker: object):  # type: ignore[no-untyped-def]
    weights = tmp_path / "compact.safetensors"
    save_file(state_dict_for_export(_tiny_compact()), str(weights))
    return parse_config({
        "node": {"storage_dir": str(tmp_path / "storage"), "database_url": f"sqlite:///{tmp_path / 'i.db'}"},
        "models": {"fast": {"arch": "compact", "weights": str(weights)}},
        "worker": worker,
    }, environ={})


def test_worker_budget_reaches_the_loaded_model(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(model_cache, "_CONCURRENT", None)
    model_cache.clear()
    try:
        up = model_cache.get_model(_compact_cfg(tmp_path, max_memory_mb=2048, batch_size=3), "fast", "cpu").upscaler
        assert (up.max_memory_mb, up.held_slices, up.batch, up.concurrent) == (2048, 3, 3, 1)
        model_cache.clear()
        model_cache.set_concurrency(2)  # `srnode worker --concurrency 2`: two jobs share the budget
        up = model_cache.get_model(_compact_cfg(tmp_path), "fast", "cpu").upscaler
        assert (up.max_memory_mb, up.concurrent) == (memory.default_budget_mb(), 2)
    finally:
        model_cache.clear()


def test_sr_command_budget_precedence(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text("worker: {max_memory_mb: 1536}\n", encoding="utf-8")
    read = load_node_config  # what the srnode CLI hands every command
    assert _memory_budget(argparse.Namespace(max_memory_mb=2500, config=str(config), load_config=read)) == 2500
    assert _memory_budget(argparse.Namespace(max_memory_mb=None, config=str(config), load_config=read)) == 1536
    assert _memory_budget(argparse.Namespace(max_memory_mb=None, config=None)) == memory.default_budget_mb()
    assert _memory_budget(argparse.Namespace(max_memory_mb=0, config=None)) is None  # planning off
