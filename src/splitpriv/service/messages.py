"""Message routes: ``forward``, ``backward``, ``predict`` and ``decode`` take the contract's message bytes and
answer with message bytes, the same ones the in-process transport passes. A forward that announces its step in
``X-Splitpriv-Step`` is refused (or, as a retry of the pending step, answered from the cache) before its body is
read, so that a flood of forwards costs the vendor headers, not bodies."""

from __future__ import annotations

from typing import Callable

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from splitpriv.contract import (
    STEP_HEADER,
    BackwardRequest,
    DecodeRequest,
    ForwardRequest,
    Message,
    PredictRequest,
    ProtocolError,
    decode,
)
from splitpriv.service.deps import API, Caller, CallerDep, VendorDep, read_body
from splitpriv.service.errors import ERRORS
from splitpriv.service.guard import Guard, announced_step, declared_length, forward_admitted

OCTET = "application/octet-stream"
_BINARY = {"content": {OCTET: {"schema": {"type": "string", "format": "binary"}}}}

router = APIRouter(prefix=API)


def _message_body(kind: str) -> dict:
    return {"requestBody": {
        "required": True,
        "description": f"a {kind!r} message: safetensors bytes with the message type and fields in the header",
        "content": {OCTET: {"schema": {"type": "string", "format": "binary"}}},
    }}


def parse(body: bytes, cls: type[Message], session_id: str, announced: int | None = None) -> Message:
    """The message in ``body``, checked against the session in the path and the announced step."""
    try:
        msg = decode(body, expect=cls)
    except ProtocolError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever decode trips on, it is the sender's bytes
        raise ProtocolError(f"malformed {cls.kind} message: {type(exc).__name__}: {exc}") from None
    sid = msg.session_id
    if not isinstance(sid, str) or sid != session_id:
        raise ProtocolError(f"the message's session_id {sid!r} does not match the session in the path {session_id!r}")
    if hasattr(msg, "step"):
        step = msg.step
        if isinstance(step, bool) or not isinstance(step, int):
            raise ProtocolError(f"step must be an integer, got {step!r}")
        if announced is not None and step != announced:
            raise ProtocolError(f"the message's step {step} does not match its header {STEP_HEADER}: {announced}")
    return msg


def _exchange(guard: Guard, call: Callable, cls: type[Message], session_id: str, body: bytes, caller: Caller,
              announced: int | None) -> bytes:
    msg = parse(body, cls, session_id, announced)
    guard.tokens(caller.key, msg)
    return call(msg, caller.token).to_bytes()


async def _admit_forward(request: Request, session_id: str, caller: Caller, vendor) -> tuple[int | None, bytes | None]:
    """The forward's announced step, and the cached reply when it repeats the pending step."""
    declared_length(request.headers.get("content-length"), request.app.state.max_body_bytes)
    announced = announced_step(request.headers.get(STEP_HEADER))
    forward_admitted(caller.session, announced)
    if announced is not None and announced == caller.session.pending_step:  # a retry: answered from the cache
        cached = await run_in_threadpool(vendor.repeated_forward, session_id, caller.token, announced)
        if cached is not None:
            return announced, cached.to_bytes()
    if caller.key is not None:  # the vendor's lock may be held by a loading model
        await run_in_threadpool(request.app.state.guard.pending, caller.key, vendor, caller.session)
    return announced, None


async def _route(request: Request, session_id: str, caller: Caller, vendor, call: Callable,
                 cls: type[Message]) -> Response:
    announced = None
    if cls is ForwardRequest:
        announced, cached = await _admit_forward(request, session_id, caller, vendor)
        if cached is not None:
            return Response(cached, media_type=OCTET)
    body = await read_body(request, key=caller.key)
    guard = request.app.state.guard
    reply = await run_in_threadpool(_exchange, guard, call, cls, session_id, body, caller, announced)
    return Response(reply, media_type=OCTET)


@router.post("/sessions/{session_id}/forward", response_class=Response, summary="Training forward",
             responses={200: _BINARY, **ERRORS}, openapi_extra=_message_body("forward"))
async def forward(session_id: str, request: Request, caller: CallerDep, vendor: VendorDep):
    """Run the top on privatized representations for step ``s``; a repeated step returns the stored answer."""
    return await _route(request, session_id, caller, vendor, vendor.forward, ForwardRequest)


@router.post("/sessions/{session_id}/backward", response_class=Response, summary="Training backward",
             responses={200: _BINARY, **ERRORS}, openapi_extra=_message_body("backward"))
async def backward(session_id: str, request: Request, caller: CallerDep, vendor: VendorDep):
    """Back-propagate ∂L/∂outputs of step ``s`` and step the optimizer once (a repeat does not step again)."""
    return await _route(request, session_id, caller, vendor, vendor.backward, BackwardRequest)


@router.post("/sessions/{session_id}/predict", response_class=Response, summary="Private inference",
             responses={200: _BINARY, **ERRORS}, openapi_extra=_message_body("predict"))
async def predict(session_id: str, request: Request, caller: CallerDep, vendor: VendorDep):
    """Outputs of the tuned top for privatized representations; no state changes."""
    return await _route(request, session_id, caller, vendor, vendor.predict, PredictRequest)


@router.post("/sessions/{session_id}/decode", response_class=Response, summary="Private generation step",
             responses={200: _BINARY, **ERRORS}, openapi_extra=_message_body("decode"))
async def decode_step(session_id: str, request: Request, caller: CallerDep, vendor: VendorDep):
    """Run the middle on the next tokens of the session's sequence, with its key/value cache (causal LM)."""
    return await _route(request, session_id, caller, vendor, vendor.decode, DecodeRequest)
