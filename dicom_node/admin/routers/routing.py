"""Routing rules and the model-per-modality choice."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Request

from config.schema import SRNodeConfig
from dicom_node.admin.auth import Principal, require_admin, require_read
from dicom_node.admin.context import bad_key, ctx_of
from dicom_node.routing import rule_name

router = APIRouter(tags=["routing"])


def check_rule_models(cfg: SRNodeConfig) -> None:
    """Every rule that runs a network must have its weights configured (else 422).

    Unknown models and scales a model cannot do were already refused by the config validation
    (sr_engine.registry.config_errors), like in the YAML file; a network without weights is legal
    in the file (weights may come later) but not as the model a rule switches to now.
    """
    from sr_engine.registry import INTERPOLATOR_ARCHS, resolve

    for i, rule in enumerate(cfg.routing):
        if rule.skip or not rule.model:
            continue
        spec = resolve(rule.model, cfg.models)
        if spec.arch not in INTERPOLATOR_ARCHS and spec.weights is None:
            raise bad_key(f"routing.{i}.model", f"model {rule.model!r} has no weights configured")


def _set_routing(request: Request, rules: list[Any], who: Principal) -> SRNodeConfig:
    ctx = ctx_of(request)
    check_rule_models(ctx.candidate("routing", rules))  # schema errors (ConfigError) surface first
    return ctx.change_section("routing", rules, who)


def _modality_rules(cfg: SRNodeConfig) -> dict[str, dict[str, Any]]:
    """For each modality named in a rule: the first rule for it and the model it runs."""
    out: dict[str, dict[str, Any]] = {}
    for i, rule in enumerate(cfg.routing):
        wanted = rule.match.modality
        for modality in [wanted] if isinstance(wanted, str) else wanted or []:
            out.setdefault(
                modality.upper(),
                {"rule_index": i, "rule": rule_name(i, rule), "model": None if rule.skip else rule.model,
                 "scale": rule.scale, "skip": rule.skip},
            )
    return out


@router.get("/routing")
def get_routing(request: Request, _: Principal = Depends(require_read)) -> list[dict[str, Any]]:
    """The routing rules in force, in order (first match wins)."""
    return ctx_of(request).live.current().model_dump(mode="json")["routing"]


@router.put("/routing")
def put_routing(
    request: Request,
    body: list[dict[str, Any]] = Body(..., examples=[[{"match": {"modality": "CT"}, "model": "bicubic"}]]),
    who: Principal = Depends(require_admin),
) -> list[dict[str, Any]]:
    """Replace all routing rules (validated like the config file; models must resolve)."""
    return _set_routing(request, body, who).model_dump(mode="json")["routing"]


@router.get("/routing/modalities")
def get_modality_models(request: Request, _: Principal = Depends(require_read)) -> dict[str, Any]:
    """Model per modality: the first rule naming each modality."""
    return _modality_rules(ctx_of(request).live.current())


@router.put("/routing/modalities/{modality}")
def put_modality_model(
    modality: str,
    request: Request,
    body: dict[str, Any] = Body(..., examples=[{"model": "lanczos", "scale": 2}]),
    who: Principal = Depends(require_admin),
) -> dict[str, Any]:
    """Choose the model for a modality: edits the first rule naming it, or appends a rule for it."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise bad_key("model", "a model name is required")
    extra = set(body) - {"model", "scale"}
    if extra:
        raise bad_key(sorted(extra)[0], "only model and scale can be set here")
    cfg = ctx_of(request).live.current()
    rules = cfg.model_dump(mode="json")["routing"]
    found = _modality_rules(cfg).get(modality.upper())
    if found is None:
        rules.append({"name": f"{modality.lower()}-model", "match": {"modality": modality.upper()}})
        index = len(rules) - 1
    else:
        index = found["rule_index"]
        shared = rules[index]["match"].get("modality")
        if isinstance(shared, list) and len(shared) > 1:
            # The rule also serves other modalities: give this one its own copy just before it.
            own = {**rules[index], "name": f"{modality.lower()}-model",
                   "match": {**rules[index]["match"], "modality": modality.upper()}}
            rules.insert(index, own)
    rules[index].update(model=body["model"], skip=False)
    if "scale" in body:
        rules[index]["scale"] = body["scale"]
    new = _set_routing(request, rules, who)
    return _modality_rules(new)[modality.upper()]
