from splitpriv.transport.base import Transport
from splitpriv.transport.inprocess import InProcessTransport


def __getattr__(name):
    if name == "HttpTransport":  # imported lazily: httpx is only needed to talk to a remote vendor
        from splitpriv.transport.http_client import HttpTransport

        return HttpTransport
    raise AttributeError(name)


__all__ = ["HttpTransport", "InProcessTransport", "Transport"]
