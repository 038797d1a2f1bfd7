"""The vendor service on Ray Serve: N replicas of the same FastAPI app (:func:`splitpriv.service.app.create_app`)
behind Serve's HTTP proxy, each a :class:`~splitpriv.roles.vendor.replica.ReplicaVendor` on one shared state dir.

Routing: Serve's consistent-hash request router (:data:`ROUTER`) keyed on the ``x-session-id`` header
(:data:`~splitpriv.contract.SESSION_HEADER`, which :class:`~splitpriv.transport.http_client.HttpTransport` sends on
every session call), with no fallback replica: every call of a session reaches the replica its id hashes to, and
that replica holds the session's lease (:mod:`splitpriv.roles.vendor.lease`). Serve's default router spreads one session's
calls over the replicas (``benchmarks/ray_serve.py`` measures both); leases keep that correct but slow (each move
is a checkpoint load), sticky routing keeps it fast. When the replica set changes (one dies, Serve replaces it) the
ring moves a share of the sessions; their new owners load them from the shared dir once the old leases expire.

TLS terminates at Serve's proxy (``ssl_certfile``/``ssl_keyfile``, as :func:`splitpriv.service.server.serve`); Ray's
own services use Ray's token authentication (on by default in 2.60) and must be firewalled to the cluster.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass

from ray import serve

from splitpriv.service.app import DEFAULT_MAX_BODY_BYTES

log = logging.getLogger("splitpriv.service")

ROUTER = "ray.serve.experimental.consistent_hash_router.ConsistentHashRouter"
APP_NAME = "splitpriv"
DEPLOYMENT = "vendor"


@dataclass
class ReplicaOptions:
    """What every replica is built with (:class:`~splitpriv.roles.vendor.replica.ReplicaVendor`'s options)."""

    state_dir: str
    model: str | None = None
    lease_ttl: float = 30.0
    checkpoint_every: int | None = 50
    pending_ttl: float | None = 300.0
    idle_unload: float | None = 900.0
    session_ttl: float | None = 7 * 86400.0
    batch_predict: int | None = 64
    batch_train: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    torch_threads: int = 1


@serve.ingress()
class VendorReplica:
    """One Serve replica: a :class:`ReplicaVendor` and its FastAPI app."""

    def __init__(self, options: dict):
        import torch

        from splitpriv.roles.vendor.replica import ReplicaVendor
        from splitpriv.roles.vendor.session import RequestLimits

        opts = ReplicaOptions(**options)
        torch.set_num_threads(opts.torch_threads)
        self.options = opts
        self.vendor = ReplicaVendor(opts.model, state_dir=opts.state_dir, lease_ttl=opts.lease_ttl,
                                    checkpoint_every=opts.checkpoint_every,
                                    limits=RequestLimits(pending_ttl=opts.pending_ttl), idle_unload=opts.idle_unload,
                                    session_ttl=opts.session_ttl, batch_predict=opts.batch_predict,
                                    batch_train=opts.batch_train)
        from splitpriv.roles.vendor.warmup import warm_up

        warm_up(self.vendor)  # ready only with the model in memory: an open never waits for a load

    def __serve_build_asgi_app__(self):
        from splitpriv.service.app import create_app

        return create_app(self.vendor, max_body_bytes=self.options.max_body_bytes)


def application(options: ReplicaOptions, *, replicas: int = 2, sticky: bool = True, num_cpus: float = 1.0,
                max_ongoing_requests: int = 64):
    """The bound Serve application: ``replicas`` copies of :class:`VendorReplica`, each reserving ``num_cpus``; with
    ``sticky`` the consistent-hash router (strict: no fallback replica), else Serve's default router."""
    from ray.serve.config import RequestRouterConfig

    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, got {replicas}")
    extra = {}
    if sticky:
        extra["request_router_config"] = RequestRouterConfig(
            request_router_class=ROUTER, request_router_kwargs={"num_fallback_replicas": 0})
    deployment = serve.deployment(VendorReplica, name=DEPLOYMENT).options(
        num_replicas=replicas, max_ongoing_requests=max_ongoing_requests,
        ray_actor_options={"num_cpus": num_cpus, "runtime_env": {"env_vars": worker_env(options.torch_threads)}},
        **extra)
    return deployment.bind(asdict(options))


def start(options: ReplicaOptions, *, address: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          replicas: int = 2, sticky: bool = True, num_cpus: float = 1.0, ssl_certfile: str | None = None,
          ssl_keyfile: str | None = None, ray_cpus: int | None = None):
    """Connect to the Ray cluster at ``address`` ("auto", ``ray://...``; None: start a local one with ``ray_cpus``),
    start Serve's proxy on ``host:port`` (HTTPS with a certificate) and deploy; returns once every replica is up."""
    if bool(ssl_certfile) != bool(ssl_keyfile):
        raise ValueError("TLS needs both ssl_certfile and ssl_keyfile (--ssl-certfile F --ssl-keyfile F)")
    connect(address, num_cpus=ray_cpus)
    http = {"host": host, "port": port}
    if ssl_certfile:
        http.update(ssl_certfile=str(ssl_certfile), ssl_keyfile=str(ssl_keyfile))
    serve.start(http_options=http)
    serve.run(application(options, replicas=replicas, sticky=sticky, num_cpus=num_cpus), name=APP_NAME,
              route_prefix="/", blocking=False)
    scheme = "https" if ssl_certfile else "http"
    log.info("splitpriv vendor on Ray Serve: %d replica(s) at %s://%s:%d (state dir %s)", replicas, scheme, host,
             port, options.state_dir)
    return f"{scheme}://{host}:{port}"


def stop() -> None:
    """Delete the application and shut Serve down (replicas checkpoint their sessions on the way out)."""
    import ray

    serve.shutdown()
    ray.shutdown()


def connect(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Join the Ray cluster at ``address`` ("auto", ``ray://...``) unless this process already has; None or "local":
    start a Ray instance on this machine with ``num_cpus`` (default: all), its services bound to loopback."""
    import ray

    if ray.is_initialized():
        return
    if address in (None, "local"):
        kwargs = {"num_cpus": num_cpus, "include_dashboard": False, "_node_ip_address": "127.0.0.1"}
        # Serve's controller kills a proxy that misses 3 readiness checks of 5 s each; on 2 busy cores the proxy
        # process takes longer than that to import and bind, and `serve.start` then fails. The instance started here
        # (its workers inherit this environment) gives it PROXY_READY_TIMEOUT_S per check unless the operator chose.
        os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", str(PROXY_READY_TIMEOUT_S))
    else:
        kwargs = {"address": address}
    ray.init(**kwargs, log_to_driver=False, configure_logging=False)


PROXY_READY_TIMEOUT_S = 30.0

# what a Ray worker needs from the driver's environment: data, caches, offline models
WORKER_ENV_KEYS = ("SPLITPRIV_DATA_DIR", "SPLITPRIV_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def worker_env(threads: int) -> dict:
    """The environment of a Ray worker running splitpriv: :data:`WORKER_ENV_KEYS` from this process, and ``threads``
    OpenMP threads that sleep while they wait."""
    env = {k: os.environ[k] for k in WORKER_ENV_KEYS if k in os.environ}
    env.update(OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE", TOKENIZERS_PARALLELISM="false")
    return env


__all__ = ["APP_NAME", "DEPLOYMENT", "ROUTER", "WORKER_ENV_KEYS", "ReplicaOptions", "VendorReplica", "application",
           "connect", "start", "stop", "worker_env"]
