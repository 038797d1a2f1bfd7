"""Errors that cross the customer–vendor boundary; each maps to one HTTP status in the service."""

from __future__ import annotations

from splitpriv.protocol import ProtocolError


class UnknownSession(LookupError):
    """No open session with that id (never opened, closed, or expired)."""


class Forbidden(PermissionError):
    """The bearer token does not belong to the session."""


class OutOfOrder(ProtocolError):
    """A step id that does not follow the session's last step, or a backward without its forward."""


class PayloadTooLarge(ProtocolError):
    """A request body above the service's size cap."""


__all__ = ["Forbidden", "OutOfOrder", "PayloadTooLarge", "ProtocolError", "UnknownSession"]
