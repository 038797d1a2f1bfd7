"""The customer's side of the HTTP wire: :class:`HttpTransport` speaks to a vendor service
(:mod:`splitpriv.service`) and behaves exactly like :class:`~splitpriv.transport.inprocess.InProcessTransport`, so
:class:`~splitpriv.roles.customer.Customer` runs unchanged over either.

One ``httpx.Client`` (keep-alive) per transport. Connection failures, timeouts and 502/503/504 answers are retried
(by default with exponential backoff from 0.5 s, at most 10 s apart, for up to 2 minutes, so that a vendor restart
is waited out; each attempt waits at most ``timeout`` = 50 s for the vendor, so that a timed-out attempt leaves
time for another within those 2 minutes; ``retries``, ``backoff``, ``deadline``: the policy of
:class:`~splitpriv.transport.base.TransportBase`); that is harmless because every training message carries its step
id and the vendor answers a repeated step with the stored result without stepping its optimizer again, and
``predict`` changes nothing. Opening a session is retried the same way: each logical open sends a random
``Idempotency-Key`` header, kept across its retries, and the vendor answers a repeat with the session the first
attempt opened (:mod:`splitpriv.service.idempotency`), so a lost answer leaves no orphan session; a repeated close
gets the first close's answer. Any other 4xx answer raises the matching splitpriv error
(:func:`splitpriv.contract.errors.error_for`) with the vendor's message.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import quote

import httpx

from splitpriv.contract.errors import UnknownSession, error_for
from splitpriv.contract import SESSION_HEADER, STEP_HEADER, SessionConfig, SessionInfo
from splitpriv.transport.base import Tap, Transient, TransportBase, VendorUnavailable
from splitpriv.transport.registry import TRANSPORTS

OCTET = "application/octet-stream"
IDEMPOTENCY_HEADER = "Idempotency-Key"  # the service's splitpriv.service.idempotency.HEADER (no import: layers)
RETRY_STATUS = (502, 503, 504)
# Failures after which the request may or may not have reached the vendor; retried for idempotent calls only.
RETRY_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
# Failures before anything was sent: always safe to retry.
NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class VendorError(RuntimeError):
    """The vendor answered with a server error (5xx): a fault on its side, not in the request."""


def answer_error(response: httpx.Response) -> Exception:
    """The splitpriv exception for an error answer, carrying the vendor's message."""
    try:
        message = response.json()["error"]
    except Exception:  # noqa: BLE001 - not our JSON (a proxy's page, ...): keep its start
        message = response.text[:500] or response.reason_phrase
    status = response.status_code
    if status >= 500:
        return VendorError(f"vendor error {status}: {message}")
    return error_for(status)(message)


@TRANSPORTS.register("http", aliases=("https",))
class HttpTransport(TransportBase):
    """A channel to the vendor service at ``base_url`` (e.g. ``"http://127.0.0.1:8000"``).

    ``bytes_sent`` / ``bytes_received`` count message bodies (and the bottom package) once per call, as the
    in-process transport does; HTTP headers and retried attempts are not counted.
    """

    description = "a vendor service at an http:// or https:// URL"

    def __init__(self, base_url: str, *, timeout: float = 50.0, retries: int = 40, backoff: float = 0.5,
                 deadline: float | None = 120.0, session: SessionInfo | None = None, tap: Tap | None = None,
                 api_key: str | None = None, ca_file: str | None = None, max_backoff: float = 10.0):
        super().__init__(session=session, tap=tap, retries=retries, backoff=backoff, deadline=deadline,
                         max_backoff=max_backoff)
        from splitpriv import __version__

        self.base_url = base_url.rstrip("/")
        self.api_key = api_key  # sent only when opening a session (``Authorization: Bearer <API key>``)
        verify: bool | object = True
        if ca_file is not None:  # a private CA (the vendor's own certificate authority)
            import ssl

            verify = ssl.create_default_context(cafile=str(ca_file))
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout, verify=verify,
                                    headers={"User-Agent": f"splitpriv/{__version__}"})

    @classmethod
    def accepts(cls, target: Any) -> bool:
        return isinstance(target, str) and target.lower().startswith(("http://", "https://"))

    # -- plumbing -------------------------------------------------------------------------------------------------

    def _path(self, session_id: str, action: str = "") -> str:
        return f"/v1/sessions/{quote(str(session_id), safe='')}" + (f"/{action}" if action else "")

    def _request(self, method: str, path: str, *, token: str | None = None, content: bytes | None = None,
                 json: dict | None = None, idempotent: bool = True, headers: dict | None = None) -> httpx.Response:
        """One attempt (with ``Authorization: Bearer token`` when given); :class:`Transient` when another may
        succeed."""
        headers = dict(headers or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if content is not None:
            headers["Content-Type"] = OCTET
        if path.startswith("/v1/sessions/"):  # sticky routing to the replica serving this session
            headers[SESSION_HEADER] = path.split("/")[3]
        url = f"{self.base_url}{path}"
        try:
            response = self._client.request(method, path, content=content, json=json, headers=headers)
        except NOT_SENT_ERRORS as exc:
            reason = repr(exc)
            if "CERTIFICATE_VERIFY_FAILED" in reason or "SSL" in type(exc.__context__).__name__:
                raise VendorUnavailable(f"TLS with the vendor at {url} failed (a certificate it does not trust? pass "
                                        f"the vendor's CA with --ca-file): {reason}") from exc
            raise Transient(lambda n: f"cannot reach the vendor at {url} after {n} attempt(s): {reason}") from exc
        except RETRY_ERRORS as exc:
            reason = repr(exc)
            if not idempotent:
                raise VendorUnavailable(f"{method} {url} failed after {self.attempts} attempt(s): {reason}") from exc
            raise Transient(lambda n: f"{method} {url} failed after {n} attempt(s): {reason}") from exc
        if response.status_code in RETRY_STATUS:
            raise Transient(lambda n: f"{method} {url}: {answer_error(response)} (after {n} attempts)")
        if not response.is_success:
            raise answer_error(response)
        return response

    # -- the raw exchange -----------------------------------------------------------------------------------------

    def open_session(self, config: SessionConfig) -> SessionInfo:
        """Open a session; every retry of this open carries the same ``Idempotency-Key``."""
        key = secrets.token_urlsafe(24)
        self.session = self.with_retries(lambda: self.open_raw(config, idempotency_key=key))
        return self.session

    def open_raw(self, config: SessionConfig, idempotency_key: str | None = None) -> SessionInfo:
        """One open attempt; without ``idempotency_key`` it is only retried when it never reached the vendor."""
        headers = {IDEMPOTENCY_HEADER: idempotency_key} if idempotency_key else None
        data = self._request("POST", "/v1/sessions", token=self.api_key, json=config.to_dict(),
                             idempotent=idempotency_key is not None, headers=headers).json()
        return SessionInfo(**{k: data[k] for k in ("session_id", "token", "d_model", "n_layers", "disclosure")})

    def bottom_raw(self, session_id: str, token: str) -> bytes:
        return self._request("GET", self._path(session_id, "bottom"), token=token).content

    def exchange_raw(self, action: str, session_id: str, token: str, body: bytes, step: int | None = None) -> bytes:
        headers = {STEP_HEADER: str(step)} if action == "forward" and step is not None else None
        return self._request("POST", self._path(session_id, action), token=token, content=body, headers=headers).content

    def status_raw(self, session_id: str, token: str) -> dict:
        return self._request("GET", self._path(session_id, "status"), token=token).json()

    def export_raw(self, session_id: str, token: str, directory: str | None) -> str:
        """Ask the vendor to checkpoint the session; returns the vendor-side directory of the tuned top (its
        weights stay with the vendor). The vendor chooses where: ``directory`` must be None over HTTP."""
        if directory is not None:
            raise ValueError("over HTTP the vendor chooses where it writes the session; call export() without a directory")
        return self._request("POST", self._path(session_id, "checkpoint"), token=token).json()["top"]

    def close_raw(self, session_id: str, token: str) -> None:
        try:
            self._request("DELETE", self._path(session_id), token=token)
        except UnknownSession:
            if self.attempts == 1:
                raise
            # a retried DELETE whose lost first attempt closed the session

    # -- beyond the interface -------------------------------------------------------------------------------------

    def health(self) -> dict:
        return self.with_retries(lambda: self._request("GET", "/v1/health")).json()

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


__all__ = ["HttpTransport", "VendorError", "VendorUnavailable", "answer_error"]
