"""Private inference throughput: texts/s with the vendor in this process vs over HTTP on loopback.

``Customer.predict_logits`` on SST-2 dev sentences (bottom → d_chi noise → vendor top → logits at home; k = 0,
LoRA, eval batch 128, max_length 64), the vendor either in this process (``InProcessTransport``) or a vendor
service in a separate process (``HttpTransport``), alternating ``--repeats`` times after a warm-up; best and
median texts/s, for a float32 and a float16 wire.

    python benchmarks/inference_throughput.py [--quick] [--texts 872] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import common  # noqa: F401  (environment first)
from common import cpu_seconds, load_dev, machine, print_table, quiet, vendor_service, write_result


def open_customer(transport, wire_dtype: str):
    from splitpriv.config import PrivacyConfig, TrainConfig
    from splitpriv.contract import SessionConfig
    from splitpriv.roles.customer import Customer

    return Customer.open(transport, SessionConfig(n_bottom_layers=0, total_steps=10),
                         PrivacyConfig(mechanism="dchi", eta=20.0),
                         TrainConfig(max_length=64, eval_batch_size=128, noise_seed=0, wire_dtype=wire_dtype))


def timed_predict(customer, texts, pids) -> dict:
    cpu0 = sum(cpu_seconds(p) for p in pids)
    sent0 = customer.transport.bytes_sent
    start = time.perf_counter()
    customer.predict_logits(texts)
    seconds = time.perf_counter() - start
    return {"texts_per_s": len(texts) / seconds, "cpu_s_per_text": (sum(cpu_seconds(p) for p in pids) - cpu0) / len(texts),
            "bytes_sent_per_text": (customer.transport.bytes_sent - sent0) / len(texts)}


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="256 texts, 2 repeats")
    parser.add_argument("--texts", type=int, default=None, help="dev sentences per run (default all 872; quick 256)")
    parser.add_argument("--repeats", type=int, default=None, help="default 3; quick 2")
    parser.add_argument("--wire-dtypes", default="float32,float16")
    args = parser.parse_args()
    n = args.texts or (256 if args.quick else None)
    repeats = args.repeats or (2 if args.quick else 3)
    quiet()
    from splitpriv.roles.vendor import Vendor
    from splitpriv.transport import InProcessTransport
    from splitpriv.transport.http_client import HttpTransport

    texts, _ = load_dev(n)
    m = machine()
    dtypes = args.wire_dtypes.split(",")
    runs = {dt: {"local": [], "http": []} for dt in dtypes}
    vendor = Vendor()
    with vendor_service() as (url, proc):
        customers = {}
        for dt in dtypes:
            customers[dt] = {"local": open_customer(InProcessTransport(vendor), dt),
                             "http": open_customer(HttpTransport(url), dt)}
            for c in customers[dt].values():  # warm-up
                c.predict_logits(texts[:128])
        for r in range(repeats):
            for dt in dtypes:
                for mode in (("local", "http") if r % 2 == 0 else ("http", "local")):
                    pids = [None] + ([proc.pid] if mode == "http" else [])
                    runs[dt][mode].append(timed_predict(customers[dt][mode], texts, pids))
                    print(f"  {dt:8s} {mode:5s} run {r + 1}: {runs[dt][mode][-1]['texts_per_s']:7.1f} texts/s", flush=True)
        for per in customers.values():
            for mode, c in per.items():
                c.transport.close()
                if mode == "http":
                    c.transport.disconnect()

    out = {"machine": m, "quick": args.quick,
           "setting": {"texts": len(texts), "eval_batch_size": 128, "max_length": 64, "k": 0, "noise": "dchi eta=20",
                       "repeats": repeats, "data": "SST-2 dev"},
           "runs": runs, "ratios": {}}
    rows = []
    for dt in dtypes:
        best = {mode: max(r["texts_per_s"] for r in runs[dt][mode]) for mode in ("local", "http")}
        med = {mode: statistics.median(r["texts_per_s"] for r in runs[dt][mode]) for mode in ("local", "http")}
        for mode in ("local", "http"):
            rows.append([dt, mode, best[mode], med[mode], 1e3 * statistics.median(r["cpu_s_per_text"] for r in runs[dt][mode]),
                         f"{runs[dt][mode][0]['bytes_sent_per_text'] / 1e3:.1f}"])
        suffix = "" if dt == "float32" else f"_{dt}"
        out["ratios"][f"inference.http_vs_local_ratio{suffix}"] = best["http"] / best["local"]
        out["ratios"][f"inference.http_vs_local_median_ratio{suffix}"] = med["http"] / med["local"]
    print(f"\nprivate inference: {len(texts)} SST-2 dev texts, eval batch 128, k=0, d_chi eta=20; best of {repeats}")
    print_table(rows, ["wire", "mode", "best texts/s", "median", "CPU ms/text (all procs)", "KB sent/text"])
    for name, value in out["ratios"].items():
        print(f"  {name} = {value:.3f}")
    write_result("inference_throughput", out)
    return out


if __name__ == "__main__":
    main()
