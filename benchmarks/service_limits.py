"""A hardened vendor under load: memory with many idle sessions, and one tenant's latency while another floods.

Memory (goal: base + ≤ 1 GiB). A vendor service (separate process, a state dir, idle sessions unloaded after
``--idle`` seconds) opens ``--sessions`` LoRA sessions, each running one training step (so its LoRA deltas,
gradients and AdamW moments exist); then all but ``--active`` stay silent while the active ones keep stepping.
Reported: VmRSS after the base model is loaded and one step has run (the base), with every session open and just
stepped, and once the idle ones have been unloaded to their checkpoints.

Flood (goal: ≤ 2× alone). Tenant A steps (forward + backward, p50/p99 of the round trip) alone, then while a
hostile tenant B, a process of its own, floods forwards on ``--flood-sessions`` sessions without ever sending a
backward: step 1 once on each (accepted; its graph is held until the pending TTL), then for ever step 2 (refused
with 409: step 1 is pending) and step 1 again (a "retry", answered from the cache), bodies encoded once and sent
with plain httpx, no backoff. The vendor refuses or answers both from the ``X-Splitpriv-Step`` header without
reading the bodies. On this 2-core machine B's own CPU (building and sending 1.5 MB requests as fast as it can)
competes with the vendor and with A; a real B runs elsewhere. So the flood runs twice: B at nice 19 (standing in
for a client on another machine: the figure is what the flood costs the vendor) and at nice 0 (B's CPU taken from
the same 2 cores as well). Steps use synthetic privatized representations shaped like an SST-2 batch (as
``tenants.py``).

    python benchmarks/service_limits.py [--sessions 256] [--active 6] [--idle 5] [--steps 30] [--flood-sessions 4]
                                        [--nice 19,0] [--skip-memory]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import common  # noqa: F401  (environment first)
from common import (
    RESULTS,
    machine,
    percentile,
    print_table,
    quiet,
    rss_bytes,
    vendor_service,
    write_result,
)
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


def _attacker(url: str, sessions: int, nice: int, stop, counts) -> None:
    """Tenant B, a process of its own: opens ``sessions`` sessions, then sends each of them forwards for ever
    (bodies encoded once, plain httpx, no retries, no backwards) until ``stop``; ``counts`` gets the statuses."""
    import os

    import httpx

    from splitpriv.contract import STEP_HEADER, ForwardRequest, SessionConfig
    from splitpriv.transport.http_client import HttpTransport

    os.nice(nice)
    opened = []
    for k in range(sessions):
        transport = HttpTransport(url, timeout=600)
        info = transport.open_session(SessionConfig(n_bottom_layers=0, total_steps=10**6,
                                                    tuning={"method": "lora", "r": 8}))
        hidden, mask, _ = batch(100 + k)
        bodies = [ForwardRequest(info.session_id, step, hidden, mask).to_bytes() for step in (1, 2)]
        opened.append((info, bodies))
    seen: dict[int, int] = {}
    with httpx.Client(base_url=url, timeout=600) as client:
        def send(info, body: bytes, step: int) -> None:
            status = client.post(f"/v1/sessions/{info.session_id}/forward", content=body,
                                 headers={"Authorization": f"Bearer {info.token}", STEP_HEADER: str(step),
                                          "Content-Type": "application/octet-stream"}).status_code
            seen[status] = seen.get(status, 0) + 1

        for info, bodies in opened:  # step 1 once: accepted, its graph held until the pending TTL
            send(info, bodies[0], 1)
        while not stop.is_set():  # then the next step (refused: step 1 pending) and step 1 again (a "retry")
            for info, bodies in opened:
                send(info, bodies[1], 2)
                send(info, bodies[0], 1)
    counts.update({str(k): v for k, v in seen.items()})


def flood(url: str, steps: int, flood_sessions: int, nice: int) -> dict:
    """Tenant A's step latency alone, then while tenant B (:func:`_attacker`, at CPU priority ``nice``) floods."""
    import multiprocessing as mp

    a = Tenant(url)
    a.train_step(0)
    alone = [a.train_step(i + 1) for i in range(steps)]
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        stop, counts = manager.Event(), manager.dict()
        attacker = ctx.Process(target=_attacker, args=(url, flood_sessions, nice, stop, counts), daemon=True)
        attacker.start()
        time.sleep(8.0)  # B's process starts, opens its sessions and gets its first forwards pending
        flooded = [a.train_step(1000 + i) for i in range(steps)]
        stop.set()
        attacker.join(timeout=120)
        statuses = dict(counts)
    a.close()
    out = {"alone_p50_s": percentile(alone, 50), "alone_p99_s": percentile(alone, 99),
           "flooded_p50_s": percentile(flooded, 50), "flooded_p99_s": percentile(flooded, 99),
           "attacker_statuses": statuses, "attacker_nice": nice, "flood_sessions": flood_sessions, "steps": steps,
           "goal_ratio": 2.0}
    out["p50_ratio"] = out["flooded_p50_s"] / out["alone_p50_s"]
    out["p99_ratio"] = out["flooded_p99_s"] / out["alone_p99_s"]
    print(f"  flood (attacker nice {nice}): B's forwards by status {statuses}; A's step p50 "
          f"{out['flooded_p50_s']:.3f} s vs {out['alone_p50_s']:.3f} s alone ({out['p50_ratio']:.2f}x), p99 "
          f"{out['p99_ratio']:.2f}x", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=256)
    ap.add_argument("--active", type=int, default=6)
    ap.add_argument("--idle", type=float, default=5.0, help="seconds before an idle session is unloaded")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--flood-sessions", type=int, default=4)
    ap.add_argument("--nice", default="19,0", help="the attacker's CPU priorities, one flood run each")
    ap.add_argument("--skip-memory", action="store_true", help="only the flood (keeps the stored memory figure)")
    a = ap.parse_args()
    quiet()
    previous = RESULTS / "service_limits.json"
    mem = json.loads(previous.read_text())["memory"] if a.skip_memory and previous.is_file() else None
    with tempfile.TemporaryDirectory() as state:
        if mem is None:
            with vendor_service(state_dir=state, idle_unload=a.idle, pending_ttl=30.0) as (url, proc):
                mem = memory(url, proc.pid, a.sessions, a.active, a.idle)
    floods = {}
    for nice in (int(n) for n in a.nice.split(",")):
        with vendor_service(pending_ttl=30.0) as (url, _):
            floods[str(nice)] = flood(url, a.steps, a.flood_sessions, nice)
    rows = [["memory", f"+{mem['added_settled_gib']:.3f} GiB over {mem['rss_base_gib']:.3f}", "≤ +1 GiB"]]
    for nice, lat in floods.items():
        rows += [[f"latency p50 flooded/alone (attacker nice {nice})", f"{lat['p50_ratio']:.2f}x", "≤ 2x"],
                 [f"latency p99 flooded/alone (attacker nice {nice})", f"{lat['p99_ratio']:.2f}x", "≤ 2x"]]
    print_table(rows, ["what", "measured", "goal"])
    write_result("service_limits", {"memory": mem, "flood": floods.get("19") or next(iter(floods.values())),
                                    "floods": floods, "machine": machine()})


if __name__ == "__main__":
    main()
