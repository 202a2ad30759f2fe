"""Which configuration values come from the file and which from an admin's override; revert to the file."""
from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request

from dicom_node.admin.auth import Principal, require_admin, require_read
from dicom_node.admin.context import bad_key, ctx_of
from dicom_node.index.live_config import MUTABLE_SECTIONS, Override

log = logging.getLogger("srnode.admin")

router = APIRouter(tags=["config"])


def _shown(override: Override) -> dict[str, Any]:
    return {"key": override.key, "source": "override", "actor": override.actor,
            "at": override.created_at.isoformat() if override.created_at else None,
            "file_changed": override.file_changed, "value": override.value, "file_value": override.file_value}


@router.get("/config/overrides")
def list_overrides(request: Request, _: Principal = Depends(require_read)) -> list[dict[str, Any]]:
    """Every section that can change at run time: `source` file or override (who, when, its value,
    the file's value, and `file_changed`: the file was edited after the override was made)."""
    live = ctx_of(request).live
    by_key = {o.key: o for o in live.overrides()}
    file_data = live.base.model_dump(mode="json")
    return [_shown(by_key[k]) if k in by_key else {"key": k, "source": "file", "value": file_data[k]}
            for k in MUTABLE_SECTIONS]


@router.delete("/config/overrides/{key}")
def revert_to_file(key: str, request: Request, who: Principal = Depends(require_admin)) -> dict[str, Any]:
    """Remove the override of `key`: the file's value is in force again (audited as config.revert.KEY).
    404 when the key has no override; 422 when the other overrides need it (e.g. a peer they send to)."""
    live = ctx_of(request).live
    if key not in MUTABLE_SECTIONS:
        raise bad_key(key, f"not a section that can be overridden ({', '.join(MUTABLE_SECTIONS)})")
    if not any(o.key == key for o in live.overrides()):
        raise HTTPException(404, detail=f"{key} has no override: the file's value is in force")
    live.clear([key], who.actor)
    log.info("admin change: %s reverted to the file by %s", key, who.actor)
    return {"key": key, "source": "file", "value": live.base.model_dump(mode="json")[key]}
