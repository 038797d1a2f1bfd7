"""The vendor over HTTP: :func:`create_app` builds the FastAPI app around a :class:`~splitpriv.roles.vendor.Vendor`,
:func:`serve` runs it with uvicorn (``splitpriv serve``). The customer's side is
:class:`splitpriv.transport.http_client.HttpTransport`."""

from splitpriv.service.app import DEFAULT_MAX_BODY_BYTES, create_app
from splitpriv.service.server import serve

__all__ = ["DEFAULT_MAX_BODY_BYTES", "create_app", "serve"]
