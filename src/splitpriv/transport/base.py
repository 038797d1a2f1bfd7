"""What a customer needs from a vendor, independent of how messages travel (as Flower separates client logic
from gRPC): the in-process transport calls a :class:`~splitpriv.roles.vendor.Vendor` object, the HTTP one a
service. Customer code only ever sees this interface."""

from __future__ import annotations

from typing import Protocol

from splitpriv.protocol import (
    BackwardRequest,
    BackwardResult,
    ForwardRequest,
    Outputs,
    PredictRequest,
    SessionConfig,
    SessionInfo,
)


class Transport(Protocol):
    """A channel to one vendor; after :meth:`open_session` it is bound to that session and its token."""

    session: SessionInfo | None

    def open_session(self, config: SessionConfig) -> SessionInfo: ...

    def attach(self, session: SessionInfo) -> None:
        """Bind to an already open session (e.g. to predict with a trained one)."""

    def bottom_package(self) -> bytes: ...

    def forward(self, req: ForwardRequest) -> Outputs: ...

    def backward(self, req: BackwardRequest) -> BackwardResult: ...

    def predict(self, req: PredictRequest) -> Outputs: ...

    def status(self) -> dict: ...

    def export(self, directory: str | None = None) -> str: ...

    def close(self) -> None: ...
