"""A hardened vendor under load: memory with many idle sessions, and one tenant's latency while another floods.

Memory (goal: base + ≤ 1 GiB). A vendor service (separate process, a state dir, idle sessions unloaded after
``--idle`` seconds) opens ``--sessions`` LoRA sessions, each running one training step (so its LoRA deltas,
gradients and AdamW moments exist); then all but ``--active`` stay silent while the active ones keep stepping.
Reported: VmRSS after the base model is loaded and one step has run (the base), with every session open and just
stepped, and once the idle ones have been unloaded to their checkpoints.

Flood (goal: ≤ 2× alone). Tenant A steps (forward + backward, p50/p99 of the round trip) alone, then while a
hostile tenant B sends forwards on ``--flood-sessions`` sessions of its own without ever sending a backward (each
forward would hold an autograd graph until the pending TTL frees it; B gets 409 on a session whose forward is
pending and moves on). Steps use synthetic privatized representations shaped like an SST-2 batch (as
``tenants.py``).

    python benchmarks/service_limits.py [--sessions 256] [--active 6] [--idle 5] [--steps 30] [--flood-sessions 4]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time

import common  # noqa: F401  (environment first)
from common import machine, percentile, print_table, quiet, rss_bytes, vendor_service, write_result
from tenants import Tenant, batch

GIB = 2**30


def memory(url: str, pid: int, n: int, active: int, idle: float) -> dict:
    warm = Tenant(url)
    warm.train_step(0)
    warm.close()
    time.sleep(0.5)
    base = rss_bytes(pid)
    print(f"  base (model loaded, one step run): {base / GIB:.3f} GiB", flush=True)
    tenants, t0 = [], time.perf_counter()
    for i in range(n):
        t = Tenant(url)
        t.train_step(i + 1)
        tenants.append(t)
    opened = rss_bytes(pid)
    print(f"  {n} sessions open, one step each ({time.perf_counter() - t0:.0f} s): {opened / GIB:.3f} GiB", flush=True)
    deadline = time.monotonic() + 3 * idle + 5
    while time.monotonic() < deadline:  # the active ones keep stepping while the others fall idle
        for j, t in enumerate(tenants[:active]):
            t.train_step(10_000 + j)
        time.sleep(0.2)
    settled = rss_bytes(pid)
    print(f"  {n - active} idle (unloaded), {active} active: {settled / GIB:.3f} GiB, "
          f"+{(settled - base) / GIB:.3f} GiB over the base", flush=True)
    for t in tenants:
        t.close()
    return {"rss_base_gib": base / GIB, "rss_all_open_gib": opened / GIB, "rss_settled_gib": settled / GIB,
            "added_settled_gib": (settled - base) / GIB, "sessions": n, "active": active, "idle_unload_s": idle,
            "goal_added_gib": 1.0}


def flood(url: str, steps: int, flood_sessions: int) -> dict:
    from splitpriv.protocol import ForwardRequest
    from splitpriv.transport.http_client import HttpTransport

    a = Tenant(url)
    a.train_step(0)
    alone = [a.train_step(i + 1) for i in range(steps)]
    stop, counts = threading.Event(), {"sent": 0, "refused": 0}

    def attacker(k: int):
        from splitpriv.protocol import SessionConfig

        transport = HttpTransport(url, timeout=600)
        info = transport.open_session(SessionConfig(n_bottom_layers=0, total_steps=10**6,
                                                    tuning={"method": "lora", "r": 8}))
        step = 0
        while not stop.is_set():
            step += 1
            hidden, mask, _ = batch(100 + k)
            try:
                transport.forward(ForwardRequest(info.session_id, step, hidden, mask))
                counts["sent"] += 1
            except Exception:  # noqa: BLE001 - 409 (pending) / 429 / 503: the attacker keeps going
                counts["refused"] += 1
        transport.disconnect()

    threads = [threading.Thread(target=attacker, args=(k,), daemon=True) for k in range(flood_sessions)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    flooded = [a.train_step(1000 + i) for i in range(steps)]
    stop.set()
    for t in threads:
        t.join(timeout=60)
    a.close()
    out = {"alone_p50_s": percentile(alone, 50), "alone_p99_s": percentile(alone, 99),
           "flooded_p50_s": percentile(flooded, 50), "flooded_p99_s": percentile(flooded, 99),
           "attacker_forwards_accepted": counts["sent"], "attacker_forwards_refused": counts["refused"],
           "flood_sessions": flood_sessions, "steps": steps, "goal_ratio": 2.0}
    out["p50_ratio"] = out["flooded_p50_s"] / out["alone_p50_s"]
    out["p99_ratio"] = out["flooded_p99_s"] / out["alone_p99_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=256)
    ap.add_argument("--active", type=int, default=6)
    ap.add_argument("--idle", type=float, default=5.0, help="seconds before an idle session is unloaded")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--flood-sessions", type=int, default=4)
    a = ap.parse_args()
    quiet()
    with tempfile.TemporaryDirectory() as state:
        with vendor_service(state_dir=state, idle_unload=a.idle, pending_ttl=30.0) as (url, proc):
            mem = memory(url, proc.pid, a.sessions, a.active, a.idle)
        with vendor_service(pending_ttl=30.0) as (url, proc):
            lat = flood(url, a.steps, a.flood_sessions)
    print_table([["memory", f"+{mem['added_settled_gib']:.3f} GiB over {mem['rss_base_gib']:.3f}", "≤ +1 GiB"],
                 ["latency p50 flooded/alone", f"{lat['p50_ratio']:.2f}x", "≤ 2x"],
                 ["latency p99 flooded/alone", f"{lat['p99_ratio']:.2f}x", "≤ 2x"]], ["what", "measured", "goal"])
    write_result("service_limits", {"memory": mem, "flood": lat, "machine": machine()})


if __name__ == "__main__":
    main()
