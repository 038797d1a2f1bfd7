"""Running the vendor service: :func:`serve` builds the :class:`~splitpriv.roles.vendor.Vendor` and its app
(:func:`splitpriv.service.app.create_app`) and runs them with uvicorn, over TLS when given a certificate."""

from __future__ import annotations

import logging
import os

from splitpriv.roles.vendor import Vendor
from splitpriv.service.accounts import KeyStore
from splitpriv.service.app import DEFAULT_MAX_BODY_BYTES, create_app

log = logging.getLogger("splitpriv.service")


def serve(
    model: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    state_dir: str | os.PathLike | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    log_level: str = "info",
    *,
    checkpoint_every: int | None = 50,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    pending_ttl: float | None = 300.0,
    idle_unload: float | None = 900.0,
    session_ttl: float | None = 7 * 86400.0,
) -> None:
    """Run the vendor service with uvicorn until interrupted or SIGTERM (open sessions are checkpointed on shutdown
    when ``state_dir`` is set, and reloaded from it at start). ``pending_ttl``: seconds a forward waits for its
    backward before its graph is freed; ``idle_unload``: seconds without a call before a session is checkpointed and
    dropped from memory (with ``state_dir``); ``session_ttl``: seconds without a call before it is closed."""
    import uvicorn

    from splitpriv.roles.session import RequestLimits

    _configure_logging(log_level)
    if bool(ssl_certfile) != bool(ssl_keyfile):
        raise ValueError("TLS needs both ssl_certfile and ssl_keyfile (--ssl-certfile F --ssl-keyfile F)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        if not ssl_certfile:
            log.warning("serving plain HTTP on %s: bearer tokens and representations cross the network unencrypted; "
                        "put a TLS proxy in front or pass ssl_certfile/ssl_keyfile", host)
        if state_dir is None or not KeyStore(state_dir).active:
            log.warning("serving %s without API keys: anyone who can reach it can open sessions "
                        "(`splitpriv keys create --state-dir DIR --name NAME`)", host)
    if pending_ttl is not None and not pending_ttl > 0:
        raise ValueError(f"pending_ttl must be > 0 seconds, got {pending_ttl!r}")
    vendor = Vendor(model, state_dir=state_dir, checkpoint_every=checkpoint_every,
                    limits=RequestLimits(pending_ttl=pending_ttl), idle_unload=idle_unload, session_ttl=session_ttl)
    if vendor.load_errors:
        log.error("%d saved session(s) could not be restored: %s", len(vendor.load_errors), vendor.load_errors)
    app = create_app(vendor, max_body_bytes=max_body_bytes)
    uvicorn.run(app, host=host, port=port, log_level=log_level, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)


def _configure_logging(level: str) -> None:
    logger = logging.getLogger("splitpriv")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        logger.addHandler(handler)


__all__ = ["serve"]
