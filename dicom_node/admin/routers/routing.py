"""Routing rules and the model-per-modality choice.

Every read answers with the rules' version (ETag, and `version` in GET /routing/state); a change
that names the version it was based on (If-Match header or `?version=`) is refused with 409 when
the rules changed since, so that two editors (or two panels of one page) never undo each other.
"""
from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

from fastapi import APIRouter, Body, Depends, Header, HTTPException, Query, Request, Response

from config.schema import RoutingRule, SRNodeConfig
from dicom_node.admin.auth import Principal, require_admin, require_read
from dicom_node.admin.context import bad_key, ctx_of
from dicom_node.routing import duplicate_rule_name, general_rule, rule_name

router = APIRouter(tags=["routing"])

# Check-then-save of a versioned change must not interleave with another one in this process.
_SAVE_LOCK = threading.Lock()

_VERSION_DOC = "the version the change is based on (from GET); 409 when the rules changed since"


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


def routing_version(cfg: SRNodeConfig) -> str:
    """A short digest of the rules in force: changes whenever any rule does."""
    text = json.dumps(cfg.model_dump(mode="json")["routing"], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _wanted_version(if_match: str | None, version: str | None) -> str | None:
    # An ETag may arrive quoted and weak (W/"..."); the query parameter serves clients (the
    # console's fetch helper) that set no headers.
    raw = if_match or version
    return raw.strip().removeprefix("W/").strip('"') if raw else None


def _refuse_stale(request: Request, cfg: SRNodeConfig, wanted: str | None) -> None:
    """409 when `wanted` is given and is not the version in force."""
    now = routing_version(cfg)
    if wanted is None or wanted == now:
        return
    last = next((o for o in ctx_of(request).live.overrides() if o.key == "routing"), None)
    by = f" by {last.actor} at {last.created_at.isoformat(timespec='seconds')}" if last and last.created_at else ""
    raise HTTPException(409, detail=f"the routing rules were changed{by} after you loaded them; "
                                    f"nothing was saved: reload them and make your change again",
                        headers={"ETag": f'"{now}"'})


def _set_routing(request: Request, rules: list[Any], who: Principal, how: str) -> SRNodeConfig:
    ctx = ctx_of(request)
    candidate = ctx.candidate("routing", rules)  # schema errors (ConfigError) surface first
    check_rule_models(candidate)
    duplicate = duplicate_rule_name(candidate.routing)
    if duplicate is not None:
        raise bad_key(f"routing.{duplicate[0]}.name", f"{duplicate[1]!r} is already the name of an earlier rule")
    return ctx.change_section("routing", rules, who, how)


def _match_text(rule: RoutingRule) -> str:
    """The rule's match as the admin would write it, e.g. `modality: CT, series_description: LUNG`."""
    fields = rule.match.model_dump(exclude_none=True)
    return ", ".join(f"{k}: {v}" for k, v in fields.items()) or "(every series)"


def _modality_rules(cfg: SRNodeConfig) -> dict[str, dict[str, Any]]:
    """For each modality named in a rule (and CT, MR): the general rule that ordinary series of
    that modality hit (dicom_node.routing.general_rule) and its model, or None, and the narrower
    rules that also name it."""
    named: list[str] = ["CT", "MR"]
    for each in cfg.routing:
        wanted = each.match.modality
        named += [m.upper() for m in ([wanted] if isinstance(wanted, str) else wanted or [])]
    out: dict[str, dict[str, Any]] = {}
    for modality in dict.fromkeys(named):
        index = general_rule(cfg.routing, modality)
        rule = cfg.routing[index] if index is not None else None
        others = [rule_name(i, r) for i, r in enumerate(cfg.routing)
                  if i != index and r.match.modality is not None and modality in _upper(r.match.modality)]
        out[modality] = {
            "rule_index": index, "rule": rule_name(index, rule) if rule and index is not None else None,
            "match": _match_text(rule) if rule else None,
            "model": rule.model if rule else None, "scale": rule.scale if rule else None,
            "other_rules": others,
        }
    return out


def _upper(wanted: str | list[str]) -> list[str]:
    return [m.upper() for m in ([wanted] if isinstance(wanted, str) else wanted)]


def _rules_shown(cfg: SRNodeConfig) -> list[dict[str, Any]]:
    """Each rule with its effective name and its match in words (what the console lists)."""
    return [{"index": i, "name": rule_name(i, r), "match": _match_text(r),
             "model": None if r.skip else r.model, "scale": r.scale, "destinations": r.destinations,
             "skip": r.skip, "on_demand": r.on_demand, "passthrough": r.passthrough}
            for i, r in enumerate(cfg.routing)]


@router.get("/routing")
def get_routing(request: Request, response: Response, _: Principal = Depends(require_read)) -> list[dict[str, Any]]:
    """The routing rules in force, in order (first match wins); their version as ETag."""
    cfg = ctx_of(request).live.current()
    response.headers["ETag"] = f'"{routing_version(cfg)}"'
    return cfg.model_dump(mode="json")["routing"]


@router.get("/routing/state")
def get_routing_state(request: Request, _: Principal = Depends(require_read)) -> dict[str, Any]:
    """Everything the routing page shows, from one reading of the configuration: the version,
    the rules (as PUT /routing takes them), each rule's name and match, the model per modality."""
    cfg = ctx_of(request).live.current()
    return {"version": routing_version(cfg), "rules": cfg.model_dump(mode="json")["routing"],
            "shown": _rules_shown(cfg), "modalities": _modality_rules(cfg)}


@router.put("/routing")
def put_routing(
    request: Request,
    response: Response,
    body: list[dict[str, Any]] = Body(..., examples=[[{"name": "ct", "match": {"modality": "CT"},
                                                       "model": "bicubic"}]]),
    if_match: str | None = Header(None, description=_VERSION_DOC),
    version: str | None = Query(None, description=_VERSION_DOC),
    who: Principal = Depends(require_admin),
) -> list[dict[str, Any]]:
    """Replace all routing rules (validated like the config file; models must resolve; names unique)."""
    with _SAVE_LOCK:
        _refuse_stale(request, ctx_of(request).live.current(), _wanted_version(if_match, version))
        cfg = _set_routing(request, body, who, "json")
    response.headers["ETag"] = f'"{routing_version(cfg)}"'
    return cfg.model_dump(mode="json")["routing"]


@router.get("/routing/modalities")
def get_modality_models(request: Request, _: Principal = Depends(require_read)) -> dict[str, Any]:
    """Model per modality: the general rule of each modality (matching on it alone)."""
    return _modality_rules(ctx_of(request).live.current())


def _unique_name(wanted: str, rules: list[dict[str, Any]]) -> str:
    taken = {rule_name(i, RoutingRule.model_validate(r)).lower() for i, r in enumerate(rules)}
    name, n = wanted, 2
    while name.lower() in taken:
        name, n = f"{wanted}-{n}", n + 1
    return name


def _general_rule_for(rules: list[dict[str, Any]], cfg: SRNodeConfig, modality: str) -> tuple[int, bool]:
    """Index of the rule to edit for `modality` in `rules` (cfg's rules as dicts) and whether it is new.

    A general rule shared with other modalities gets a copy for this one just before it; without
    a general rule one is appended (after the narrower rules, which keep their series), sending
    where the first rule naming the modality sends.
    """
    index = general_rule(cfg.routing, modality)
    if index is None:
        first = next((r for r in cfg.routing if r.match.modality and modality in _upper(r.match.modality)), None)
        rules.append({"name": _unique_name(f"{modality.lower()}-general", rules), "match": {"modality": modality},
                      "destinations": list(first.destinations) if first else []})
        return len(rules) - 1, True
    shared = rules[index]["match"]["modality"]
    if isinstance(shared, list) and len(shared) > 1:
        own = {**rules[index], "name": _unique_name(f"{modality.lower()}-general", rules),
               "match": {**rules[index]["match"], "modality": modality}}
        rules.insert(index, own)
    return index, False


@router.put("/routing/modalities/{modality}")
def put_modality_model(
    modality: str,
    request: Request,
    response: Response,
    body: dict[str, Any] = Body(..., examples=[{"model": "lanczos", "scale": 2}]),
    if_match: str | None = Header(None, description=_VERSION_DOC),
    version: str | None = Query(None, description=_VERSION_DOC),
    who: Principal = Depends(require_admin),
) -> dict[str, Any]:
    """Choose the model for ordinary series of a modality: edits its general rule (matching on the
    modality alone; never a narrower rule such as `series_description: LUNG`), or appends one.
    The answer names the rule (`rule`, `match`) and says whether it was `created`."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise bad_key("model", "a model name is required")
    extra = set(body) - {"model", "scale"}
    if extra:
        raise bad_key(sorted(extra)[0], "only model and scale can be set here")
    modality = modality.upper()
    with _SAVE_LOCK:
        cfg = ctx_of(request).live.current()
        _refuse_stale(request, cfg, _wanted_version(if_match, version))
        rules = cfg.model_dump(mode="json")["routing"]
        index, created = _general_rule_for(rules, cfg, modality)
        rules[index]["model"] = body["model"]
        if "scale" in body:
            rules[index]["scale"] = body["scale"]
        new = _set_routing(request, rules, who, "per-modality")
    response.headers["ETag"] = f'"{routing_version(new)}"'
    return {**_modality_rules(new)[modality], "created": created, "version": routing_version(new)}
