"""Errors that cross the customer–vendor boundary, and the one table mapping each to its HTTP status.

The service answers an error with :func:`status_of`; the HTTP transport raises :func:`error_for` of the status it
receives, so the customer sees the exception the vendor raised (with the vendor's message).
"""

from __future__ import annotations

from splitpriv.contract.session import ProtocolError


class UnknownSession(LookupError):
    """No open session with that id (never opened, closed, or expired)."""


class Forbidden(PermissionError):
    """The bearer token does not belong to the session."""


class OutOfOrder(ProtocolError):
    """A step id that does not follow the session's last step, or a backward without its forward."""


class PayloadTooLarge(ProtocolError):
    """A request body above the service's size cap."""


class SessionLimit(ProtocolError):
    """The vendor already holds as many sessions as it allows."""


class QuotaExceeded(SessionLimit):
    """An API key's quota (open sessions, pending forwards, tokens per request, bytes per day) is used up; the
    message names which. Answered 429 like :class:`SessionLimit` (read back as it)."""


class VendorBusy(SessionLimit):
    """The vendor holds as many pending forwards (their autograd graphs) as it allows: try again shortly. The
    service answers 503 with ``Retry-After``, which the HTTP transport retries."""


# (error, HTTP status). A class's first row is the status it is answered with; a later row for the same class
# only names another status that is read back as it (401: the service's own "no bearer token" answer).
STATUS_TABLE: tuple[tuple[type[Exception], int], ...] = (
    (UnknownSession, 404),
    (Forbidden, 403),
    (PayloadTooLarge, 413),
    (OutOfOrder, 409),
    (SessionLimit, 429),
    (ProtocolError, 400),
    (Forbidden, 401),
)

_STATUS_OF: dict[type[BaseException], int] = {cls: status for cls, status in reversed(STATUS_TABLE)}
_ERROR_FOR: dict[int, type[Exception]] = {status: cls for cls, status in STATUS_TABLE}

ERROR_CLASSES: tuple[type[Exception], ...] = tuple(dict.fromkeys(cls for cls, _ in STATUS_TABLE))
"""Every error class of the table, once each (the service installs one handler per class)."""


def status_of(exc: BaseException | type[BaseException]) -> int:
    """The HTTP status for ``exc`` (an exception or its class), looked up along its MRO so subclasses map first;
    LookupError for an exception that is not a splitpriv boundary error."""
    cls = exc if isinstance(exc, type) else type(exc)
    for base in cls.__mro__:
        if base in _STATUS_OF:
            return _STATUS_OF[base]
    raise LookupError(f"{cls.__name__} has no HTTP status; known: {[c.__name__ for c in ERROR_CLASSES]}")


def error_for(status: int) -> type[Exception]:
    """The error class for an HTTP 4xx ``status``; :class:`ProtocolError` for one the table does not name
    (422 bad session config, a proxy's 4xx, ...)."""
    return _ERROR_FOR.get(int(status), ProtocolError)


__all__ = [
    "ERROR_CLASSES",
    "STATUS_TABLE",
    "Forbidden",
    "OutOfOrder",
    "PayloadTooLarge",
    "ProtocolError",
    "QuotaExceeded",
    "SessionLimit",
    "UnknownSession",
    "VendorBusy",
    "error_for",
    "status_of",
]
