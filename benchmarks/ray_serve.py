"""The vendor on Ray Serve (``splitpriv serve --ray``) against plain uvicorn, on this machine's local Ray instance.

1. **Routing overhead**: one customer's sequential single-sentence predicts (k = 2, LoRA, d_chi η = 10) through
   Serve's proxy and router to one replica (2 torch threads) vs the same predicts to ``splitpriv serve`` (uvicorn,
   2 torch threads); per-call latency p50 and mean, and the added milliseconds per call.
2. **Stickiness**: 16 session ids × 10 calls each (``/v1/health`` with the ``x-session-id`` header) on 2 replicas,
   with the consistent-hash router and with Serve's default router: the share of each session's calls that reach
   its most frequent replica (1.0 = sticky) and how many replicas a session's calls touch.
3. **Scale out**: 4 customers sending single-sentence predicts at once on 1 vs 2 replicas (1 CPU and 1 torch
   thread each, hash router): aggregate requests/s. On a 2-core machine the replicas share the cores that one
   replica with 2 threads would use, so the ratio cannot exceed ~1; on two machines each replica has its own.

    python benchmarks/ray_serve.py [--quick] [--calls 200] [--requests 20]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import time

import common  # noqa: F401  (environment first)
from common import free_port, load_dev, machine, percentile, print_table, quiet, vendor_service, write_result
from tenant_batching import HttpTenants, burst, representations

import tenant_batching


def latency(url: str, bodies, calls: int) -> dict:
    predict, close = HttpTenants(url).open()
    for hidden, mask in bodies[:5]:  # warm-up
        predict(hidden, mask)
    times = []
    for i in range(calls):
        hidden, mask = bodies[i % len(bodies)]
        start = time.perf_counter()
        predict(hidden, mask)
        times.append(time.perf_counter() - start)
    close()
    return {"p50_ms": 1000 * percentile(times, 50), "mean_ms": 1000 * statistics.mean(times),
            "p99_ms": 1000 * percentile(times, 99), "calls": calls}


def stickiness(url: str, sessions: int = 16, calls: int = 10) -> dict:
    import httpx

    from splitpriv.contract import SESSION_HEADER

    shares, touched = [], []
    with httpx.Client(timeout=30) as client:
        for s in range(sessions):
            seen = [client.get(f"{url}/v1/health", headers={SESSION_HEADER: f"session-{s}"}).json()["replica"]
                    for _ in range(calls)]
            shares.append(collections.Counter(seen).most_common(1)[0][1] / calls)
            touched.append(len(set(seen)))
    return {"share_on_one_replica": statistics.mean(shares), "mean_replicas_per_session": statistics.mean(touched),
            "sessions": sessions, "calls_per_session": calls}


class RayTenants(HttpTenants):
    def counters(self) -> tuple[float, float]:
        return 0.0, 0.0  # /metrics is per replica behind the router: not summed here


def on_ray(replicas: int, *, sticky: bool = True, cpus: float = 1.0, batch_predict: int = 64):
    from splitpriv.service import ray_serve

    options = ray_serve.ReplicaOptions(state_dir=tempfile.mkdtemp(prefix="ray-bench-"), checkpoint_every=None,
                                       idle_unload=None, batch_predict=batch_predict, torch_threads=max(1, int(cpus)))
    url = ray_serve.start(options, port=free_port(), replicas=replicas, sticky=sticky, num_cpus=cpus, ray_cpus=2)
    deadline = time.monotonic() + 120
    while len(_replicas(url)) < replicas:  # until the router has every replica
        if time.monotonic() > deadline:
            ray_serve.stop()
            raise RuntimeError(f"the router did not reach {replicas} replicas within 120 s")
        time.sleep(0.5)
    return url, ray_serve.stop


def _replicas(url: str) -> set[str]:
    import httpx

    from splitpriv.contract import SESSION_HEADER

    return {httpx.get(f"{url}/v1/health", headers={SESSION_HEADER: f"probe-{i}"}, timeout=30).json()["replica"]
            for i in range(16)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--calls", type=int, default=200, help="sequential predicts for the routing overhead")
    ap.add_argument("--requests", type=int, default=20, help="predicts per customer in the scale-out burst")
    a = ap.parse_args()
    if a.quick:
        a.calls, a.requests = 30, 5
    quiet()
    from splitpriv.contract import SessionConfig

    tenant_batching.SESSION = SessionConfig(n_bottom_layers=2, tuning={"method": "lora", "r": 8})
    texts, _ = load_dev(64)
    out = {"quick": a.quick, "machine": machine(), "session": tenant_batching.SESSION.to_dict()}

    with vendor_service(batch_predict=0) as (url, _):
        bodies = representations(HttpTenants(url).transport(), texts)
        plain = latency(url, bodies, a.calls)
    url, stop = on_ray(1, cpus=2.0, batch_predict=0)
    try:
        ray = latency(url, bodies, a.calls)
    finally:
        stop()
    out["routing_overhead"] = {"uvicorn": plain, "ray_serve": ray,
                               "added_ms_p50": ray["p50_ms"] - plain["p50_ms"],
                               "latency_ratio_p50": ray["p50_ms"] / plain["p50_ms"],
                               "latency_ratio_mean": ray["mean_ms"] / plain["mean_ms"]}
    print_table([[name, r["p50_ms"], r["mean_ms"], r["p99_ms"]] for name, r in (("uvicorn", plain), ("ray", ray))],
                ["server", "p50 ms", "mean ms", "p99 ms"])
    print(f"routing overhead: +{out['routing_overhead']['added_ms_p50']:.1f} ms per call at p50 "
          f"({out['routing_overhead']['latency_ratio_p50']:.2f}x)", flush=True)
    write_result("ray_serve", out)

    out["stickiness"] = {}
    for name, sticky in (("consistent_hash", True), ("default", False)):
        url, stop = on_ray(2, sticky=sticky)
        try:
            out["stickiness"][name] = stickiness(url)
        finally:
            stop()
        print(f"router {name}: {out['stickiness'][name]}", flush=True)
    write_result("ray_serve", out)

    out["scale_out"] = {}
    for replicas in (1, 2):
        url, stop = on_ray(replicas)
        try:
            out["scale_out"][f"{replicas}_replicas"] = burst(RayTenants(url), 4, a.requests, bodies)
        finally:
            stop()
    one, two = (out["scale_out"][f"{n}_replicas"]["requests_per_s"] for n in (1, 2))
    out["scale_out"]["throughput_ratio"] = two / one
    print(f"4 customers: {one:.1f} requests/s on 1 replica, {two:.1f} on 2 ({two / one:.2f}x)", flush=True)
    write_result("ray_serve", out)


if __name__ == "__main__":
    main()
