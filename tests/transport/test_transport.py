"""The transport base (token binding, byte counters, tap, retries), the transport registry and the status ↔ error
table shared by the service and the HTTP transport."""

from __future__ import annotations

import time

import pytest
import torch

from splitpriv.contract.errors import (
    ERROR_CLASSES,
    Forbidden,
    OutOfOrder,
    PayloadTooLarge,
    ProtocolError,
    SessionLimit,
    UnknownSession,
    error_for,
    status_of,
)
from splitpriv.contract import (
    BackwardRequest,
    BackwardResult,
    ForwardRequest,
    Outputs,
    SessionConfig,
    SessionInfo,
    decode,
)
from splitpriv.transport import TRANSPORTS, Transport, TransportBase, make_transport
from splitpriv.transport.base import Transient, VendorUnavailable

INFO = SessionInfo(session_id="s1", token="secret", d_model=4, n_layers=2, disclosure={})


class Echo(TransportBase):
    """A vendor that answers a forward with the row sums of what it received (not registered)."""

    def __init__(self, *, failures: int = 0, **kw):
        super().__init__(**kw)
        self.failures = failures
        self.tokens: list[str] = []

    @classmethod
    def accepts(cls, target) -> bool:
        return target == "echo"

    def open_raw(self, config: SessionConfig) -> SessionInfo:
        return INFO

    def bottom_raw(self, session_id: str, token: str) -> bytes:
        return b"zip!"

    def exchange_raw(self, action: str, session_id: str, token: str, body: bytes, step: int | None = None) -> bytes:
        self.tokens.append(token)
        if self.failures:
            self.failures -= 1
            raise Transient(lambda n: f"echo down after {n} attempt(s)")
        msg = decode(body)
        if action == "forward":
            return Outputs(step=msg.step, outputs=msg.hidden.sum(-1)).to_bytes()
        return BackwardResult(step=msg.step).to_bytes()

    def status_raw(self, session_id: str, token: str) -> dict:
        return {"session_id": session_id}

    def export_raw(self, session_id: str, token: str, directory: str | None) -> str:
        return directory or "vendor-side"

    def close_raw(self, session_id: str, token: str) -> None:
        self.tokens.append(f"close:{token}")

    def forward_once(self) -> Outputs:
        hidden = torch.ones(1, 3, 4)
        return self.forward(ForwardRequest(session_id="s1", step=1, hidden=hidden, attention_mask=torch.ones(1, 3)))


def test_no_session_is_a_clear_error_and_the_bound_token_is_sent():
    transport = Echo()
    assert isinstance(transport, Transport) and transport.bytes_sent == transport.bytes_received == 0
    for call in (transport.forward_once, transport.bottom_package, transport.status, transport.export):
        with pytest.raises(RuntimeError, match="no session: call open_session"):
            call()
    transport.close()  # nothing bound: nothing to close
    assert transport.open_session(SessionConfig()) is INFO and transport.session is INFO
    assert transport.forward_once().outputs.tolist() == [[4.0, 4.0, 4.0]]
    transport.close()
    assert transport.tokens == ["secret", "close:secret"] and transport.session is None
    transport.attach(INFO)
    assert transport.status() == {"session_id": "s1"}


def test_counters_count_the_encoded_bodies_and_the_tap_sees_both_directions():
    seen = []
    transport = Echo(session=INFO, tap=lambda direction, msg: seen.append((direction, type(msg))))
    reply = transport.forward_once()
    request = ForwardRequest(session_id="s1", step=1, hidden=torch.ones(1, 3, 4), attention_mask=torch.ones(1, 3))
    assert transport.bytes_sent == len(request.to_bytes())
    assert transport.bytes_received == len(reply.to_bytes())
    transport.backward(BackwardRequest(session_id="s1", step=1, grad_outputs=torch.ones(1, 3)))
    assert seen == [("to_vendor", ForwardRequest), ("to_customer", Outputs),
                    ("to_vendor", BackwardRequest), ("to_customer", BackwardResult)]
    received = transport.bytes_received
    assert transport.bottom_package() == b"zip!" and transport.bytes_received == received + 4


def test_transient_failures_are_retried_with_backoff_within_the_deadline():
    transport = Echo(session=INFO, failures=2, retries=3, backoff=0.0)
    transport.forward_once()
    assert transport.attempts == 3 and transport.bytes_sent > 0
    with pytest.raises(VendorUnavailable, match="after 2 attempt"):
        Echo(session=INFO, failures=5, retries=1, backoff=0.0).forward_once()
    start = time.monotonic()
    with pytest.raises(VendorUnavailable, match="after 1 attempt"):
        Echo(session=INFO, failures=5, retries=5, backoff=30.0, deadline=1.0).forward_once()
    assert time.monotonic() - start < 5
    for bad in ({"retries": -1}, {"retries": True}, {"backoff": -1.0}, {"deadline": -1.0}):
        with pytest.raises(ValueError):
            Echo(**bad)


def test_backoff_is_capped_and_the_http_client_waits_out_a_restart_for_two_minutes():
    start = time.monotonic()
    transport = Echo(session=INFO, failures=6, retries=6, backoff=0.05, max_backoff=0.05)
    transport.forward_once()  # 0.05 * 2**n would sleep 3.15 s; capped it sleeps 0.3 s
    assert transport.attempts == 7 and time.monotonic() - start < 2
    from splitpriv.transport.http_client import HttpTransport

    http = HttpTransport("http://127.0.0.1:9", api_key="spk_x")
    assert http.deadline >= 120 and http.retries * http.max_backoff >= 120 and http.api_key == "spk_x"
    http.disconnect()


def test_registry_declares_both_transports_and_builds_them_from_targets():
    from splitpriv.roles.vendor import Vendor
    from splitpriv.transport.http_client import HttpTransport
    from splitpriv.transport.inprocess import InProcessTransport

    assert {"inprocess", "http"} <= set(TRANSPORTS.names())
    for name in TRANSPORTS.names():
        assert issubclass(TRANSPORTS.get(name), TransportBase) and TRANSPORTS.get(name).description
    vendor = Vendor()  # the model loads only when a session opens
    local = make_transport(vendor, tap=print)
    assert isinstance(local, InProcessTransport) and local.vendor is vendor and local.tap is print
    with make_transport("http://127.0.0.1:9/", retries=0) as remote:
        assert isinstance(remote, HttpTransport) and remote.base_url == "http://127.0.0.1:9" and remote.retries == 0
    with make_transport("https://vendor.example", name="http", session=INFO) as remote:
        assert remote.session is INFO and remote.backoff == 0.5 and remote.deadline == 120  # waits out a restart
    with pytest.raises(ValueError, match=r"unknown transport 'pigeon'.*inprocess.*http|unknown transport 'pigeon'.*http.*inprocess"):
        make_transport("http://127.0.0.1:9", name="pigeon")
    with pytest.raises(ValueError, match="no transport reaches 42.*inprocess.*http|no transport reaches 42.*http.*inprocess"):
        make_transport(42)
    with pytest.raises(ValueError, match="cannot reach"):
        make_transport("ftp://vendor", name="http")


def test_one_table_maps_errors_to_statuses_and_back():
    expected = {UnknownSession: 404, Forbidden: 403, PayloadTooLarge: 413, OutOfOrder: 409, SessionLimit: 429,
                ProtocolError: 400}
    assert set(ERROR_CLASSES) == set(expected)
    for cls, status in expected.items():
        assert status_of(cls("x")) == status and error_for(status) is cls
    assert error_for(401) is Forbidden and error_for(422) is ProtocolError and error_for(418) is ProtocolError

    class Subtle(OutOfOrder):
        pass

    assert status_of(Subtle()) == 409
    with pytest.raises(LookupError, match="KeyError has no HTTP status"):
        status_of(KeyError())


def test_session_limit_is_still_importable_from_the_vendor_role():
    from splitpriv.roles import vendor

    assert vendor.SessionLimit is SessionLimit
