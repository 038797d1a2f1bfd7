"""``GET /metrics``: the service in Prometheus' text format (``prometheus-client``), one registry per app.

* ``splitpriv_requests_total{method, route, status}`` and ``splitpriv_request_seconds{route}`` (a histogram), by
  route template (``/v1/sessions/{session_id}/forward``: never a session id);
* ``splitpriv_sessions`` (of which ``splitpriv_sessions_unloaded`` are idle, on disk), ``splitpriv_pending_forwards``,
  ``splitpriv_base_models``: the vendor's tables now; ``splitpriv_predict_batches`` and ``_batch_rows``: the
  multi-tenant predict batches run so far and the sequences they held (their ratio is the mean batch size);
  ``splitpriv_train_batches`` and ``_batch_rows``: the same for shared training forwards (``serve --batch-train``);
* ``process_resident_memory_bytes``, CPU seconds, open files: ``prometheus_client``'s process collector.

Aggregates only, nothing per tenant. When the vendor has a key store, reading it needs an admin key
(``splitpriv keys create --admin``); a vendor without one serves it to anyone who can reach it (local use).
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import ProcessCollector

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ServiceMetrics:
    """The registry and the instruments of one app (:class:`RequestCounter` feeds the request counts)."""

    def __init__(self, vendor):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("splitpriv_requests", "HTTP requests answered", ("method", "route", "status"),
                                registry=self.registry)
        self.latency = Histogram("splitpriv_request_seconds", "time to answer a request", ("route",),
                                 buckets=BUCKETS, registry=self.registry)
        Gauge("splitpriv_sessions", "open sessions", registry=self.registry).set_function(lambda: vendor.open_sessions)
        Gauge("splitpriv_sessions_unloaded", "open sessions unloaded to their checkpoint while idle",
              registry=self.registry).set_function(lambda: _unloaded(vendor))
        Gauge("splitpriv_pending_forwards", "forwards waiting for their backward (each holds an autograd graph)",
              registry=self.registry).set_function(vendor.pending_forwards)
        Gauge("splitpriv_base_models", "frozen base models (and heads per label count) loaded",
              registry=self.registry).set_function(lambda: len(vendor._bases))
        batcher = vendor.batcher
        for name, what, attr in (("predict_batches", "multi-tenant predict batches run", "batches"),
                                 ("predict_batch_rows", "sequences those batches held", "rows"),
                                 ("train_batches", "multi-tenant training forwards run (2+ sessions)", "train_batches"),
                                 ("train_batch_rows", "sequences those training forwards held", "train_rows")):
            Gauge(f"splitpriv_{name}", what, registry=self.registry).set_function(
                lambda attr=attr: getattr(batcher, attr) if batcher is not None else 0)
        ProcessCollector(registry=self.registry)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST



def _unloaded(vendor) -> int:
    from splitpriv.roles.vendor.idle import Unloaded

    with vendor._lock:
        return sum(isinstance(s, Unloaded) for s in vendor._sessions.values())


class RequestCounter:
    """ASGI middleware counting every request and its latency in ``metrics`` (``app.add_middleware``)."""

    def __init__(self, app, metrics: ServiceMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), {"code": 500}

        async def tapped(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tapped)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], route, str(status["code"])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)


__all__ = ["RequestCounter", "ServiceMetrics"]
