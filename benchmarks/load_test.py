"""Customers against a busy vendor (issue 31): N customers open a session, train a few steps and predict, all at
once, against ``splitpriv serve`` (and, with ``--ray``, ``splitpriv serve --ray --replicas 2``) on a machine
oversubscribed by one CPU-bound busy process per core beside them.

Per setting (server, N): customers that failed (the goal is 0), step latency (forward + backward) p50/p99 against
the same customers run one at a time on the same busy machine, throughput (steps/s, all customers together),
vendor memory (RSS peak, summed over replicas), 5xx answers the customers saw (retried ones included), opens that
took more than one attempt, and whether every customer's results (its forward outputs and final predict) equal its
solo run: seeds are fixed (the session's seed, and customer i's batches drawn from seed i), so they must, up to the
float noise of predict batching across tenants (``max_abs_diff``; ``bitwise``: how many were identical).

Each customer is an :class:`~splitpriv.transport.http_client.HttpTransport` with its default retry policy (backoff
up to 10 s apart, 2 minutes of patience) and timeout (or ``--timeout``); steps send synthetic privatized
representations (batch 8 x 32 positions, 40% real tokens, float16 on the wire; k = 0, LoRA r = 8). The vendor (each
replica) loads its model before it reports ready (:mod:`splitpriv.roles.vendor.warmup`); the first open, the call
that used to give up first while a replica loaded its model under the load, then pays for a session only.

Bounded: loopback only, at most 16 customers and ``--steps`` (<= 20) steps each; the busy processes end by
themselves after ``--budget`` seconds (and are killed at the end), settings that would start past the budget are
skipped, and a customer still running at the budget counts as failed.

    python benchmarks/load_test.py [--quick] [--customers 4,8,16] [--ray] [--steps 3] [--timeout S] [--budget 1200]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

import common  # noqa: F401  (environment first)
from common import (machine, percentile, print_table, quiet, rss_bytes, synthetic_batch, vendor_service,
                    write_result)

GIB = 2**30
SESSION = {"n_bottom_layers": 0, "total_steps": 100, "tuning": {"method": "lora", "r": 8}, "seed": 0}


def busy(seconds: float) -> list[subprocess.Popen]:
    """One CPU-bound process per core, each ending by itself after ``seconds``."""
    code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(os.cpu_count() or 1)]


def batch(seed: int):
    return synthetic_batch(seed, size=8, length=32)


class Customer:
    """Customer ``index``: its own session and connection; counts the 5xx answers it sees."""

    def __init__(self, url: str, index: int, timeout: float | None):
        from splitpriv.transport.http_client import HttpTransport

        self.index, self.server_errors = index, 0
        self.transport = HttpTransport(url, **({"timeout": timeout} if timeout else {}))
        self.transport._client.event_hooks["response"].append(self._seen)

    def _seen(self, response) -> None:
        if response.status_code >= 500:
            self.server_errors += 1

    def run(self, steps: int) -> dict:
        from splitpriv.contract import BackwardRequest, ForwardRequest, PredictRequest, SessionConfig

        t = self.transport
        start = time.perf_counter()
        info = t.open_session(SessionConfig.from_dict(dict(SESSION)))
        out = {"open_s": time.perf_counter() - start, "open_attempts": t.attempts, "step_s": [], "outputs": []}
        for step in range(1, steps + 1):
            hidden, mask, grad = batch(1000 * self.index + step)
            begin = time.perf_counter()
            answer = t.forward(ForwardRequest(info.session_id, step, hidden, mask))
            t.backward(BackwardRequest(info.session_id, step, grad))
            out["step_s"].append(time.perf_counter() - begin)
            out["outputs"].append(answer.outputs)
        hidden, mask, _ = batch(1000 * self.index)
        out["outputs"].append(t.predict(PredictRequest(info.session_id, hidden, mask)).outputs)
        t.close()
        t.disconnect()
        out["server_errors"] = self.server_errors
        return out


def same(a: list, b: list) -> tuple[float, bool]:
    """The largest absolute difference between two runs' outputs, and whether they are bitwise equal."""
    import torch

    diff = max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b))
    return diff, all(torch.equal(x, y) for x, y in zip(a, b))


def concurrently(url: str, n: int, steps: int, timeout: float, until: float, pids) -> dict:
    """``n`` customers released at once; RSS of the vendor ``pids()`` sampled while they run."""
    results: list[dict | None] = [None] * n
    errors: dict[int, str] = {}
    barrier = threading.Barrier(n)

    def work(i: int) -> None:
        try:
            customer = Customer(url, i, timeout)
            barrier.wait()
            results[i] = customer.run(steps)
        except BaseException as exc:  # noqa: BLE001 - a failed customer, reported
            errors[i] = f"{type(exc).__name__}: {exc}"[:300]
            print(f"  customer {i} of {n} failed: {errors[i]}", flush=True)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(n)]
    peak, start = vendor_rss(pids()), time.perf_counter()
    for th in threads:
        th.start()
    while any(th.is_alive() for th in threads) and time.monotonic() < until:
        peak = max(peak, vendor_rss(pids()))
        time.sleep(0.25)
    wall = time.perf_counter() - start
    for i, th in enumerate(threads):
        if th.is_alive():
            errors.setdefault(i, "still running when the load test's budget ran out")
    return {"results": results, "errors": errors, "wall_s": wall, "rss_peak_gib": peak / GIB}


def vendor_rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += rss_bytes(pid)
        except (OSError, RuntimeError):
            pass
    return total


def setting(url: str, pids, counts: list[int], steps: int, timeout: float, until: float) -> dict:
    """Solo runs of customers 0..max(counts)-1 one at a time (the reference), then each N at once."""
    solo, failed = {}, {}
    for i in range(max(counts)):
        if time.monotonic() > until:
            break
        try:
            solo[i] = Customer(url, i, timeout).run(steps)
        except Exception as exc:  # noqa: BLE001 - a failed customer, reported
            failed[i] = f"{type(exc).__name__}: {exc}"[:300]
            print(f"  solo customer {i} failed: {failed[i]}", flush=True)
    alone = [x for r in solo.values() for x in r["step_s"]]
    out = {"solo": {"customers": len(solo), "failed": len(failed), "errors": failed,
                    "p50_s": percentile(alone, 50), "p99_s": percentile(alone, 99),
                    "steps_per_s": len(alone) / sum(alone) if alone else None,
                    "first_open_s": solo[0]["open_s"] if 0 in solo else None}}
    for n in counts:
        if time.monotonic() > until:
            out[str(n)] = {"skipped": "past the load test's budget"}
            continue
        run = concurrently(url, n, steps, timeout, until, pids)
        done = {i: r for i, r in enumerate(run["results"]) if r is not None}
        flat = [x for r in done.values() for x in r["step_s"]]
        diffs = {i: same(r["outputs"], solo[i]["outputs"]) for i, r in done.items() if i in solo}
        out[str(n)] = {
            "customers": n, "failed": len(run["errors"]), "errors": run["errors"],
            "p50_s": percentile(flat, 50), "p99_s": percentile(flat, 99),
            "p50_vs_solo": percentile(flat, 50) / out["solo"]["p50_s"] if alone and flat else None,
            "p99_vs_solo": percentile(flat, 99) / out["solo"]["p99_s"] if alone and flat else None,
            "steps_per_s": len(flat) / run["wall_s"], "wall_s": run["wall_s"],
            "rss_peak_gib": run["rss_peak_gib"],
            "server_errors_5xx": sum(r["server_errors"] for r in done.values()),
            "opens_retried": sum(r["open_attempts"] > 1 for r in done.values()),
            "open_s_max": max((r["open_s"] for r in done.values()), default=None),
            "max_abs_diff_vs_solo": max((d for d, _ in diffs.values()), default=None),
            "bitwise_equal_to_solo": sum(b for _, b in diffs.values()), "compared": len(diffs),
        }
        print(f"  {n} customers: {out[str(n)]['failed']} failed, p50 {out[str(n)]['p50_s']:.3f} s, "
              f"{out[str(n)]['steps_per_s']:.2f} steps/s", flush=True)
    return out


def on_ray(replicas: int = 2):
    """``splitpriv serve --ray --replicas 2`` as benchmarks/ray_serve.py starts it; (url, stop, replica pids)."""
    from ray_serve import _replicas
    from ray_serve import on_ray as start

    url, stop = start(replicas)
    pids = sorted(int(r.rsplit(":", 1)[1]) for r in _replicas(url))
    return url, stop, lambda: pids


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 4 only")
    ap.add_argument("--customers", default="4,8,16", help="comma-separated N, each at most 16")
    ap.add_argument("--ray", action="store_true", help="also against serve --ray --replicas 2")
    ap.add_argument("--steps", type=int, default=3, help="training steps per customer (at most 20)")
    ap.add_argument("--timeout", type=float, default=None, help="each customer's per-request timeout, s (default: "
                    "the HTTP transport's)")
    ap.add_argument("--budget", type=float, default=1200.0, help="seconds the whole load test may take")
    a = ap.parse_args()
    counts = [4] if a.quick else sorted({int(x) for x in a.customers.split(",")})
    if not all(1 <= n <= 16 for n in counts) or not 1 <= a.steps <= 20:
        ap.error("customers must be between 1 and 16 and steps between 1 and 20")
    quiet()
    until = time.monotonic() + a.budget
    out = {"quick": a.quick, "machine": machine(), "session": SESSION, "steps": a.steps, "timeout_s": a.timeout or 50.0,
           "batch": {"size": 8, "positions": 32, "real_share": 0.4, "wire_dtype": "float16"},
           "busy_processes": os.cpu_count(), "settings": {}}
    servers = [("serve", None)] + ([("serve --ray --replicas 2", "ray")] if a.ray else [])
    for name, kind in servers:
        if time.monotonic() > until:
            out["settings"][name] = {"skipped": "past the load test's budget"}
            continue
        print(f"{name}:", flush=True)
        hogs = []
        try:
            if kind == "ray":
                url, stop, pids = on_ray()
                try:
                    hogs = busy(until - time.monotonic())
                    out["settings"][name] = setting(url, pids, counts, a.steps, a.timeout, until)
                finally:
                    stop()
            else:
                with vendor_service() as (url, proc):
                    hogs = busy(until - time.monotonic())
                    out["settings"][name] = setting(url, lambda: [proc.pid], counts, a.steps, a.timeout, until)
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
        write_result("load_test", out)
    report(out, counts)
    write_result("load_test", out)
    return out


def report(out: dict, counts: list[int]) -> None:
    rows = []
    for name, s in out["settings"].items():
        if "solo" not in s:
            continue
        solo = s["solo"]
        rows.append([name, "1 (solo)", solo["failed"], solo["p50_s"], solo["p99_s"], solo["steps_per_s"], "-", "-", "-",
                     "-"])
        for n in counts:
            r = s.get(str(n), {})
            if "customers" in r:
                rows.append([name, n, r["failed"], r["p50_s"], r["p99_s"], r["steps_per_s"], r["rss_peak_gib"],
                             r["server_errors_5xx"], r["opens_retried"],
                             f"{r['bitwise_equal_to_solo']}/{r['compared']} (max diff {r['max_abs_diff_vs_solo']})"])
    print(f"\n{out['busy_processes']} busy processes beside the vendor; {out['steps']} steps + 1 predict per customer:")
    print_table(rows, ["server", "customers", "failed", "step p50 s", "step p99 s", "steps/s", "RSS GiB", "5xx",
                       "opens retried", "equal to solo"])


if __name__ == "__main__":
    main()
