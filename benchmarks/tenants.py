"""Many tenants on one vendor: resident memory per LoRA session, and step latency under concurrent customers.

A vendor service runs in a separate process (one frozen base model shared by every session). Memory: its RSS
(VmRSS from /proc) once the base model is loaded and one step has run (a session opened, stepped once, closed: the
"base"), then with 1, 10 and 50 sessions open, each having run one training step (forward + backward + AdamW
step, so its LoRA deltas, their gradients and both AdamW moments exist). Latency: one customer alone, then 8
customers (threads, each its own session and HTTP connection) stepping at once against the same vendor; the
forward + backward round trip of each step, p50 and p99.

Steps use synthetic privatized representations shaped like an SST-2 batch (batch 32, 64 positions of which the
first 40% are real tokens, float16 on the wire), k = 0, LoRA r = 8.

Allocator variants of the vendor process. A LoRA session's own tensors are ~3.5 MB, but glibc's malloc keeps the
freed activations of every session's steps (its dynamic mmap threshold moves large tensors onto the heap, where
long-lived small allocations pin them), so without care RSS grows by ~60 MB per session. The vendor therefore calls
``malloc_trim(0)`` after every backward (``splitpriv.roles.vendor.return_freed_memory``). Measured side by side:

* ``shipped``: the service as it is (with the trim);
* ``no_trim``: the same service with the trim disabled (patched out by this benchmark: the baseline the fix is
  measured against);
* ``mmap_threshold``: no trim, ``MALLOC_MMAP_THRESHOLD_=131072`` in the service's environment instead (a deployment
  setting: large tensors always mmapped and returned on free, at the price of page faults on every step).

    python benchmarks/tenants.py [--quick] [--sessions 1,10,50] [--customers 8] [--steps 10] [--variants ...]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import common  # noqa: F401  (environment first)
from common import (machine, percentile, print_table, quiet, rss_bytes, synthetic_batch, vendor_service,
                    write_result)

GIB = 2**30

NO_TRIM = """
from splitpriv.roles.vendor import vendor as _vendor
_vendor.return_freed_memory = lambda: None
"""
VARIANTS = {
    "shipped": {},
    "no_trim": {"extra": NO_TRIM},
    "mmap_threshold": {"extra": NO_TRIM, "env": {"MALLOC_MMAP_THRESHOLD_": "131072"}},
}


def batch(seed: int):
    return synthetic_batch(seed, size=32, length=64)


class Tenant:
    """One customer: its own session and HTTP connection to the vendor."""

    def __init__(self, url: str, total_steps: int = 1000):
        from splitpriv.contract import SessionConfig
        from splitpriv.transport.http_client import HttpTransport

        self.transport = HttpTransport(url, timeout=600)
        self.info = self.transport.open_session(SessionConfig(n_bottom_layers=0, total_steps=total_steps,
                                                              tuning={"method": "lora", "r": 8}))
        self.step = 0

    def train_step(self, seed: int) -> float:
        from splitpriv.contract import BackwardRequest, ForwardRequest

        hidden, mask, grad = batch(seed)
        self.step += 1
        start = time.perf_counter()
        self.transport.forward(ForwardRequest(self.info.session_id, self.step, hidden, mask))
        self.transport.backward(BackwardRequest(self.info.session_id, self.step, grad))
        return time.perf_counter() - start

    def close(self) -> None:
        self.transport.close()
        self.transport.disconnect()


def memory(url: str, pid: int, levels: list[int]) -> dict:
    out = {"rss_start_gib": rss_bytes(pid) / GIB}
    warm = Tenant(url)
    warm.train_step(0)
    warm.close()
    time.sleep(0.5)
    base = rss_bytes(pid)
    out["rss_base_gib"] = base / GIB
    print(f"  vendor RSS: {out['rss_start_gib']:.3f} GiB at start, {base / GIB:.3f} GiB with the base model loaded "
          f"and one step run", flush=True)
    tenants: list[Tenant] = []
    out["levels"] = {}
    for level in levels:
        while len(tenants) < level:
            t = Tenant(url)
            t.train_step(len(tenants) + 1)
            tenants.append(t)
        time.sleep(0.5)
        rss = rss_bytes(pid)
        out["levels"][level] = {"rss_gib": rss / GIB, "added_gib": (rss - base) / GIB,
                                "added_per_session_mib": (rss - base) / 2**20 / level}
        print(f"  {level:3d} sessions open (one step each): RSS {rss / GIB:.3f} GiB, +{(rss - base) / 2**20:.0f} MiB "
              f"over the base ({(rss - base) / 2**20 / level:.1f} MiB per session)", flush=True)
    for t in tenants:
        t.close()
    time.sleep(0.5)
    out["rss_after_closing_gib"] = rss_bytes(pid) / GIB
    return out


def latency(url: str, customers: int, steps: int, pid: int) -> dict:
    single = Tenant(url)
    single.train_step(0)  # warm-up
    alone = [single.train_step(i + 1) for i in range(steps)]
    single.close()

    tenants = [Tenant(url) for _ in range(customers)]
    for t in tenants:
        t.train_step(0)
    times: list[list[float]] = [[] for _ in tenants]
    barrier = threading.Barrier(customers)
    errors: list[BaseException] = []
    peak = [rss_bytes(pid)]

    def work(i: int) -> None:
        try:
            barrier.wait()
            for s in range(steps):
                times[i].append(tenants[i].train_step(1000 * (i + 1) + s))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(customers)]
    start = time.perf_counter()
    for th in threads:
        th.start()
    while any(th.is_alive() for th in threads):
        peak.append(rss_bytes(pid))
        time.sleep(0.2)
    wall = time.perf_counter() - start
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    for t in tenants:
        t.close()
    flat = [x for per in times for x in per]
    return {
        "customers": customers, "steps_each": steps,
        "single": {"p50_s": percentile(alone, 50), "p99_s": percentile(alone, 99), "steps_per_s": 1 / statistics.mean(alone),
                   "runs": alone},
        "concurrent": {"p50_s": percentile(flat, 50), "p99_s": percentile(flat, 99),
                       "steps_per_s": len(flat) / wall, "runs": times},
        "rss_peak_gib": max(peak) / GIB,
    }


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 steps per customer; memory of shipped and no_trim, "
                        "latency of shipped only")
    parser.add_argument("--sessions", default="1,10,50")
    parser.add_argument("--customers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="steps per customer (default 10; quick 2)")
    parser.add_argument("--variants", default=None, help="allocator variants for memory (default: all; quick: "
                        "shipped,no_trim)")
    parser.add_argument("--latency-variants", default=None, help="default shipped,no_trim; quick: shipped")
    args = parser.parse_args()
    steps = args.steps or (2 if args.quick else 10)
    variants = (args.variants or ("shipped,no_trim" if args.quick else ",".join(VARIANTS))).split(",")
    lat_variants = (args.latency_variants or ("shipped" if args.quick else "shipped,no_trim")).split(",")
    quiet()
    m = machine()
    levels = [int(x) for x in args.sessions.split(",")]
    top = max(levels)
    mem, lat = {}, {}
    for variant in variants:
        print(f"vendor service: {variant}", flush=True)
        with vendor_service(**VARIANTS[variant]) as (url, proc):
            mem[variant] = memory(url, proc.pid, levels)
            if variant in lat_variants:
                lat[variant] = latency(url, args.customers, steps, proc.pid)
    ratios = {}
    for variant in variants:
        suffix = "" if variant == "shipped" else f".{variant}"
        levels_ = mem[variant]["levels"]
        ratios[f"tenants.rss_added_{top}_sessions_gib{suffix}"] = levels_[top]["added_gib"]
        ratios[f"tenants.rss_per_session_mib{suffix}"] = ((levels_[top]["rss_gib"] - levels_[levels[0]]["rss_gib"]) * 1024
                                                          / max(top - levels[0], 1))
        ratios[f"tenants.rss_base_gib{suffix}"] = mem[variant]["rss_base_gib"]
    n = args.customers
    for variant, l in lat.items():
        suffix = "" if variant == "shipped" else f".{variant}"
        ratios.update({
            f"tenants.step_latency_p50_s.{n}_customers{suffix}": l["concurrent"]["p50_s"],
            f"tenants.step_latency_p99_s.{n}_customers{suffix}": l["concurrent"]["p99_s"],
            f"tenants.step_latency_p50_s.1_customer{suffix}": l["single"]["p50_s"],
            f"tenants.p50_latency_vs_single_ratio.{n}_customers{suffix}": l["concurrent"]["p50_s"] / l["single"]["p50_s"],
            f"tenants.throughput_vs_single_ratio.{n}_customers{suffix}": l["concurrent"]["steps_per_s"]
            / l["single"]["steps_per_s"],
            f"tenants.rss_peak_gib.{n}_customers{suffix}": l["rss_peak_gib"],
        })
    print("\nvendor RSS over the base (base model loaded, one step run), sessions open with one step each:")
    rows = [[v, mem[v]["rss_base_gib"]] + [mem[v]["levels"][lv]["added_gib"] * 1024 for lv in levels] for v in variants]
    print_table(rows, ["allocator", "base GiB"] + [f"+MiB @{lv}" for lv in levels])
    print(f"\nstep latency (forward + backward over HTTP; batch 32 x 64 positions, 40% real, float16 wire, k=0, LoRA):")
    rows = []
    for variant, l in lat.items():
        rows.append([variant, "1 customer", l["single"]["p50_s"], l["single"]["p99_s"], l["single"]["steps_per_s"], "-"])
        rows.append([variant, f"{n} at once", l["concurrent"]["p50_s"], l["concurrent"]["p99_s"],
                     l["concurrent"]["steps_per_s"], f"{l['rss_peak_gib']:.2f}"])
    print_table(rows, ["allocator", "customers", "p50 s", "p99 s", "steps/s (vendor total)", "RSS peak GiB"])
    for name, value in ratios.items():
        print(f"  {name} = {value:.4f}")
    out = {"machine": m, "quick": args.quick, "memory": mem, "latency": lat, "ratios": ratios,
           "setting": {"k": 0, "tuning": "lora r=8", "batch": 32, "positions": 64, "real_share": 0.4,
                       "wire_dtype": "float16", "transport": "HTTP loopback, vendor in a separate process",
                       "variants": {k: {kk: (vv if kk == "env" else "return_freed_memory disabled")
                                        for kk, vv in VARIANTS[k].items()} for k in variants}}}
    write_result("tenants", out)
    return out


if __name__ == "__main__":
    main()
