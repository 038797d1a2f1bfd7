"""Customer and vendor in one process (experiments, tests): calls a :class:`~splitpriv.roles.vendor.Vendor`
object directly. Every message still goes through its wire encoding (in :class:`TransportBase`), so the vendor
receives exactly the bytes it would over HTTP. Nothing here fails transiently, so nothing is retried."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from splitpriv.contract import BackwardRequest, DecodeRequest, ForwardRequest, PredictRequest, SessionConfig, SessionInfo, decode
from splitpriv.transport.base import Tap, TransportBase
from splitpriv.transport.registry import TRANSPORTS

if TYPE_CHECKING:
    from splitpriv.roles.vendor import Vendor

REQUESTS = {"forward": ForwardRequest, "backward": BackwardRequest, "predict": PredictRequest, "decode": DecodeRequest}


@TRANSPORTS.register("inprocess", aliases=("in-process", "local"))
class InProcessTransport(TransportBase):
    """Calls ``vendor`` (a :class:`Vendor` in this process) directly."""

    description = "a Vendor object in this process (experiments, tests)"

    def __init__(self, vendor: "Vendor", *, tap: Tap | None = None, session: SessionInfo | None = None):
        super().__init__(session=session, tap=tap)
        self.vendor = vendor

    @classmethod
    def accepts(cls, target: Any) -> bool:
        if target is None or isinstance(target, (str, bytes, os.PathLike)):
            return False
        from splitpriv.roles.vendor import Vendor

        return isinstance(target, Vendor)

    def open_raw(self, config: SessionConfig) -> SessionInfo:
        return self.vendor.open_session(config)

    def bottom_raw(self, session_id: str, token: str) -> bytes:
        return self.vendor.bottom_package(session_id, token)

    def exchange_raw(self, action: str, session_id: str, token: str, body: bytes, step: int | None = None) -> bytes:
        request = decode(body, expect=REQUESTS[action])
        return getattr(self.vendor, action)(request, token).to_bytes()

    def status_raw(self, session_id: str, token: str) -> dict:
        return self.vendor.status(session_id, token)

    def export_raw(self, session_id: str, token: str, directory: str | None) -> str:
        return self.vendor.export(session_id, token, directory)

    def close_raw(self, session_id: str, token: str) -> None:
        self.vendor.close(session_id, token)

    def __repr__(self) -> str:
        return f"InProcessTransport({self.vendor!r}, session={self.session.session_id if self.session else None!r})"
