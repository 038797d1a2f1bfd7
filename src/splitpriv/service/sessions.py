"""Session routes: open a session (JSON config in, bearer token out), download the bottom, checkpoint, status,
close. The session's token is sent once, in the answer that opens it."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import TypeAdapter
from starlette.concurrency import run_in_threadpool

from splitpriv.contract import ProtocolError, SessionConfig, SessionInfo
from splitpriv.contract.limits import MAX_CONFIG_BYTES
from splitpriv.service.deps import API, CallerDep, VendorDep, read_body
from splitpriv.service.errors import ERRORS, ErrorBody
from splitpriv.service.guard import ServiceError, api_key, parse_config_json

router = APIRouter(prefix=API)

_OPENED = {201: {"content": {"application/json": {"schema": TypeAdapter(SessionInfo).json_schema()}}},
           **{code: {"model": ErrorBody} for code in (401, 403, 413, 422, 429)}}
_CONFIG = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": TypeAdapter(SessionConfig).json_schema()}}}}


@router.post("/sessions", status_code=201, response_model=None, summary="Open a session", responses=_OPENED,
             openapi_extra=_CONFIG)
async def open_session(request: Request, vendor: VendorDep):
    """Open a tuning session. The answer holds the session's bearer token: the only time it is sent. When the
    vendor has API keys, send one as ``Authorization: Bearer <API key>``."""
    key = api_key(request.app.state.keys, request.headers.get("authorization"))
    data = parse_config_json(await read_body(request, MAX_CONFIG_BYTES, key))
    tuning = data.get("tuning", {"method": "lora"})
    if not isinstance(tuning, (dict, str)):
        raise ServiceError(422, f'tuning must be an object such as {{"method": "lora"}}, got {tuning!r}')

    def open_() -> dict:
        try:
            config = SessionConfig.from_dict(data)
            info = vendor.open_session(config, owner=key.key_id if key else None,
                                       owner_max_sessions=key.quotas.max_sessions if key else None)
        except ProtocolError:
            raise
        except (ValueError, TypeError, KeyError, OverflowError, RecursionError) as exc:
            raise ServiceError(422, f"bad session config: {exc}") from None
        return {"session_id": info.session_id, "token": info.token, "d_model": info.d_model,
                "n_layers": info.n_layers, "disclosure": info.disclosure}

    return JSONResponse(await run_in_threadpool(open_), status_code=201)


@router.get("/sessions/{session_id}/bottom", response_class=Response, summary="Download the bottom",
            responses={200: {"content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}},
                       **ERRORS})
async def bottom(session_id: str, caller: CallerDep, vendor: VendorDep):
    """The bottom package: its weights, config and tokenizer (and the head's weights when the customer holds it)."""
    package = await run_in_threadpool(vendor.bottom_package, session_id, caller.token)
    return Response(package, media_type="application/zip")


@router.post("/sessions/{session_id}/checkpoint", summary="Checkpoint the session", responses=ERRORS)
async def checkpoint(session_id: str, caller: CallerDep, vendor: VendorDep) -> dict:
    """Write the session (tuned top, optimizer, schedule, step) to the vendor's state dir now; the answer
    names the checkpoint's directory relative to the vendor's state dir (the top's weights never leave it)."""
    saved = await run_in_threadpool(vendor.checkpoint, session_id, caller.token)
    for name in ("path", "top"):  # no absolute server paths for callers
        saved[name] = Path(saved[name]).relative_to(vendor.state_dir).as_posix()
    return saved


@router.get("/sessions/{session_id}/status", summary="Session status", responses=ERRORS)
async def status(session_id: str, caller: CallerDep, vendor: VendorDep) -> dict:
    return await run_in_threadpool(vendor.status, session_id, caller.token)


@router.delete("/sessions/{session_id}", summary="Close the session", responses=ERRORS)
async def close(session_id: str, caller: CallerDep, vendor: VendorDep) -> dict:
    """Close the session: it can no longer be used, and its saved state is deleted."""
    await run_in_threadpool(vendor.close, session_id, caller.token)
    return {"session_id": session_id, "closed": True}
