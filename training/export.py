"""Export a training run for the node: weights the engine loads, a model card, a registry entry.

The weights are a flat state dict (torch.save, loadable with weights_only=True) that
sr_engine.archs.load_checkpoint detects; fp16 storage halves the size and loads back into the
float32 model. The registry entry is a `models:` item of the node's YAML, validated against
config.schema.ModelEntry before it is written.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import yaml

from config.loader import parse_config
from sr_engine.archs import file_sha256, load_checkpoint
from sr_engine.model_entry import IntensityConfig, ModelEntry
from sr_engine.registry import check_model_name

_CARD_JSON = "model_card.json"


def save_weights(state_dict: dict[str, torch.Tensor], dest: Path, fp16: bool = False) -> Path:
    """Write a state dict atomically, optionally with floating tensors stored as fp16."""
    if fp16:
        state_dict = {k: v.half() if v.is_floating_point() else v for k, v in state_dict.items()}
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    torch.save(state_dict, tmp)
    os.replace(tmp, dest)
    return dest


def registry_entry(arch: str, weights: Path, sha256: str, scale: int, low: float, high: float,
                   description: str) -> ModelEntry:
    """The node config's `models:` entry for an exported checkpoint (validated)."""
    return ModelEntry(arch=arch, weights=weights, sha256=sha256, scale=scale,
                      intensity=IntensityConfig(mode="fixed", low=low, high=high),
                      description=description)


def add_model_entry(config_path: Path, name: str, entry: ModelEntry) -> None:
    """Add or replace `models.<name>` in a node YAML, validating the whole file first.

    An admin's file keeps its comments, key order and layout (ruamel.yaml round-trip; PyYAML would
    drop the comments), and the previous version is kept beside it as `<file>.bak`.
    """
    from ruamel.yaml import YAML

    rt = YAML()
    rt.preserve_quotes = True
    old_text = config_path.read_text() if config_path.exists() else ""
    data = rt.load(old_text) or {}
    models = data.get("models") or {}
    models[name] = json.loads(entry.model_dump_json(exclude_none=True))
    data["models"] = models
    out = io.StringIO()
    rt.dump(data, out)
    parse_config(yaml.safe_load(out.getvalue()) or {})  # raises ConfigError naming the key if invalid
    if old_text:
        shutil.copy2(config_path, config_path.with_name(f"{config_path.name}.bak"))
    tmp = config_path.with_name(f".{config_path.name}.tmp")
    tmp.write_text(out.getvalue())
    os.replace(tmp, config_path)


def add_model_from_card(card_path: Path | str, config_path: Path | str, name: str | None = None) -> ModelEntry:
    """`srnode models add`: register an exported model (its model_card.json) in a node YAML."""
    card_path = Path(card_path)
    card = json.loads(card_path.read_text())
    check_model_name(name or card["name"], card["arch"])  # before any file is read or written
    weights = (card_path.parent / card["weights"]).resolve()
    if file_sha256(weights) != card["sha256"]:
        raise ValueError(f"{weights}: sha256 differs from {card_path}; re-export the model")
    entry = registry_entry(card["arch"], weights, card["sha256"], int(card["scale"]),
                           float(card["intensity"]["low"]), float(card["intensity"]["high"]),
                           f"{card['name']}: {card['arch']} fine-tuned ({card['steps']} steps)")
    add_model_entry(Path(config_path), name or card["name"], entry)
    return entry


def cmd_models_add(args: argparse.Namespace) -> int:
    """`srnode models add --card CARD --config FILE [--name NAME]`."""
    import logging

    try:
        entry = add_model_from_card(args.card, args.config, args.name)
    except (OSError, KeyError, ValueError) as exc:
        logging.getLogger(__name__).error("cannot add model from %s: %s", args.card, exc)
        return 1
    print(f"added {args.name or json.loads(Path(args.card).read_text())['name']} "
          f"({entry.arch}, x{entry.scale}, sha256 {entry.sha256}) to {args.config}")
    return 0


def _validation_note(data: dict[str, Any]) -> str:
    """One sentence on whether the validation data was independent of the training data."""
    v = data.get("validation")
    if v is None:
        return "Whether the validation data overlapped the training data was not recorded by this run."
    if v["overlaps_training"]:
        return (f"**Validation overlapped training**: {v['series_also_in_training']} validation series and "
                f"{v['patients_also_in_training']} patient(s) were also in the training data (validation "
                f"source: {v['source']}); the validation scores measure fit, not generalisation.")
    return f"Validation is independent of training: no shared series or patients (validation source: {v['source']})."


def describe_degradations(card: dict[str, Any]) -> str:
    """What the run put on its LR patches, from the settings run.json recorded (older runs: the preset)."""
    d = card.get("degradations")
    if not d:
        return "blind (blur/noise/JPEG-like)" if card["preset"].get("blind") else "bicubic x4 only"
    parts = []
    if d.get("native_noise_prob"):
        lo, hi = d["native_noise_scale"]
        parts.append(f"each series' own measured CT noise on {d['native_noise_prob']:.0%} of LR patches at "
                     f"{lo:g}-{hi:g}x its level")
    if d.get("blur_prob"):
        lo, hi = d["blur_sigma"]
        parts.append(f"HR Gaussian blur sigma {lo:g}-{hi:g} px on {d['blur_prob']:.0%}")
    for key, what in (("gaussian_noise_prob", "Gaussian noise"), ("poisson_noise_prob", "Poisson noise"),
                      ("jpeg_prob", "JPEG-like quantisation")):
        if d.get(key):
            parts.append(f"{what} on {d[key]:.0%}")
    return "bicubic x4, plus " + "; ".join(parts) if parts else "bicubic x4 only"


def _card_markdown(card: dict[str, Any]) -> str:
    m = card["metrics"]
    lines = [
        f"# Model card: {card['name']}",
        "",
        (f"- architecture: {card['arch']} (spandrel {card['spandrel_arch']}), x{card['scale']}, "
         f"{card['parameters']:,} parameters"),
        f"- weights: `{card['weights']}` ({card['weights_dtype']}), sha256 `{card['sha256']}`",
        f"- initialised from: {card['init'] or 'scratch'}"
        + (f" (sha256 `{card['init_sha256']}`)" if card.get("init_sha256") else ""),
        (f"- trained steps: {card['steps']} (batch {card['preset']['batch_size']}, HR patch "
         f"{card['preset']['hr_patch']}, Adam peak LR {card['preset']['lr']}, MultiStepLR gamma "
         f"{card['preset']['gamma']} at {card['milestones']}, EMA {card['preset']['ema_decay']}, "
         f"L1 loss, degradations: {describe_degradations(card)})"),
        *([f"- network interpolation: {1 - card['interpolation']['alpha']:g} x this run's weights "
           f"(sha256 `{card['interpolation']['this_sha256']}`) + {card['interpolation']['alpha']:g} x "
           f"`{Path(card['interpolation']['with']).name}` of another run (sha256 "
           f"`{card['interpolation']['with_sha256']}`); the validation scores below are this run's, the "
           "test scores the blend's"] if card.get("interpolation") else []),
        (f"- intensity mapping: {card['intensity']['mode']} [{card['intensity']['low']}, "
         f"{card['intensity']['high']}] {card['modality_units']} → [0, 1] (sr_engine.intensity)"),
        f"- exported: {card['exported']}",
        "",
        "## Data",
        "",
        (f"Training: {card['data']['train_slices']} slices from {len(card['data']['train_series'])} "
         f"series ({card['data']['train_patients']} patients). Validation: "
         f"{card['data']['val_slices']} slices from {len(card['data']['val_series'])} series."),
        "",
        _validation_note(card["data"]),
        "",
        "| split | series key | modality | size | slices | description |",
        "|---|---|---|---|---|---|",
    ]
    for split in ("train", "val"):
        for s in card["data"][f"{split}_series"]:
            lines.append(f"| {split} | {s['series_key']} | {s['modality']} | {s['rows']}x{s['columns']} "
                         f"| {s['slices']} | {s['description']} |")
    lines += ["", "## Metrics (PSNR dB / SSIM on HU clipped to [-1024, 3071], `srnode evaluate` protocol)", ""]
    lines.append(f"Exported weights: the run's `{card.get('exported_from', 'final_ema.pt')}` (EMA). Validation "
                 "scores are from the run's periodic check (centre crops of the validation series), "
                 "used for monitoring; test scores are computed at export on the test series.")
    lines.append("")
    lines.append("| set | bicubic | this model |")
    lines.append("|---|---|---|")
    val_label = "validation (last check of the run" + (
        "; overlaps training)" if card.get("validation_overlaps_training") else ")")
    for key, label in (("val", val_label), ("test", "test (never trained on)")):
        if m.get(key):
            b, v = m[key]["bicubic"], m[key]["model"]
            n = f", {m[key]['slices']} slices" if "slices" in m[key] else ""
            lines.append(f"| {label}{n} | {b['psnr']:.2f} / {b['ssim']:.4f} | {v['psnr']:.2f} / {v['ssim']:.4f} |")
    lines += ["", "Training curves: `training_curves.png`."]
    if card.get("attribution"):
        lines += ["", "## Data attribution", "", card["attribution"].strip()]
    lines += ["", "## Node registry entry", "", "```yaml", card["registry_yaml"].rstrip(), "```", ""]
    return "\n".join(lines)


def _test_metrics(descriptor_model: torch.nn.Module, test_data: Sequence[Path], scale: int,
                  run_meta: dict[str, Any], cache_dir: Path, max_slices: int = 0,
                  crop: int | None = None) -> dict[str, Any]:
    from sr_engine.intensity import IntensityMapping
    from training.dataset_index import index_dicom_trees
    from training.slice_cache import build_cache
    from training.validation import evaluate_model, make_val_set

    recs = index_dicom_trees(test_data, modalities=[run_meta["data"]["modality"]])
    mapping = IntensityMapping(run_meta["intensity"]["low"], run_meta["intensity"]["high"])
    vs = make_val_set(build_cache(recs, cache_dir, progress=False), max_slices=max_slices or 10**9,
                      crop=crop, scale=scale)
    return {"bicubic": evaluate_model(None, vs, mapping, scale),
            "model": evaluate_model(descriptor_model, vs, mapping, scale), "slices": vs.n}


def export_run(run: Path, dest: Path, name: str, weights: str = "final_ema", fp16: bool = False,
               register: str | Path | None = None, test_data: Sequence[Path] = (),
               attribution: str = "", test_max_slices: int = 0,
               test_crop: int | None = None,
               interpolate: tuple[Path, float] | None = None) -> dict[str, Any]:
    """Export `run`'s EMA weights to `dest` with a model card; optionally register in a YAML.

    `interpolate` (other run, alpha): ship the blend (1 - alpha) x this run + alpha x the other's
    `weights` (see interpolate_weights); the card records both sources.
    """
    run, dest = Path(run), Path(dest)
    meta = json.loads((run / "run.json").read_text())
    check_model_name(name, meta["preset"]["arch"])  # before anything is exported under that name
    src = run / f"{weights}.pt"
    if not src.exists():
        raise FileNotFoundError(f"{src} not found: is the run finished?")
    state = load_training_state_weights(src)
    blend: dict[str, Any] | None = None
    if interpolate is not None:
        other_run, alpha = Path(interpolate[0]), float(interpolate[1])
        other = other_run / f"{weights}.pt" if other_run.is_dir() else other_run
        state = interpolate_weights(state, load_training_state_weights(other), alpha)
        blend = {"with": str(other), "with_sha256": file_sha256(other), "alpha": alpha,
                 "this_run": str(src), "this_sha256": file_sha256(src)}
    out = save_weights(state, dest / f"{name}.pth", fp16=fp16)
    sha = file_sha256(out)
    preset = meta["preset"]
    # Round trip through the engine's strict loader: what we ship is what the node can load.
    descriptor = load_checkpoint(out, expected_arch=preset["arch"], sha256=sha)
    last = torch.load(run / "last.pt", map_location="cpu", weights_only=False) \
        if (run / "last.pt").exists() else {}
    if "preset_milestones" in preset:  # run.json records the milestones the run stepped
        milestones = list(preset["milestones"])
    else:  # a run written before it did: the paper's points scaled to the run's length
        from training.presets import Preset
        milestones = Preset(**{**preset, "milestones": tuple(preset["milestones"]),
                               "betas": tuple(preset["betas"])}).scaled_milestones()
    metrics: dict[str, Any] = {}
    if last.get("last_val") and last.get("baseline"):
        metrics["val"] = {"bicubic": last["baseline"], "model": last["last_val"], "best": last.get("best")}
    if test_data:
        # The decoded test volumes are scratch: never left beside the exported weights.
        with tempfile.TemporaryDirectory(prefix="srnode-test-cache-") as tmp:
            metrics["test"] = _test_metrics(descriptor.model, test_data, descriptor.scale, meta,
                                            Path(tmp), test_max_slices, test_crop)
    entry = registry_entry(preset["arch"], out.resolve(), sha, descriptor.scale,
                           meta["intensity"]["low"], meta["intensity"]["high"],
                           f"{name}: {preset['arch']} fine-tuned on {meta['data']['modality']} "
                           f"({last.get('step', preset['steps'])} steps)")
    reg_yaml = yaml.safe_dump({"models": {name: json.loads(entry.model_dump_json(exclude_none=True))
                                          | {"weights": f"{out.name}"}}}, sort_keys=False)
    card = {
        "name": name, "arch": preset["arch"], "spandrel_arch": str(descriptor.architecture.id),
        "scale": descriptor.scale,
        "parameters": sum(p.numel() for p in descriptor.model.parameters()),
        "weights": out.name, "exported_from": f"{weights}.pt", "weights_dtype": "float16" if fp16 else "float32",
        "sha256": sha,
        "init": Path(meta["init"]).name if meta.get("init") else None,
        # Recorded when training began; hashing the path now would name whatever replaced it since.
        "init_sha256": meta.get("init_sha256") or (
            file_sha256(meta["init"]) if meta.get("init") and Path(meta["init"]).exists() else None),
        "steps": int(last.get("step", preset["steps"])), "preset": preset, "milestones": milestones,
        "intensity": {"mode": "fixed", "low": meta["intensity"]["low"], "high": meta["intensity"]["high"]},
        "modality_units": "HU" if meta["data"]["modality"] == "CT" else "modality units",
        "data": meta["data"], "metrics": metrics, "amp": meta.get("amp"),
        "degradations": meta.get("degradations"), "native_noise": meta.get("native_noise"),
        "interpolation": blend,
        # Explicit, because validation scores on training series measure fit, not generalisation.
        "validation_overlaps_training": meta["data"].get("validation", {}).get("overlaps_training"),
        "exported": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "attribution": attribution, "registry_yaml": reg_yaml,
    }
    if (run / "log.csv").exists():
        from training.curves import plot_curves
        plot_curves(run / "log.csv", dest / "training_curves.png", title=name)
    (dest / _CARD_JSON).write_text(json.dumps(card, indent=1, default=str))
    (dest / "MODEL_CARD.md").write_text(_card_markdown(card))
    (dest / "registry.yaml").write_text(reg_yaml)
    if register:
        add_model_entry(Path(register), name, entry)
    return card


def interpolate_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                        alpha: float) -> dict[str, torch.Tensor]:
    """(1 - alpha) * a + alpha * b per tensor: ESRGAN's network interpolation.

    Why: two fine-tunes of one model that sit on either side of a trade-off (here: noise kept vs
    edges sharpened) blend smoothly in weight space, so a point between them needs no new training.
    Both must be the same architecture (same keys and shapes); integer buffers are taken from `a`.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"interpolation alpha must be in [0, 1], not {alpha}")
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        raise ValueError("cannot interpolate: the two checkpoints are not the same architecture "
                         "(different parameter names or shapes)")
    return {k: ((1 - alpha) * a[k].float() + alpha * b[k].float()).to(a[k].dtype) if a[k].is_floating_point()
            else a[k].clone() for k in a}


def load_training_state_weights(path: Path) -> dict[str, torch.Tensor]:
    """The plain state dict of an exported-weights file written by the training loop."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a plain state dict")
    return obj
