"""Peers: list, add/change, delete, C-ECHO test."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool

from dicom_node.admin.auth import Principal, require_admin, require_read
from dicom_node.admin.context import ctx_of, log
from dicom_node.admin.echo import echo_peer
from dicom_node.index.audit import audit_change
from dicom_node.outbox.queue import delivery_health, retry_now

router = APIRouter(tags=["peers"])

PEER_EXAMPLE = {"ae_title": "PACS", "host": "10.0.0.5", "port": 104, "tls": False}


@router.get("/peers")
def list_peers(request: Request, _: Principal = Depends(require_read)) -> dict[str, Any]:
    """All peers in force, by key, each with its `delivery` health (docs/admin.md, "Delivery health")."""
    ctx = ctx_of(request)
    cfg = ctx.live.current()
    with ctx.sessions() as session:
        return {key: {**peer.model_dump(mode="json"), "delivery": delivery_health(session, key, cfg.send).as_json()}
                for key, peer in cfg.peers.items()}


@router.put("/peers/{key}")
def put_peer(
    key: str,
    request: Request,
    body: dict[str, Any] = Body(..., examples=[PEER_EXAMPLE], description="ae_title, host, port, tls"),
    who: Principal = Depends(require_admin),
) -> dict[str, Any]:
    """Add or replace one peer (validated like the config file)."""
    ctx = ctx_of(request)
    peers = ctx.live.current().model_dump(mode="json")["peers"]
    peers[key] = body
    cfg = ctx.change_section("peers", peers, who)
    return cfg.peers[key].model_dump(mode="json")


@router.delete("/peers/{key}")
def delete_peer(key: str, request: Request, who: Principal = Depends(require_admin)) -> dict[str, str]:
    """Remove a peer; refused (422) while a routing rule still sends to it."""
    ctx = ctx_of(request)
    peers = ctx.live.current().model_dump(mode="json")["peers"]
    if key not in peers:
        raise HTTPException(404, f"no peer {key!r}")
    del peers[key]
    ctx.change_section("peers", peers, who)
    return {"deleted": key}


@router.post("/peers/{key}/echo")
async def echo(key: str, request: Request, _: Principal = Depends(require_admin)) -> dict[str, Any]:
    """Send a C-ECHO to the peer as the node's AE title; reports status and round-trip time."""
    cfg = ctx_of(request).live.current()
    peer = cfg.peers.get(key)
    if peer is None:
        raise HTTPException(404, f"no peer {key!r}")
    result = await run_in_threadpool(echo_peer, peer, cfg.node.ae_title)
    return {"peer": key, **asdict(result)}


@router.post("/peers/{key}/retry")
def retry(key: str, request: Request, who: Principal = Depends(require_admin)) -> dict[str, Any]:
    """Retry now: make every pending instance for the peer due at once (its backoff is reset); the
    sender, which looks at the outbox every half second, sends them at its next pass."""
    ctx = ctx_of(request)
    if key not in ctx.live.current().peers:
        raise HTTPException(404, f"no peer {key!r}")
    with ctx.sessions() as session, session.begin():
        rows = retry_now(session, key)
        audit_change(session, who.actor, f"peer.retry.{key}", None, {"pending_made_due": rows}, "retry-now")
    log.info("peer %s: %d pending instance(s) made due now by %s", key, rows, who.actor)
    return {"peer": key, "pending_made_due": rows}
