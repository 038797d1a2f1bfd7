"""What the service checks before a request reaches the vendor: the API key that opens a session, the quotas of the
key that owns a session (:mod:`splitpriv.service.accounts`), and bounded JSON for session configs."""

from __future__ import annotations

import json

from splitpriv.contract.errors import (
    Forbidden,
    OutOfOrder,
    PayloadTooLarge,
    ProtocolError,
    QuotaExceeded,
)
from splitpriv.contract import STEP_HEADER
from splitpriv.roles.vendor.session import check_next_step
from splitpriv.service.accounts import ApiKey, DailyBytes, KeyStore

CHALLENGE = {"WWW-Authenticate": "Bearer"}


class ServiceError(Exception):
    """An error the service answers with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def bearer(header: str | None, what: str = "session token") -> str:
    """The credential of an ``Authorization: Bearer <credential>`` header, or 401 naming what is missing."""
    if not header:
        raise ServiceError(401, f"missing bearer token: send 'Authorization: Bearer <{what}>'", CHALLENGE)
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ServiceError(401, f"malformed Authorization header: expected 'Bearer <{what}>'", CHALLENGE)
    return token.strip()


def api_key(store: KeyStore | None, header: str | None) -> ApiKey | None:
    """The key opening a session: None when the vendor has no key store (open vendor), else its active record
    (401 without one, 403 for an unknown or revoked one)."""
    if store is None or not store.active:
        return None
    presented = bearer(header, "API key")
    record = store.check(presented)
    if record is None:
        raise ServiceError(403, "the API key is unknown or revoked: ask the vendor for a key (`splitpriv keys create`)")
    return record


class Guard:
    """The per-key checks on session routes; ``store`` None or inactive: nothing is checked."""

    def __init__(self, store: KeyStore | None):
        self.store = store
        self.daily = DailyBytes()

    def owner(self, key_id: str | None) -> ApiKey | None:
        """The key that opened a session (403 once it is revoked); None for a session opened without a key."""
        if key_id is None or self.store is None or not self.store.active:
            return None
        record = self.store.get(key_id)
        if record is None or record.revoked is not None:
            raise Forbidden("the API key that opened this session was revoked: the session can no longer be used")
        return record

    def bytes_in(self, key: ApiKey | None, n: int, *, declared: bool = False) -> None:
        """Count ``n`` request bytes against the key's daily quota (``declared``: only check a Content-Length)."""
        if key is None or key.quotas.max_bytes_per_day is None:
            return
        limit = key.quotas.max_bytes_per_day
        total = self.daily.used(key.key_id) + n if declared else self.daily.add(key.key_id, n)
        if total > limit:
            raise QuotaExceeded(f"quota max_bytes_per_day: this API key may send {limit} request bytes per UTC day "
                                f"and has used {self.daily.used(key.key_id)}; try again tomorrow or ask the vendor")

    @staticmethod
    def tokens(key: ApiKey | None, message) -> None:
        limit = key.quotas.max_tokens_per_request if key is not None else None
        mask = getattr(message, "attention_mask", None)
        if limit is None or mask is None or mask.dim() != 2:
            return
        if mask.shape[0] * mask.shape[1] > limit:
            raise QuotaExceeded(f"quota max_tokens_per_request: {mask.shape[0]} x {mask.shape[1]} = "
                                f"{mask.shape[0] * mask.shape[1]} token positions, this API key may send {limit} per "
                                "request; send smaller batches")

    @staticmethod
    def pending(key: ApiKey | None, vendor, session) -> None:
        limit = key.quotas.max_pending if key is not None else None
        if limit is None or session.pending_step is not None:
            return
        _, pending = vendor.owned(key.key_id)
        if pending >= limit:
            raise QuotaExceeded(f"quota max_pending: this API key already has {pending} forward(s) waiting for their "
                                "backward; send those backwards first")


def declared_length(length: str | None, cap: int) -> int | None:
    """A body's ``Content-Length`` header as an int (``None`` without one): 400 when it is not an integer, 413
    above ``cap``."""
    if length is None:
        return None
    try:
        declared = int(length)
    except ValueError:
        raise ServiceError(400, f"Content-Length {length!r} is not an integer") from None
    if declared > cap:
        raise PayloadTooLarge(f"request body of {declared} bytes is above this vendor's limit of {cap} bytes")
    return declared


def announced_step(header: str | None) -> int | None:
    """The step a forward announces in :data:`STEP_HEADER` (``None`` without one); 400 when it is not an integer."""
    if header is None:
        return None
    try:
        return int(header.strip())
    except ValueError:
        raise ProtocolError(f"header {STEP_HEADER} must be an integer step, got {header[:40]!r}") from None


def forward_admitted(session, step: int | None) -> None:
    """Refuse with 409, before its body is read, a forward the session would refuse anyway: while another step's
    forward waits for its backward, and for a step that does not follow the last completed one. A forward repeating
    the pending step (a retry) must announce it; one without :data:`STEP_HEADER` is read only when nothing is
    pending. Receiving a refused body costs the vendor as much CPU as an accepted one, so a tenant flooding
    forwards without backwards would otherwise slow every other tenant."""
    pending = session.pending_step
    if pending is not None:
        if step != pending:
            raise OutOfOrder(f"the forward of step {pending} is waiting for its backward: send that backward (or "
                             f"repeat that forward with header {STEP_HEADER}: {pending}); this forward was not read")
    elif step is not None:
        check_next_step(step, session.completed_step)


def _no_constants(name: str):
    raise ValueError(f"{name} is not valid JSON (numbers must be finite)")


def parse_config_json(body: bytes) -> dict:
    """A session config body as a dict: 422 for invalid JSON, NaN/Infinity, nesting too deep for the parser, or
    anything but an object."""
    try:
        data = json.loads(body, parse_constant=_no_constants)
    except RecursionError:
        raise ServiceError(422, "the session config is nested too deeply to parse") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ServiceError(422, f"the session config is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ServiceError(422, f"the session config must be a JSON object, got {type(data).__name__}")
    return data


__all__ = ["CHALLENGE", "Guard", "ServiceError", "api_key", "bearer", "parse_config_json"]
