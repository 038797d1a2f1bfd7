from splitpriv.transport.base import Transport
from splitpriv.transport.inprocess import InProcessTransport

__all__ = ["InProcessTransport", "Transport"]
