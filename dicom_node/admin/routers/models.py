"""Model registry: list (built-ins too), details with verified sha256 and model card, add, remove."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException, Request

from config.schema import SRNodeConfig
from dicom_node.admin.auth import Principal, require_admin, require_read
from dicom_node.admin.context import bad_key, ctx_of
from dicom_node.admin.routers.routing import check_rule_models

router = APIRouter(tags=["models"])

# Where a checkpoint's model card may sit, relative to the weights file (first hit wins).
_CARD_NAMES = ("{stem}.md", "{stem}.card.md", "{stem}.json", "{stem}.card.json", "MODEL_CARD.md", "model_card.md",
               "model_card.json", "README.md")


def find_model_card(weights: Path | None) -> dict[str, str] | None:
    """The model card shipped beside a checkpoint (markdown or JSON), if any."""
    if weights is None:
        return None
    for pattern in _CARD_NAMES:
        candidate = weights.parent / pattern.format(stem=weights.stem)
        if candidate.is_file() and candidate != weights:
            text = candidate.read_text(encoding="utf-8", errors="replace")[:200_000]
            kind = "json" if candidate.suffix == ".json" else "markdown"
            return {"path": str(candidate), "format": kind, "text": text}
    return None


def _describe(name: str, cfg: SRNodeConfig, verify: bool = False) -> dict[str, Any]:
    from sr_engine.archs import file_sha256
    from sr_engine.interpolate import INTERPOLATORS
    from sr_engine.registry import resolve

    spec = resolve(name, cfg.models)
    out: dict[str, Any] = {
        "name": spec.name,
        "arch": spec.arch,
        "scale": spec.scale,
        "weights": str(spec.weights) if spec.weights else None,
        "sha256": spec.sha256,
        "description": spec.description,
        "builtin": name not in cfg.models,
        "interpolator": spec.arch in INTERPOLATORS,
        "usable": spec.arch in INTERPOLATORS or spec.weights is not None,
        "intensity": spec.intensity.model_dump(mode="json") if spec.intensity else None,
    }
    if verify and spec.weights is not None:
        try:
            actual = file_sha256(spec.weights)
            out["sha256_file"] = actual
            out["sha256_ok"] = spec.sha256 is None or actual == spec.sha256
        except OSError as exc:
            out["sha256_file"], out["sha256_ok"] = None, False
            out["error"] = f"cannot read weights: {exc.strerror}"
        out["card"] = find_model_card(spec.weights)
    return out


@router.get("/models")
def list_models(request: Request, _: Principal = Depends(require_read)) -> list[dict[str, Any]]:
    """Every model the node can run: configured ones first, then built-ins."""
    from sr_engine.registry import all_specs

    cfg = ctx_of(request).live.current()
    return [_describe(spec.name, cfg) for spec in all_specs(cfg.models)]


@router.get("/models/{name}")
def get_model(name: str, request: Request, _: Principal = Depends(require_read)) -> dict[str, Any]:
    """One model with the sha256 of its weights file (checked against the configured one) and its card."""
    from sr_engine.registry import UnknownModelError

    try:
        return _describe(name, ctx_of(request).live.current(), verify=True)
    except UnknownModelError:
        raise HTTPException(404, f"no model {name!r}") from None


# One answer whether the file is missing, unreadable or outside the allowed folders: the API must
# not tell an admin token holder which paths exist on the node.
WEIGHTS_NOT_ALLOWED = "weights not found in an allowed model directory (models_dirs)"


def confined_weights(weights: object, dirs: list[Path]) -> Path | None:
    """The checkpoint file `weights` names inside one of `dirs`, symlinks resolved; else None.

    A relative path is looked up in each directory in turn. Nothing outside `dirs` is touched
    beyond resolving the path, so the answer says nothing about files elsewhere.
    """
    if not isinstance(weights, str) or not weights:
        return None
    raw = Path(weights)
    for candidate in [raw] if raw.is_absolute() else [d / raw for d in dirs]:
        real = candidate.resolve()
        try:
            if any(real.is_relative_to(d) for d in dirs) and real.is_file():
                return real
        except OSError:  # unreadable folder: the same neutral refusal
            continue
    return None


def _verified_checkpoint(key: str, weights: Path, arch: str, sha256: str | None, scale: int) -> str:
    """The sha256 of `weights` once it matches `sha256`, loads strictly as `arch` and is x`scale` (else 422)."""
    from sr_engine.archs import file_sha256, load_checkpoint

    try:
        actual = file_sha256(weights)
    except OSError:
        raise bad_key(f"{key}.weights", WEIGHTS_NOT_ALLOWED) from None
    if sha256 and sha256 != actual:
        raise bad_key(f"{key}.sha256", f"the file's sha256 is {actual}, not {sha256}")
    try:
        descriptor = load_checkpoint(weights, expected_arch=arch, sha256=actual)
    except Exception as exc:  # noqa: BLE001 - any load failure is a refusal naming the file
        raise bad_key(f"{key}.weights", str(exc)) from None
    if descriptor.scale != scale:
        raise bad_key(f"{key}.scale", f"the checkpoint is x{descriptor.scale}, not x{scale}")
    return actual


@router.post("/models")
def add_model(
    request: Request,
    body: dict[str, Any] = Body(
        ...,
        examples=[{"name": "ct-esrgan", "arch": "realesrgan", "weights": "/srv/srnode/models/ct.pth",
                   "sha256": "<64 hex>", "scale": 4, "description": "fine-tuned on chest CT"}],
    ),
    who: Principal = Depends(require_admin),
) -> dict[str, Any]:
    """Register a model: validated like a YAML `models:` entry; a network's checkpoint must lie in
    `models_dirs`, and its sha256, strict load and scale are verified."""
    from sr_engine.registry import INTERPOLATOR_ARCHS

    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise bad_key("name", "a model name is required")
    key = f"models.{name}"
    entry = {k: v for k, v in body.items() if k != "name"}
    ctx = ctx_of(request)
    models = ctx.live.current().model_dump(mode="json")["models"]
    candidate = ctx.candidate("models", {**models, name: entry})  # schema, name and arch checks first
    spec = candidate.models[name]
    if spec.arch not in INTERPOLATOR_ARCHS:
        weights = confined_weights(entry.get("weights"), candidate.models_dirs or [])
        if weights is None:
            raise bad_key(f"{key}.weights", WEIGHTS_NOT_ALLOWED)
        sha = _verified_checkpoint(key, weights, spec.arch, spec.sha256, spec.scale)
        entry.update(sha256=sha, weights=str(weights))
    cfg = ctx.change_section("models", {**models, name: entry}, who)
    return _describe(name, cfg, verify=True)


@router.delete("/models/{name}")
def delete_model(name: str, request: Request, who: Principal = Depends(require_admin)) -> dict[str, str]:
    """Remove a configured model; refused (422) while a routing rule uses it."""
    ctx = ctx_of(request)
    cfg = ctx.live.current()
    if name not in cfg.models:
        raise HTTPException(404, f"no configured model {name!r} (built-ins cannot be removed)")
    models = {k: v for k, v in cfg.model_dump(mode="json")["models"].items() if k != name}
    check_rule_models(ctx.candidate("models", models))
    ctx.change_section("models", models, who)
    return {"deleted": name}
