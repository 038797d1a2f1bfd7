"""How customer and vendor exchange messages: one :class:`TransportBase` subclass per channel, each registered
in :data:`TRANSPORTS`; :func:`make_transport` picks the one for a target. See :mod:`splitpriv.transport.base`
for how to add one."""

from splitpriv.transport.base import Transport, TransportBase
from splitpriv.transport.registry import TRANSPORTS, make_transport

_LAZY = {"HttpTransport": "splitpriv.transport.http_client", "InProcessTransport": "splitpriv.transport.inprocess"}


def __getattr__(name):
    if name in _LAZY:  # imported on use, so that importing the package stays cheap and free of cycles
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["TRANSPORTS", "HttpTransport", "InProcessTransport", "Transport", "TransportBase", "make_transport"]
