"""What a customer needs from a vendor, independent of how messages travel (as Flower separates client logic
from gRPC). Customer code only ever sees this interface.

:class:`TransportBase` owns everything that is the same for every channel: the bound session and its token,
the wire encoding (every message goes through its bytes, which ``bytes_sent`` / ``bytes_received`` count),
the optional ``tap(direction, message)`` that sees every decoded message (``"to_vendor"`` / ``"to_customer"``:
what a network observer, or the vendor itself, sees) and the retry policy. A subclass implements only the raw
exchange: the ``*_raw`` methods, which move bytes (or a session config) to the vendor and back once, raising
:class:`Transient` for a failure worth another attempt; the base retries them.

Adding a transport is one file in ``splitpriv/transport/``: subclass :class:`TransportBase`, set ``description``,
say which targets it ``accepts`` (and, if its constructor does not take the target first, how ``from_target``
builds it), and decorate the class with ``@TRANSPORTS.register("name")`` from
:mod:`splitpriv.transport.registry`. :func:`splitpriv.transport.make_transport` then finds it.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from splitpriv.contract import (
    BackwardRequest,
    BackwardResult,
    DecodeRequest,
    ForwardRequest,
    Message,
    Outputs,
    PredictRequest,
    SessionConfig,
    SessionInfo,
    decode,
)

T = TypeVar("T")
Tap = Callable[[str, Message], None]
TO_VENDOR, TO_CUSTOMER = "to_vendor", "to_customer"


class VendorUnavailable(ConnectionError):
    """The vendor could not be reached (or kept failing transiently) after every retry."""


class Transient(Exception):
    """Raised by a raw exchange for a failure worth retrying. ``describe(attempts)`` is the message of the
    :class:`VendorUnavailable` raised once no retry is left."""

    def __init__(self, describe: Callable[[int], str]):
        super().__init__(describe(1))
        self.describe = describe


class TransportBase(ABC):
    """A channel to one vendor; after :meth:`open_session` (or :meth:`attach`, or ``session=``) it is bound to that
    session and its token.

    Retries: a :class:`Transient` failure is retried ``retries`` times, after ``min(backoff * 2**n, max_backoff)``
    seconds, but no retry starts once ``deadline`` seconds (None: no limit) have passed since the first attempt or
    would pass during its wait. ``attempts`` is how many attempts the last retried call took.
    """

    description: ClassVar[str] = ""

    def __init__(self, *, session: SessionInfo | None = None, tap: Tap | None = None, retries: int = 0,
                 backoff: float = 0.5, deadline: float | None = None, max_backoff: float = 10.0):
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
        if not backoff >= 0:
            raise ValueError(f"backoff must be >= 0, got {backoff!r}")
        if deadline is not None and not deadline >= 0:
            raise ValueError(f"deadline must be >= 0 seconds or None, got {deadline!r}")
        self.session: SessionInfo | None = session
        self.tap = tap
        self.retries = retries
        self.backoff = backoff
        self.deadline = deadline
        self.max_backoff = max_backoff
        self.bytes_sent = 0
        self.bytes_received = 0
        self.attempts = 0

    # -- declaring the transport ----------------------------------------------------------------------------------

    @classmethod
    @abstractmethod
    def accepts(cls, target: Any) -> bool:
        """Whether ``target`` (what :func:`~splitpriv.transport.make_transport` was given) is this transport's."""

    @classmethod
    def from_target(cls, target: Any, **kw) -> "TransportBase":
        return cls(target, **kw)

    # -- the raw exchange (subclasses) ----------------------------------------------------------------------------

    @abstractmethod
    def open_raw(self, config: SessionConfig) -> SessionInfo: ...

    @abstractmethod
    def bottom_raw(self, session_id: str, token: str) -> bytes: ...

    @abstractmethod
    def exchange_raw(self, action: str, session_id: str, token: str, body: bytes, step: int | None = None) -> bytes:
        """Deliver the encoded message ``body`` for ``action`` (``"forward"``, ``"backward"``, ``"predict"``);
        returns the encoded answer. ``step``: the message's step, for a transport that announces it ahead of the
        body."""

    @abstractmethod
    def status_raw(self, session_id: str, token: str) -> dict: ...

    @abstractmethod
    def export_raw(self, session_id: str, token: str, directory: str | None) -> str: ...

    @abstractmethod
    def close_raw(self, session_id: str, token: str) -> None: ...

    # -- plumbing -------------------------------------------------------------------------------------------------

    def _token(self) -> str:
        if self.session is None:
            raise RuntimeError(f"{type(self).__name__} has no session: call open_session() or attach() first")
        return self.session.token

    def _observe(self, direction: str, data: bytes, message: Message | None = None) -> None:
        if self.tap is not None:
            self.tap(direction, message if message is not None else decode(data))

    def with_retries(self, call: Callable[[], T]) -> T:
        """``call()``, retried on :class:`Transient` as the policy allows; sets :attr:`attempts`. Every raw call goes
        through here."""
        start = time.monotonic()
        for attempt in range(self.retries + 1):
            self.attempts = attempt + 1
            try:
                return call()
            except Transient as exc:
                delay = min(self.backoff * 2 ** min(attempt, 60), self.max_backoff)
                out_of_time = self.deadline is not None and time.monotonic() - start + delay > self.deadline
                if attempt == self.retries or out_of_time:
                    raise VendorUnavailable(exc.describe(attempt + 1)) from exc.__cause__
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _exchange(self, action: str, msg: Message, expect: type[Message]) -> Message:
        token = self._token()
        data = msg.to_bytes()
        self.bytes_sent += len(data)
        self._observe(TO_VENDOR, data)
        answer = self.with_retries(lambda: self.exchange_raw(action, msg.session_id, token, data,
                                                                step=getattr(msg, "step", None)))
        self.bytes_received += len(answer)
        reply = decode(answer, expect=expect)
        self._observe(TO_CUSTOMER, answer, reply)
        return reply

    # -- the interface customers use ------------------------------------------------------------------------------

    def open_session(self, config: SessionConfig) -> SessionInfo:
        self.session = self.with_retries(lambda: self.open_raw(config))
        return self.session

    def attach(self, session: SessionInfo) -> None:
        """Bind to an already open session (e.g. to predict with a trained one)."""
        self.session = session

    def bottom_package(self) -> bytes:
        """The bottom's weights + config + tokenizer (and the head's when the customer holds it), zipped."""
        token = self._token()
        data = self.with_retries(lambda: self.bottom_raw(self.session.session_id, token))
        self.bytes_received += len(data)
        return data

    def forward(self, req: ForwardRequest) -> Outputs:
        return self._exchange("forward", req, Outputs)

    def backward(self, req: BackwardRequest) -> BackwardResult:
        return self._exchange("backward", req, BackwardResult)

    def predict(self, req: PredictRequest) -> Outputs:
        return self._exchange("predict", req, Outputs)

    def decode(self, req: DecodeRequest) -> Outputs:
        return self._exchange("decode", req, Outputs)

    def status(self) -> dict:
        token = self._token()
        return self.with_retries(lambda: self.status_raw(self.session.session_id, token))

    def export(self, directory: str | None = None) -> str:
        """Save the session's tuned top on the vendor's machine; returns its directory there."""
        token = self._token()
        return self.with_retries(lambda: self.export_raw(self.session.session_id, token, directory))

    def close(self) -> None:
        """Close the bound session on the vendor (a no-op when none is bound)."""
        if self.session is None:
            return
        token = self._token()
        self.with_retries(lambda: self.close_raw(self.session.session_id, token))
        self.session = None


Transport = TransportBase
"""The interface name customer code types against."""

__all__ = ["TO_CUSTOMER", "TO_VENDOR", "Tap", "Transient", "Transport", "TransportBase", "VendorUnavailable"]
