"""Many tenants on one vendor: resident memory per LoRA session, and step latency under concurrent customers.

A vendor service runs in a separate process (one frozen base model shared by every session). Memory: its RSS
(VmRSS from /proc) once the base model is loaded and one step has run (a session opened, stepped once, closed: the
"base"), then with 1, 10 and 50 sessions open, each having run one training step (forward + backward + AdamW
step, so its LoRA deltas, their gradients and both AdamW moments exist). Latency: one customer alone, then 8
customers (threads, each its own session and HTTP connection) stepping at once against the same vendor; the
forward + backward round trip of each step, p50 and p99.

Steps use synthetic privatized representations shaped like an SST-2 batch (batch 32, 64 positions of which the
first 40% are real tokens, float16 on the wire), k = 0, LoRA r = 8.

    python benchmarks/tenants.py [--quick] [--sessions 1,10,50] [--customers 8] [--steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import common  # noqa: F401  (environment first)
from common import machine, percentile, print_table, quiet, rss_bytes, vendor_service, write_result

GIB = 2**30


def batch(seed: int, size: int = 32, length: int = 64, d: int = 384):
    import torch

    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(size, length, dtype=torch.long)
    mask[:, : length * 2 // 5] = 1
    hidden = (torch.randn(size, length, d, generator=g) * mask.unsqueeze(-1)).half()
    return hidden, mask, torch.randn(size, 2, generator=g) / size


class Tenant:
    """One customer: its own session and HTTP connection to the vendor."""

    def __init__(self, url: str, total_steps: int = 1000):
        from splitpriv.protocol import SessionConfig
        from splitpriv.transport.http_client import HttpTransport

        self.transport = HttpTransport(url, timeout=600)
        self.info = self.transport.open_session(SessionConfig(n_bottom_layers=0, total_steps=total_steps,
                                                              tuning={"method": "lora", "r": 8}))
        self.step = 0

    def train_step(self, seed: int) -> float:
        from splitpriv.protocol import BackwardRequest, ForwardRequest

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
    parser.add_argument("--quick", action="store_true", help="3 steps per customer in the latency test")
    parser.add_argument("--sessions", default="1,10,50")
    parser.add_argument("--customers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="steps per customer (default 10; quick 3)")
    args = parser.parse_args()
    steps = args.steps or (3 if args.quick else 10)
    quiet()
    m = machine()
    levels = [int(x) for x in args.sessions.split(",")]
    with vendor_service() as (url, proc):
        mem = memory(url, proc.pid, levels)
        lat = latency(url, args.customers, steps, proc.pid)
    top = max(levels)
    ratios = {
        f"tenants.rss_added_{top}_sessions_gib": mem["levels"][top]["added_gib"],
        "tenants.rss_per_session_mib": (mem["levels"][top]["rss_gib"] - mem["levels"][levels[0]]["rss_gib"]) * 1024
        / max(top - levels[0], 1),
        f"tenants.step_latency_p50_s.{args.customers}_customers": lat["concurrent"]["p50_s"],
        f"tenants.step_latency_p99_s.{args.customers}_customers": lat["concurrent"]["p99_s"],
        "tenants.step_latency_p50_s.1_customer": lat["single"]["p50_s"],
        f"tenants.p50_latency_vs_single_ratio.{args.customers}_customers": lat["concurrent"]["p50_s"] / lat["single"]["p50_s"],
        f"tenants.throughput_vs_single_ratio.{args.customers}_customers": lat["concurrent"]["steps_per_s"]
        / lat["single"]["steps_per_s"],
    }
    print(f"\nstep latency (forward + backward over HTTP; batch 32 x 64 positions, 40% real, float16 wire, k=0, LoRA):")
    rows = [["1 customer", lat["single"]["p50_s"], lat["single"]["p99_s"], lat["single"]["steps_per_s"]],
            [f"{args.customers} customers at once", lat["concurrent"]["p50_s"], lat["concurrent"]["p99_s"],
             lat["concurrent"]["steps_per_s"]]]
    print_table(rows, ["", "p50 s", "p99 s", "steps/s (vendor total)"])
    print(f"  vendor RSS peak under {args.customers} customers: {lat['rss_peak_gib']:.3f} GiB")
    for name, value in ratios.items():
        print(f"  {name} = {value:.4f}")
    out = {"machine": m, "quick": args.quick, "memory": mem, "latency": lat, "ratios": ratios,
           "setting": {"k": 0, "tuning": "lora r=8", "batch": 32, "positions": 64, "real_share": 0.4,
                       "wire_dtype": "float16", "transport": "HTTP loopback, vendor in a separate process"}}
    write_result("tenants", out)
    return out


if __name__ == "__main__":
    main()
