"""What the routes depend on (FastAPI ``Depends``): the app's vendor, guard and idempotency keys, the open hook
(tests only), the caller of a session route (its
token, session and owner key, known before any body is read), and the body read under the size cap and the
caller's byte quota."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from splitpriv.contract.errors import PayloadTooLarge
from splitpriv.roles.vendor import Vendor
from splitpriv.service.guard import Guard, ServiceError, bearer, declared_length
from splitpriv.service.idempotency import IdempotencyKeys

API = "/v1"  # the prefix of every versioned route


def vendor_of(request: Request) -> Vendor:
    return request.app.state.vendor


def guard_of(request: Request) -> Guard:
    return request.app.state.guard


def keys_of(request: Request) -> IdempotencyKeys:
    return request.app.state.idempotency


def open_hook() -> Callable[[], Awaitable[None]] | None:
    """Awaited after a session is opened and before its answer is stored and sent: None in production. A test
    overrides this dependency (``app.dependency_overrides[open_hook]``) to make the vendor answer an open slowly."""
    return None


VendorDep = Annotated[Vendor, Depends(vendor_of)]
GuardDep = Annotated[Guard, Depends(guard_of)]
KeysDep = Annotated[IdempotencyKeys, Depends(keys_of)]
OpenHookDep = Annotated[object, Depends(open_hook)]  # an async callable, or None


@dataclass(frozen=True)
class Caller:
    """A session route's caller: its bearer token, the session it opens and the session owner's API key."""

    token: str
    session: object
    key: object


async def caller(request: Request, session_id: str, vendor: VendorDep, guard: GuardDep) -> Caller:
    """401 / 404 / 403 before any body is read (in the threadpool, as the registry lock can be held while a new
    session's model loads); 403 once the owner's key is revoked."""
    token = bearer(request.headers.get("authorization"))
    session = await run_in_threadpool(vendor.session, session_id, token)
    return Caller(token, session, guard.owner(getattr(session, "owner", None)))


CallerDep = Annotated[Caller, Depends(caller)]


async def read_body(request: Request, limit: int | None = None, key=None) -> bytes:
    """The body, refused with 413 above ``limit`` (default: the app's ``max_body_bytes``); counted against
    ``key``'s bytes per day (checked on the declared length first)."""
    guard: Guard = request.app.state.guard
    cap = request.app.state.max_body_bytes if limit is None else min(limit, request.app.state.max_body_bytes)
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
