"""The vendor as an HTTP service: the same :class:`~splitpriv.roles.vendor.Vendor` the in-process transport calls,
behind versioned routes (as Flower runs one client both in simulation and over gRPC).

Routes (all under ``/v1``; interactive docs at ``/docs``), one router per concern: :mod:`.sessions`,
:mod:`.messages`, :mod:`.ops`; what they depend on (the vendor, the caller of a session route, the capped body) is
:mod:`.deps`, and how errors are answered :mod:`.errors`:

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
streamed are both checked), session limit or quota 429. An open sent with an ``Idempotency-Key`` header is
answered once per key (a repeat gets the same session; the key with another body 409; a malformed key 400), and a
repeated close with the session's token gets the first answer (:mod:`splitpriv.service.idempotency`). A 500
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

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from splitpriv.roles.vendor import Vendor
from splitpriv.service import messages, ops, sessions
from splitpriv.service.accounts import KeyStore
from splitpriv.service.deps import API  # noqa: F401  (re-exported: the prefix of the versioned routes)
from splitpriv.service.errors import install_error_handlers
from splitpriv.service.guard import Guard
from splitpriv.service.idempotency import IdempotencyKeys

log = logging.getLogger("splitpriv.service")

DEFAULT_MAX_BODY_BYTES = 64 * 2**20


def create_app(vendor: Vendor, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, keys: KeyStore | None = None,
               metrics: bool = True) -> FastAPI:
    """The vendor service for ``vendor``; request bodies above ``max_body_bytes`` are refused with 413. ``keys``:
    the API key store (default: the one under the vendor's state dir, if it has one); ``metrics``: serve
    ``/metrics``."""
    from splitpriv import __version__

    if not isinstance(max_body_bytes, int) or max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be a positive integer, got {max_body_bytes!r}")
    if keys is None and vendor.state_dir is not None:
        keys = KeyStore(vendor.state_dir)
    app = FastAPI(
        title="splitpriv vendor",
        version=__version__,
        description="Split-and-Privatize: the vendor keeps the top of its model, customers send privatized "
        "token representations. Message bodies are splitpriv protocol messages (safetensors).",
        lifespan=_lifespan(vendor),
    )
    app.state.vendor = vendor
    app.state.max_body_bytes = max_body_bytes
    app.state.keys = keys
    app.state.guard = Guard(keys)
    app.state.idempotency = IdempotencyKeys(vendor.state_dir)  # shared by replicas through the state dir
    install_error_handlers(app)
    for router in (sessions.router, messages.router, ops.health_router):
        app.include_router(router)  # each router carries its /v1 prefix: metrics label routes by their full path
    if metrics:
        from splitpriv.service.metrics import RequestCounter, ServiceMetrics

        app.state.metrics = ServiceMetrics(vendor)
        app.add_middleware(RequestCounter, metrics=app.state.metrics)
        app.include_router(ops.metrics_router)
    return app


def _lifespan(vendor: Vendor):
    """A sweeper of pending forwards past their TTL and of idle sessions, even when no request comes; on shutdown,
    every open session is checkpointed (when the vendor has a state dir)."""

    async def reaper():
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

    return lifespan
