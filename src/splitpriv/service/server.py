"""Running the vendor service: :func:`serve` builds the :class:`~splitpriv.roles.vendor.Vendor` and its app
(:func:`splitpriv.service.app.create_app`) and runs them with uvicorn, over TLS when given a certificate."""

from __future__ import annotations

import json
import logging
import os
import time

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
    batch_predict: int | None = 64,
    batch_train: bool = False,
    log_format: str = "text",
) -> None:
    """Run the vendor service with uvicorn until interrupted or SIGTERM (open sessions are checkpointed on shutdown
    when ``state_dir`` is set, and reloaded from it at start). ``pending_ttl``: seconds a forward waits for its
    backward before its graph is freed; ``idle_unload``: seconds without a call before a session is checkpointed and
    dropped from memory (with ``state_dir``); ``session_ttl``: seconds without a call before it is closed;
    ``batch_predict``: rows per multi-tenant predict batch (0: none; :mod:`splitpriv.roles.vendor.tenant_batch`);
    ``batch_train``: batch dropout-free LoRA sessions' training forwards too (:mod:`splitpriv.roles.vendor.training_batch`);
    ``log_format="json"``: one JSON object per log line, uvicorn's access log included."""
    import uvicorn

    from splitpriv.roles.vendor.session import RequestLimits

    if log_format not in ("text", "json"):
        raise ValueError(f"log_format must be 'text' or 'json', got {log_format!r}")
    _configure_logging(log_level, log_format)
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
                    limits=RequestLimits(pending_ttl=pending_ttl), idle_unload=idle_unload, session_ttl=session_ttl,
                    batch_predict=batch_predict, batch_train=batch_train)
    from splitpriv.roles.vendor.warmup import warm_up

    log.info("model loaded for %s before serving", warm_up(vendor))
    if vendor.load_errors:
        log.error("%d saved session(s) could not be restored: %s", len(vendor.load_errors), vendor.load_errors)
    app = create_app(vendor, max_body_bytes=max_body_bytes)
    extra = {"log_config": json_log_config(log_level)} if log_format == "json" else {}
    uvicorn.run(app, host=host, port=port, log_level=log_level, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
                **extra)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message; an access-log record adds client, method, path
    and status."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
               "level": record.levelname, "logger": record.name}
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, _, status = record.args
            out.update(client=str(client), method=method, path=path, status=status)
        out["message"] = record.getMessage()
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def json_log_config(level: str) -> dict:
    """A ``logging.config.dictConfig`` for uvicorn and splitpriv with :class:`JsonFormatter` on stderr."""
    handler = {"handlers": ["json"], "level": level.upper(), "propagate": False}
    return {"version": 1, "disable_existing_loggers": False,
            "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
            "handlers": {"json": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
            "loggers": {"uvicorn": handler, "uvicorn.access": handler, "splitpriv": handler}}


def _configure_logging(level: str, log_format: str = "text") -> None:
    logger = logging.getLogger("splitpriv")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter() if log_format == "json" else
                             logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        logger.addHandler(handler)


__all__ = ["JsonFormatter", "json_log_config", "serve"]
