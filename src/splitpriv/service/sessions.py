"""Session routes: open a session (JSON config in, bearer token out), download the bottom, checkpoint, status,
close. The session's token is sent once, in the answer that opens it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response
from pydantic import TypeAdapter
from starlette.concurrency import run_in_threadpool

from splitpriv.contract import ProtocolError, SessionConfig, SessionInfo
from splitpriv.contract.errors import UnknownSession
from splitpriv.contract.limits import MAX_CONFIG_BYTES
from splitpriv.service.deps import API, CallerDep, GuardDep, KeysDep, OpenHookDep, VendorDep, caller, read_body
from splitpriv.service.errors import ERRORS, ErrorBody
from splitpriv.service.guard import ServiceError, api_key, bearer, parse_config_json
from splitpriv.service.idempotency import HEADER, WAIT, IdempotencyKeys, check_key, fingerprint

router = APIRouter(prefix=API)

_OPENED = {201: {"content": {"application/json": {"schema": TypeAdapter(SessionInfo).json_schema()}}},
           **{code: {"model": ErrorBody} for code in (400, 401, 403, 409, 413, 422, 429, 503)}}
_CONFIG = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": TypeAdapter(SessionConfig).json_schema()}}}}


@router.post("/sessions", status_code=201, response_model=None, summary="Open a session", responses=_OPENED,
             openapi_extra=_CONFIG)
async def open_session(request: Request, vendor: VendorDep, keys: KeysDep, hook: OpenHookDep,
                       idempotency_key: Annotated[str | None, Header(alias=HEADER)] = None):
    """Open a tuning session. The answer holds the session's bearer token: the only time it is sent, and again to a
    repeat of the same request with the same ``Idempotency-Key`` (:mod:`splitpriv.service.idempotency`): send one
    (a random id per logical open) to retry an open safely. When the vendor has API keys, send one as
    ``Authorization: Bearer <API key>``."""
    key = api_key(request.app.state.keys, request.headers.get("authorization"))
    idem = check_key(idempotency_key)
    body = await read_body(request, MAX_CONFIG_BYTES, None if idem else key)  # a keyed open counts once, below
    data = parse_config_json(body)
    tuning = data.get("tuning", {"method": "lora"})
    if not isinstance(tuning, (dict, str)):
        raise ServiceError(422, f'tuning must be an object such as {{"method": "lora"}}, got {tuning!r}')
    # Shielded: a server that cancels the handler when its client goes away (Ray Serve does) must not stop an open
    # half-way: its thread would open the session anyway, and the key would be left without its answer.
    answering = asyncio.ensure_future(_answer(request.app.state.guard, vendor, keys, body, data, key, idem, hook))
    answering.add_done_callback(lambda task: task.cancelled() or task.exception())  # retrieved, also if orphaned
    status, answer = await asyncio.shield(answering)
    return JSONResponse(answer, status_code=status)


async def _answer(guard, vendor, keys: IdempotencyKeys, body: bytes, data: dict, key, idem: str | None,
                  hook) -> tuple[int, dict]:
    """The stored answer of a repeated ``idem``; else open the session, counting the body against ``key``'s bytes
    per day, and store the answer under ``idem`` (forgotten if the open fails, so that a retry opens again)."""
    owner = key.key_id if key else None
    if idem is not None:
        stored = await _claim(keys, owner, idem, fingerprint(data))
        if stored is not None:  # a repeat: the first answer, nothing counted again
            return stored["status"], stored["body"]
    try:
        if idem is not None:
            guard.bytes_in(key, len(body))
        answer = await run_in_threadpool(_open, vendor, data, key)
        if hook is not None:
            await hook()
    except BaseException:
        if idem is not None:
            await run_in_threadpool(keys.abandon, owner, idem)
        raise
    if idem is not None:
        await run_in_threadpool(keys.finish, owner, idem, 201, answer)
    return 201, answer


def _open(vendor, data: dict, key) -> dict:
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


async def _claim(keys: IdempotencyKeys, owner: str | None, idem: str, request: str) -> dict | None:
    """None when this call runs the open for ``idem``; else the stored answer, waited for (asleep, at most
    :data:`WAIT` s, then 503) while another attempt with the key is still opening."""
    deadline = time.monotonic() + WAIT
    while True:
        stored = await run_in_threadpool(keys.begin, owner, idem, request)
        if stored is None or stored["status"] is not None:
            return stored
        if time.monotonic() > deadline:
            raise ServiceError(503, f"a session open with this {HEADER} is still running: retry shortly",
                               {"Retry-After": "1"})
        await asyncio.sleep(0.05)


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
async def close(request: Request, session_id: str, vendor: VendorDep, guard: GuardDep, keys: KeysDep) -> dict:
    """Close the session: it can no longer be used, and its saved state is deleted. Idempotent: a repeat with the
    session's token (within the key store's TTL) answers as the first did."""
    answer = {"session_id": session_id, "closed": True}
    token = bearer(request.headers.get("authorization"))
    if await run_in_threadpool(keys.closed, session_id, token):
        return answer
    try:
        who = await caller(request, session_id, vendor, guard)
        await run_in_threadpool(vendor.close, session_id, who.token)
    except UnknownSession:
        if await run_in_threadpool(keys.closed, session_id, token):  # a concurrent repeat closed it first
            return answer
        raise
    await run_in_threadpool(keys.remember_close, session_id, token)
    return answer
