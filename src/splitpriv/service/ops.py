"""Operator routes: ``/v1/health`` (liveness and what a new customer needs to know, nothing about other tenants)
and ``/metrics`` (Prometheus text, aggregates only; an admin API key when the vendor has keys)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from splitpriv.service.deps import API, VendorDep
from splitpriv.service.errors import ErrorBody
from splitpriv.service.guard import ServiceError, api_key

health_router = APIRouter(prefix=API)
metrics_router = APIRouter()


@health_router.get("/health", summary="Health")
async def health(request: Request, vendor: VendorDep) -> dict:
    """Liveness and what a new customer needs to know; nothing about other tenants (see ``/metrics``)."""
    from splitpriv import __version__

    keys = request.app.state.keys
    return {
        "status": "ok",
        "version": __version__,
        "model": vendor.model_name or "all-MiniLM-L6-v2",
        "max_body_bytes": request.app.state.max_body_bytes,
        "persistent": vendor.state_dir is not None,
        "keys_required": bool(keys is not None and keys.active),
        **({"replica": vendor.replica_id} if getattr(vendor, "replica_id", None) else {}),  # behind a router
    }


@metrics_router.get("/metrics", response_class=Response, summary="Prometheus metrics",
                    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
                               401: {"model": ErrorBody}, 403: {"model": ErrorBody}})
async def prometheus(request: Request):
    """Request counts and latencies by route, sessions, pending forwards, memory (aggregates only). With
    API keys, an admin key (``splitpriv keys create --admin``) is needed."""
    keys = request.app.state.keys
    if keys is not None and keys.active:
        record = api_key(keys, request.headers.get("authorization"))
        if not record.admin:
            raise ServiceError(403, "/metrics needs an admin API key (splitpriv keys create --admin)")
    body, content_type = request.app.state.metrics.render()
    return Response(body, media_type=content_type)
