"""The vendor as an HTTP service: the same :class:`~splitpriv.roles.vendor.Vendor` the in-process transport calls,
behind versioned routes (as Flower runs one client both in simulation and over gRPC).

Routes (all under ``/v1``; interactive docs at ``/docs``):

=======  ==================================  ==============================================================
POST     ``/v1/sessions``                    JSON :class:`SessionConfig` → JSON :class:`SessionInfo` (token)
GET      ``/v1/sessions/{id}/bottom``        the bottom package (zip: weights, config, tokenizer)
POST     ``/v1/sessions/{id}/forward``       ``ForwardRequest`` bytes → ``Outputs`` bytes
POST     ``/v1/sessions/{id}/backward``      ``BackwardRequest`` bytes → ``BackwardResult`` bytes
POST     ``/v1/sessions/{id}/predict``       ``PredictRequest`` bytes → ``Outputs`` bytes
POST     ``/v1/sessions/{id}/decode``        ``DecodeRequest`` bytes → ``Outputs`` bytes (causal-LM generation)
POST     ``/v1/sessions/{id}/checkpoint``    write the session to the state dir now → ``{"path", ...}``
GET      ``/v1/sessions/{id}/status``        JSON status (completed step, lr, trainable parameters, ...)
DELETE   ``/v1/sessions/{id}``               close the session (and delete its saved state)
GET      ``/v1/health``                      liveness, model, body size limit, whether keys are required
GET      ``/metrics``                        Prometheus text format (:mod:`splitpriv.service.metrics`)
=======  ==================================  ==============================================================

Accounts (:mod:`splitpriv.service.accounts`): once the state dir holds a key store (``splitpriv keys create``),
``POST /v1/sessions`` needs ``Authorization: Bearer <API key>`` and each key's quotas (open sessions, pending
forwards, tokens per request, bytes per day) are answered with 429 naming the quota. Bounds on every field and
value (:mod:`splitpriv.contract.limits`): a session config body is at most 64 KiB of finite JSON nested at most 4 deep; a
representation or gradient coordinate is at most 1e4 in magnitude; batch × T² and batch × T are capped per request
(413); a forward whose backward does not come within the pending TTL is freed (a late backward gets 409 saying to
resend the forward); while all pending forwards together hold the vendor's budget a forward gets 503 with
``Retry-After`` (the HTTP transport retries it).

Message bodies are the protocol's own encoding (``application/octet-stream``: safetensors with JSON metadata,
see :mod:`splitpriv.contract`), the same bytes the in-process transport passes. Every session route needs
``Authorization: Bearer <token>`` (missing → 401, wrong → 403); the session id in the path must equal the
message's ``session_id`` (else 400). A forward may announce its step in ``X-Splitpriv-Step`` (the HTTP transport
always does; a contradicting message is a 400): one the session would refuse, because another step's forward is
pending or the step is out of order, gets 409 before its body is read, and a retry that announces the pending
step gets the cached reply unread, so that a flood of forwards costs the vendor headers, not bodies. Errors are JSON
``{"error": "<what is wrong>"}``: unknown or closed session 404, protocol violation 400, bad session config 422
(naming the field), step out of order 409, body above the size cap 413 (``Content-Length`` and the bytes actually
streamed are both checked), session limit or quota 429. A 500
(JSON, no traceback; the traceback goes to the server log) means a bug in splitpriv, never bad input.

Concurrency: the endpoints read their bodies asynchronously and run the torch work (decode, forward, backward)
in Starlette's threadpool; each session's lock serialises its own steps, sessions run side by side, and the
forward passes (which reseed torch's global RNG for dropout) take one process-wide lock.

Memory per tenant: one frozen base model is loaded once (another label count adds only its head) and shared by
every session; a session holds only its trainable deltas, their gradients and two AdamW moments (and nothing once
it is unloaded while idle, :mod:`splitpriv.roles.vendor.idle`). For all-MiniLM-L6-v2 at k = 0 with
LoRA r = 8 on the query/value projections (plus the trained pooler and classifier) that is about 0.2M parameters,
≈ 3.5 MB in fp32 including gradients and optimizer state. Full fine-tuning (``tuning={"method": "full"}``, see
:mod:`splitpriv.tuning.full`) gives every session a private copy of the whole top: ≈ 10.8M parameters at k = 0,
so ≈ 43 MB of weights + 43 MB of gradients + 86 MB of AdamW moments ≈ 170 MB per session, against ≈ 91 MB for the
shared base model itself: a vendor serving full fine-tuning pays about two base models per tenant.

Deployment: bearer tokens and representations must not cross an untrusted network in plain HTTP. Bind to loopback
(the default) behind a TLS-terminating proxy, or pass ``ssl_certfile`` / ``ssl_keyfile`` to :func:`serve`
(``splitpriv serve --ssl-certfile F --ssl-keyfile F``; customers then pass ``--ca-file`` for a private CA).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from splitpriv.contract.errors import ERROR_CLASSES, PayloadTooLarge, ProtocolError, VendorBusy, status_of
from splitpriv.contract.limits import MAX_CONFIG_BYTES
from splitpriv.contract import (
    BackwardRequest,
    DecodeRequest,
    ForwardRequest,
    Message,
    STEP_HEADER,
    PredictRequest,
    SessionConfig,
    decode,
)
from splitpriv.roles.vendor import Vendor
from splitpriv.service.accounts import KeyStore
from splitpriv.service.guard import (
    Guard,
    ServiceError,
    announced_step,
    api_key,
    bearer,
    declared_length,
    forward_admitted,
    parse_config_json,
)

log = logging.getLogger("splitpriv.service")

API = "/v1"
DEFAULT_MAX_BODY_BYTES = 64 * 2**20
OCTET = "application/octet-stream"


class ErrorBody(BaseModel):
    error: str


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _message_body(kind: str) -> dict:
    return {
        "requestBody": {
            "required": True,
            "description": f"a {kind!r} message: safetensors bytes with the message type and fields in the header",
            "content": {OCTET: {"schema": {"type": "string", "format": "binary"}}},
        }
    }


_ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 429)}
_BINARY = {"content": {OCTET: {"schema": {"type": "string", "format": "binary"}}}}


def create_app(vendor: Vendor, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, keys: KeyStore | None = None,
               metrics: bool = True) -> FastAPI:
    """The vendor service for ``vendor``; request bodies above ``max_body_bytes`` are refused with 413. ``keys``:
    the API key store (default: the one under the vendor's state dir, if it has one); ``metrics``: serve
    ``/metrics``."""
    from pydantic import TypeAdapter

    from splitpriv import __version__
    from splitpriv.contract import SessionInfo

    if not isinstance(max_body_bytes, int) or max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be a positive integer, got {max_body_bytes!r}")

    if keys is None and vendor.state_dir is not None:
        keys = KeyStore(vendor.state_dir)
    guard = Guard(keys)

    async def reaper():  # frees pending forwards past their TTL and idle sessions, even when no request comes
        ttls = [t for t in (vendor.limits.pending_ttl, vendor.idle_unload, vendor.session_ttl) if t is not None]
        while ttls:
            await asyncio.sleep(min(max(min(ttls) / 4, 0.05), 30.0))
            try:
                await run_in_threadpool(vendor.expire_pending)
                await run_in_threadpool(vendor.sweep_idle)
            except Exception:  # noqa: BLE001 - a failed sweep must not end the sweeping
                log.exception("sweeping pending forwards and idle sessions failed")

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        task = asyncio.create_task(reaper())
        yield
        task.cancel()
        if vendor.state_dir is not None:
            written = await run_in_threadpool(vendor.checkpoint_all)
            log.info("checkpointed %d open session(s) on shutdown", written)

    app = FastAPI(
        title="splitpriv vendor",
        version=__version__,
        description="Split-and-Privatize: the vendor keeps the top of its model, customers send privatized "
        "token representations. Message bodies are splitpriv protocol messages (safetensors).",
        lifespan=lifespan,
    )
    app.state.vendor = vendor
    app.state.max_body_bytes = max_body_bytes
    app.state.keys = keys
    if metrics:
        from splitpriv.service.metrics import RequestCounter, ServiceMetrics

        app.state.metrics = ServiceMetrics(vendor)
        app.add_middleware(RequestCounter, metrics=app.state.metrics)

    # -- errors ---------------------------------------------------------------------------------------------------

    async def on_service_error(_request, exc: ServiceError):
        return _error(exc.status, exc.message, exc.headers)

    async def on_splitpriv_error(_request, exc: Exception):
        return _error(status_of(exc), str(exc) or type(exc).__name__)

    async def on_busy(_request, exc: VendorBusy):  # 503 + Retry-After: the client's retry policy waits it out
        return _error(503, str(exc), {"Retry-After": "1"})

    async def on_http_error(_request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    async def on_validation_error(_request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors())
        return _error(422, f"invalid request: {problems}")

    async def on_bug(request: Request, exc: Exception):
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, f"internal error in the vendor service ({type(exc).__name__}); see the server log")

    app.add_exception_handler(ServiceError, on_service_error)
    for cls in ERROR_CLASSES:
        app.add_exception_handler(cls, on_splitpriv_error)
    app.add_exception_handler(VendorBusy, on_busy)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_bug)

    # -- helpers --------------------------------------------------------------------------------------------------

    async def authorize(request: Request, session_id: str) -> str:
        """The request's token once it is known to open ``session_id`` (401 / 404 / 403 before any body is read;
        in the threadpool, as the registry lock can be held while a new session's model loads)."""
        return (await authorized(request, session_id))[0]

    async def authorized(request: Request, session_id: str):
        """``(token, session, owner key)`` of a session route; 403 once the owner's key is revoked."""
        token = bearer(request.headers.get("authorization"))
        session = await run_in_threadpool(vendor.session, session_id, token)
        return token, session, guard.owner(getattr(session, "owner", None))

    async def read_body(request: Request, limit: int | None = None, key=None) -> bytes:
        """The body, refused with 413 above ``limit`` (default ``max_body_bytes``); counted against ``key``'s
        bytes per day (checked on the declared length first)."""
        cap = max_body_bytes if limit is None else min(limit, max_body_bytes)
        length = request.headers.get("content-length")
        declared = declared_length(length, cap)
        if declared is not None:
            guard.bytes_in(key, max(declared, 0), declared=True)
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > cap:
                    raise PayloadTooLarge(
                        f"request body is above this vendor's limit of {cap} bytes (stopped reading after {size} bytes)"
                    )
                chunks.append(chunk)
        except ClientDisconnect:
            # Nobody is left to answer; a 400 (not a 500) keeps a truncated upload out of the bug log.
            raise ServiceError(400, f"the client disconnected after {size} of {length or 'unknown'} body bytes") from None
        guard.bytes_in(key, size)
        return b"".join(chunks)

    def parse(body: bytes, cls: type[Message], session_id: str, announced: int | None = None) -> Message:
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

    def exchange(call: Callable, cls: type[Message], session_id: str, body: bytes, token: str, key=None,
                 announced: int | None = None) -> bytes:
        msg = parse(body, cls, session_id, announced)
        guard.tokens(key, msg)
        return call(msg, token).to_bytes()

    async def message_route(request: Request, session_id: str, call: Callable, cls: type[Message]) -> Response:
        token, session, key = await authorized(request, session_id)
        announced = None
        if cls is ForwardRequest:
            declared_length(request.headers.get("content-length"), max_body_bytes)
            announced = announced_step(request.headers.get(STEP_HEADER))
            forward_admitted(session, announced)
            if announced is not None and announced == session.pending_step:  # a retry: answered from the cache
                cached = await run_in_threadpool(vendor.repeated_forward, session_id, token, announced)
                if cached is not None:
                    return Response(cached.to_bytes(), media_type=OCTET)
            if key is not None:  # the vendor's lock may be held by a loading model
                await run_in_threadpool(guard.pending, key, vendor, session)
        body = await read_body(request, key=key)
        reply = await run_in_threadpool(exchange, call, cls, session_id, body, token, key, announced)
        return Response(reply, media_type=OCTET)

    # -- routes ---------------------------------------------------------------------------------------------------

    config_schema = TypeAdapter(SessionConfig).json_schema()

    @app.post(
        f"{API}/sessions",
        status_code=201,
        response_model=None,
        summary="Open a session",
        responses={201: {"content": {"application/json": {"schema": TypeAdapter(SessionInfo).json_schema()}}},
                   401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 413: {"model": ErrorBody},
                   422: {"model": ErrorBody}, 429: {"model": ErrorBody}},
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": config_schema}}}},
    )
    async def open_session(request: Request):
        """Open a tuning session. The answer holds the session's bearer token: the only time it is sent. When the
        vendor has API keys, send one as ``Authorization: Bearer <API key>``."""
        key = api_key(keys, request.headers.get("authorization"))
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

    @app.get(f"{API}/sessions/{{session_id}}/bottom", response_class=Response, summary="Download the bottom",
             responses={200: {"content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}},
                        **_ERRORS})
    async def bottom(session_id: str, request: Request):
        """The bottom package: its weights, config and tokenizer (and the head's weights when the customer holds it)."""
        token = await authorize(request, session_id)
        return Response(await run_in_threadpool(vendor.bottom_package, session_id, token), media_type="application/zip")

    @app.post(f"{API}/sessions/{{session_id}}/forward", response_class=Response, summary="Training forward",
              responses={200: _BINARY, **_ERRORS}, openapi_extra=_message_body("forward"))
    async def forward(session_id: str, request: Request):
        """Run the top on privatized representations for step ``s``; a repeated step returns the stored answer."""
        return await message_route(request, session_id, vendor.forward, ForwardRequest)

    @app.post(f"{API}/sessions/{{session_id}}/backward", response_class=Response, summary="Training backward",
              responses={200: _BINARY, **_ERRORS}, openapi_extra=_message_body("backward"))
    async def backward(session_id: str, request: Request):
        """Back-propagate ∂L/∂outputs of step ``s`` and step the optimizer once (a repeat does not step again)."""
        return await message_route(request, session_id, vendor.backward, BackwardRequest)

    @app.post(f"{API}/sessions/{{session_id}}/predict", response_class=Response, summary="Private inference",
              responses={200: _BINARY, **_ERRORS}, openapi_extra=_message_body("predict"))
    async def predict(session_id: str, request: Request):
        """Outputs of the tuned top for privatized representations; no state changes."""
        return await message_route(request, session_id, vendor.predict, PredictRequest)

    @app.post(f"{API}/sessions/{{session_id}}/decode", response_class=Response, summary="Private generation step",
              responses={200: _BINARY, **_ERRORS}, openapi_extra=_message_body("decode"))
    async def decode_step(session_id: str, request: Request):
        """Run the middle on the next tokens of the session's sequence, with its key/value cache (causal LM)."""
        return await message_route(request, session_id, vendor.decode, DecodeRequest)

    @app.post(f"{API}/sessions/{{session_id}}/checkpoint", summary="Checkpoint the session", responses=_ERRORS)
    async def checkpoint(session_id: str, request: Request) -> dict:
        """Write the session (tuned top, optimizer, schedule, step) to the vendor's state dir now; the answer
        names the checkpoint's directory relative to the vendor's state dir (the top's weights never leave it)."""
        token = await authorize(request, session_id)
        saved = await run_in_threadpool(vendor.checkpoint, session_id, token)
        for name in ("path", "top"):  # no absolute server paths for callers
            saved[name] = Path(saved[name]).relative_to(vendor.state_dir).as_posix()
        return saved

    @app.get(f"{API}/sessions/{{session_id}}/status", summary="Session status", responses=_ERRORS)
    async def status(session_id: str, request: Request) -> dict:
        token = await authorize(request, session_id)
        return await run_in_threadpool(vendor.status, session_id, token)

    @app.delete(f"{API}/sessions/{{session_id}}", summary="Close the session", responses=_ERRORS)
    async def close(session_id: str, request: Request) -> dict:
        """Close the session: it can no longer be used, and its saved state is deleted."""
        token = await authorize(request, session_id)
        await run_in_threadpool(vendor.close, session_id, token)
        return {"session_id": session_id, "closed": True}

    @app.get(f"{API}/health", summary="Health")
    async def health() -> dict:
        """Liveness and what a new customer needs to know; nothing about other tenants (see ``/metrics``)."""
        return {
            "status": "ok",
            "version": __version__,
            "model": vendor.model_name or "all-MiniLM-L6-v2",
            "max_body_bytes": max_body_bytes,
            "persistent": vendor.state_dir is not None,
            "keys_required": bool(keys is not None and keys.active),
            **({"replica": vendor.replica_id} if getattr(vendor, "replica_id", None) else {}),  # behind a router
        }

    if metrics:
        @app.get("/metrics", response_class=Response, summary="Prometheus metrics",
                 responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
                            401: {"model": ErrorBody}, 403: {"model": ErrorBody}})
        async def prometheus(request: Request):
            """Request counts and latencies by route, sessions, pending forwards, memory (aggregates only). With
            API keys, an admin key (``splitpriv keys create --admin``) is needed."""
            if keys is not None and keys.active:
                record = api_key(keys, request.headers.get("authorization"))
                if not record.admin:
                    raise ServiceError(403, "/metrics needs an admin API key (splitpriv keys create --admin)")
            body, content_type = app.state.metrics.render()
            return Response(body, media_type=content_type)

    return app

