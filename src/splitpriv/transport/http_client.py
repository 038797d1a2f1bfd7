"""The customer's side of the HTTP wire: :class:`HttpTransport` speaks to a vendor service
(:mod:`splitpriv.service`) and behaves exactly like :class:`~splitpriv.transport.inprocess.InProcessTransport`, so
:class:`~splitpriv.roles.customer.Customer` runs unchanged over either.

One ``httpx.Client`` (keep-alive) per transport. Connection failures, timeouts and 502/503/504 answers are retried
(``retries`` times, exponential ``backoff``); that is harmless because every training message carries its step id
and the vendor answers a repeated step with the stored result without stepping its optimizer again, and
``predict`` changes nothing. Opening a session is only retried when the request never reached the vendor (a retry
after a lost answer would open a second session). Any other 4xx answer raises the matching splitpriv error with
the vendor's message.
"""

from __future__ import annotations

import time
from urllib.parse import quote

import httpx

from splitpriv.errors import Forbidden, OutOfOrder, PayloadTooLarge, ProtocolError, UnknownSession
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

OCTET = "application/octet-stream"
RETRY_STATUS = (502, 503, 504)
# Failures after which the request may or may not have reached the vendor; retried for idempotent calls only.
RETRY_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
# Failures before anything was sent: always safe to retry.
NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class VendorUnavailable(ConnectionError):
    """The vendor could not be reached (or kept failing with 502/503/504) after every retry."""


class VendorError(RuntimeError):
    """The vendor answered with a server error (5xx): a fault on its side, not in the request."""


ERRORS: dict[int, type[Exception]] = {
    400: ProtocolError,
    401: Forbidden,
    403: Forbidden,
    404: UnknownSession,
    409: OutOfOrder,
    413: PayloadTooLarge,
    422: ProtocolError,
    429: ProtocolError,
}


def error_for(response: httpx.Response) -> Exception:
    """The splitpriv exception for an error answer, carrying the vendor's message."""
    try:
        message = response.json()["error"]
    except Exception:  # noqa: BLE001 - not our JSON (a proxy's page, ...): keep its start
        message = response.text[:500] or response.reason_phrase
    status = response.status_code
    if status >= 500:
        return VendorError(f"vendor error {status}: {message}")
    return ERRORS.get(status, ProtocolError)(message)


class HttpTransport:
    """A channel to the vendor service at ``base_url`` (e.g. ``"http://127.0.0.1:8000"``); after
    :meth:`open_session` (or :meth:`attach`, or ``session=``) it is bound to that session and its token.

    ``bytes_sent`` / ``bytes_received`` count message bodies (and the bottom package) once per call, as the
    in-process transport does; HTTP headers and retried attempts are not counted.
    """

    def __init__(self, base_url: str, *, timeout: float = 120.0, retries: int = 3, backoff: float = 0.5,
                 session: SessionInfo | None = None):
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
        if not backoff >= 0:
            raise ValueError(f"backoff must be >= 0, got {backoff!r}")
        from splitpriv import __version__

        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self.session: SessionInfo | None = session
        self.bytes_sent = 0
        self.bytes_received = 0
        self._attempts = 0
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout,
                                    headers={"User-Agent": f"splitpriv/{__version__}"})

    # -- plumbing -------------------------------------------------------------------------------------------------

    def _token(self) -> str:
        if self.session is None:
            raise RuntimeError("no session: call open_session() or attach() first")
        return self.session.token

    def _path(self, session_id: str, action: str = "") -> str:
        return f"/v1/sessions/{quote(str(session_id), safe='')}" + (f"/{action}" if action else "")

    def _request(self, method: str, path: str, *, content: bytes | None = None, json: dict | None = None,
                 auth: bool = True, idempotent: bool = True) -> tuple[httpx.Response, int]:
        """Send with retries; returns the successful response and how many attempts it took."""
        headers = {}
        if auth:
            headers["Authorization"] = f"Bearer {self._token()}"
        if content is not None:
            headers["Content-Type"] = OCTET
        url = f"{self.base_url}{path}"
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            self._attempts = attempt + 1
            try:
                response = self._client.request(method, path, content=content, json=json, headers=headers)
            except NOT_SENT_ERRORS as exc:
                if last:
                    raise VendorUnavailable(f"cannot reach the vendor at {url} after {attempt + 1} attempt(s): {exc!r}") from exc
            except RETRY_ERRORS as exc:
                if last or not idempotent:
                    raise VendorUnavailable(f"{method} {url} failed after {attempt + 1} attempt(s): {exc!r}") from exc
            else:
                if response.status_code in RETRY_STATUS and not last:
                    pass
                elif response.is_success:
                    return response, attempt + 1
                elif response.status_code in RETRY_STATUS:
                    raise VendorUnavailable(f"{method} {url}: {error_for(response)} (after {attempt + 1} attempts)")
                else:
                    raise error_for(response)
            time.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")

    def _exchange(self, action: str, msg: Message, expect: type[Message]) -> Message:
        data = msg.to_bytes()
        response, _ = self._request("POST", self._path(msg.session_id, action), content=data)
        self.bytes_sent += len(data)
        self.bytes_received += len(response.content)
        return decode(response.content, expect=expect)

    # -- the Transport interface ----------------------------------------------------------------------------------

    def open_session(self, config: SessionConfig) -> SessionInfo:
        response, _ = self._request("POST", "/v1/sessions", json=config.to_dict(), auth=False, idempotent=False)
        data = response.json()
        self.session = SessionInfo(**{k: data[k] for k in ("session_id", "token", "d_model", "n_layers", "disclosure")})
        return self.session

    def attach(self, session: SessionInfo) -> None:
        self.session = session

    def bottom_package(self) -> bytes:
        response, _ = self._request("GET", self._path(self.session.session_id if self.session else "", "bottom"))
        self.bytes_received += len(response.content)
        return response.content

    def forward(self, req: ForwardRequest) -> Outputs:
        return self._exchange("forward", req, Outputs)

    def backward(self, req: BackwardRequest) -> BackwardResult:
        return self._exchange("backward", req, BackwardResult)

    def predict(self, req: PredictRequest) -> Outputs:
        return self._exchange("predict", req, Outputs)

    def status(self) -> dict:
        self._token()
        response, _ = self._request("GET", self._path(self.session.session_id, "status"))
        return response.json()

    def export(self, directory: str | None = None) -> str:
        """Ask the vendor to checkpoint the session; returns the vendor-side directory of the tuned top (its
        weights stay with the vendor). The vendor chooses where: ``directory`` must be None over HTTP."""
        if directory is not None:
            raise ValueError("over HTTP the vendor chooses where it writes the session; call export() without a directory")
        self._token()
        response, _ = self._request("POST", self._path(self.session.session_id, "checkpoint"))
        return response.json()["top"]

    def close(self) -> None:
        if self.session is None:
            return
        try:
            self._request("DELETE", self._path(self.session.session_id))
        except UnknownSession:
            if self._attempts == 1:
                raise
            # a retried DELETE whose lost first attempt closed the session
        self.session = None

    # -- beyond the interface -------------------------------------------------------------------------------------

    def health(self) -> dict:
        response, _ = self._request("GET", "/v1/health", auth=False)
        return response.json()

    def disconnect(self) -> None:
        """Close the HTTP connection pool (the session stays open on the vendor)."""
        self._client.close()

    def __enter__(self) -> "HttpTransport":
        return self

    def __exit__(self, *exc) -> None:
        self.disconnect()

    def __repr__(self) -> str:
        sid = self.session.session_id if self.session else None
        return f"HttpTransport({self.base_url!r}, session={sid!r})"
