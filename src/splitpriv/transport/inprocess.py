"""Customer and vendor in one process (experiments, tests): every message still goes through its wire encoding,
so the vendor receives exactly the bytes it would over HTTP, and ``bytes_sent`` / ``bytes_received`` count them."""

from __future__ import annotations

from typing import Callable

from splitpriv.protocol import (
    BackwardRequest,
    BackwardResult,
    ForwardRequest,
    Message,
    Outputs,
    PredictRequest,
    SessionConfig,
    SessionInfo,
    decode,
)
from splitpriv.roles.vendor import Vendor


class InProcessTransport:
    """Calls a :class:`Vendor` directly. ``tap(direction, message)`` sees every decoded message (``"to_vendor"`` or
    ``"to_customer"``): what a network observer, or the vendor itself, sees."""

    def __init__(self, vendor: Vendor, *, tap: Callable[[str, Message], None] | None = None):
        self.vendor = vendor
        self.tap = tap
        self.session: SessionInfo | None = None
        self.bytes_sent = 0
        self.bytes_received = 0

    def _token(self) -> str:
        if self.session is None:
            raise RuntimeError("no session: call open_session() or attach() first")
        return self.session.token

    def _send(self, msg: Message) -> Message:
        data = msg.to_bytes()
        self.bytes_sent += len(data)
        received = decode(data)
        if self.tap:
            self.tap("to_vendor", received)
        return received

    def _receive(self, msg: Message) -> Message:
        data = msg.to_bytes()
        self.bytes_received += len(data)
        received = decode(data)
        if self.tap:
            self.tap("to_customer", received)
        return received

    def open_session(self, config: SessionConfig) -> SessionInfo:
        self.session = self.vendor.open_session(config)
        return self.session

    def attach(self, session: SessionInfo) -> None:
        self.session = session

    def bottom_package(self) -> bytes:
        data = self.vendor.bottom_package(self.session.session_id if self.session else "", self._token())
        self.bytes_received += len(data)
        return data

    def forward(self, req: ForwardRequest) -> Outputs:
        return self._receive(self.vendor.forward(self._send(req), self._token()))

    def backward(self, req: BackwardRequest) -> BackwardResult:
        return self._receive(self.vendor.backward(self._send(req), self._token()))

    def predict(self, req: PredictRequest) -> Outputs:
        return self._receive(self.vendor.predict(self._send(req), self._token()))

    def status(self) -> dict:
        return self.vendor.status(self.session.session_id, self._token())

    def export(self, directory: str | None = None) -> str:
        return self.vendor.export(self.session.session_id, self._token(), directory)

    def close(self) -> None:
        if self.session is not None:
            self.vendor.close(self.session.session_id, self._token())
            self.session = None
