"""Training throughput: centralized (no split) vs split in process vs split over HTTP on loopback.

The same short run (batch 32, max_length 64, k = 0, LoRA, no noise, the same SST-2 sentences and seeds) is trained
three ways, for a frozen and for a trained bottom:

* ``centralized``: :class:`splitpriv.runs.centralized.CentralizedTrainer`, one autograd graph, no wire;
* ``inprocess``: customer and :class:`Vendor` in this process (``InProcessTransport``: every message is still
  encoded and decoded);
* ``http``: the customer here, the vendor service in a separate process on a loopback port (``HttpTransport``).

After one unmeasured warm-up run of each, the modes alternate ``--repeats`` times; samples/s is reported as the
best run (on a shared machine the least disturbed one) and the median, and CPU seconds per step summed over every
process involved. The ratios compare best runs.

    python benchmarks/training_throughput.py [--quick] [--steps 20] [--repeats 3] [--wire-dtype float32]
"""

from __future__ import annotations

import argparse
import statistics

import common  # noqa: F401  (environment first)
from common import cpu_seconds, load_texts, machine, print_table, quiet, vendor_service, write_result

MODES = ("centralized", "inprocess", "http")


def _configs(args, bottom: str):
    from splitpriv.config import PrivacyConfig, TrainConfig
    from splitpriv.contract import SessionConfig

    session = SessionConfig(n_bottom_layers=args.k, total_steps=args.steps, tuning={"method": "lora"},
                            train_bottom=bottom == "trained", lr=2e-3)
    train = TrainConfig(batch_size=args.batch_size, max_length=args.max_length, bottom=bottom, seed=0, noise_seed=0,
                        wire_dtype=args.wire_dtype)
    return session, PrivacyConfig(mechanism="none"), train


def run_once(mode: str, bottom: str, args, texts, labels, vendor, url, server_pid) -> dict:
    from splitpriv.runs.centralized import CentralizedTrainer
    from splitpriv.roles.customer import Customer
    from splitpriv.transport import InProcessTransport
    from splitpriv.transport.http_client import HttpTransport

    session, privacy, train = _configs(args, bottom)
    pids = [None]
    if mode == "centralized":
        runner = CentralizedTrainer(session, train)
        transport = None
    else:
        transport = InProcessTransport(vendor) if mode == "inprocess" else HttpTransport(url)
        if mode == "http":
            pids.append(server_pid)
        runner = Customer.open(transport, session, privacy, train)
        sent0 = transport.bytes_sent
    cpu0 = sum(cpu_seconds(p) for p in pids)
    result = runner.fit(texts, labels, progress=False)
    cpu1 = sum(cpu_seconds(p) for p in pids)
    steps = len(result["losses"])
    out = {"samples_per_s": result["train_samples_per_s"], "cpu_s_per_step": (cpu1 - cpu0) / steps,
           "losses": result["losses"]}
    if transport is not None:
        out["bytes_sent_per_step"] = (transport.bytes_sent - sent0) / steps
        transport.close()
        if mode == "http":
            transport.disconnect()
    return out


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 steps, 2 repeats")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default 20; quick 3)")
    parser.add_argument("--repeats", type=int, default=None, help="measured runs per mode (default 3; quick 2)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--k", type=int, default=0, help="bottom layers held by the customer")
    parser.add_argument("--wire-dtype", default="float32")
    parser.add_argument("--bottoms", default="frozen,trained")
    args = parser.parse_args()
    args.steps = args.steps or (3 if args.quick else 20)
    args.repeats = args.repeats or (2 if args.quick else 3)
    quiet()
    from splitpriv.roles.vendor import Vendor

    texts, labels = load_texts(args.steps * args.batch_size)
    bottoms = args.bottoms.split(",")
    m = machine()
    results: dict = {b: {mode: [] for mode in MODES} for b in bottoms}
    vendor = Vendor()
    with vendor_service() as (url, proc):
        for bottom in bottoms:
            warm = argparse.Namespace(**{**vars(args), "steps": 2})
            for mode in MODES:  # warm-up: first-use costs (allocator, lazy imports, the service's base model)
                run_once(mode, bottom, warm, texts[: 2 * args.batch_size], labels[: 2 * args.batch_size], vendor, url,
                         proc.pid)
            for r in range(args.repeats):
                order = MODES if r % 2 == 0 else MODES[::-1]
                for mode in order:
                    results[bottom][mode].append(run_once(mode, bottom, args, texts, labels, vendor, url, proc.pid))
                    print(f"  {bottom:7s} {mode:11s} run {r + 1}: "
                          f"{results[bottom][mode][-1]['samples_per_s']:6.2f} samples/s", flush=True)

    out = {"machine": m, "quick": args.quick,
           "setting": {"steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length, "k": args.k,
                       "tuning": "lora", "noise": "none", "wire_dtype": args.wire_dtype, "repeats": args.repeats,
                       "data": "SST-2 train"},
           "runs": results, "ratios": {}}
    print(f"\ntraining throughput: {args.steps} steps, batch {args.batch_size}, max_length {args.max_length}, "
          f"k={args.k}, LoRA, no noise, {args.wire_dtype} wire; best of {args.repeats} alternating runs")
    rows = []
    for bottom in bottoms:
        best = {mode: max(r["samples_per_s"] for r in results[bottom][mode]) for mode in MODES}
        med = {mode: statistics.median(r["samples_per_s"] for r in results[bottom][mode]) for mode in MODES}
        cpu = {mode: statistics.median(r["cpu_s_per_step"] for r in results[bottom][mode]) for mode in MODES}
        for mode in MODES:
            sent = results[bottom][mode][0].get("bytes_sent_per_step")
            rows.append([bottom, mode, best[mode], med[mode], cpu[mode],
                         f"{sent / 1e3:.0f}" if sent is not None else "-"])
        same = all(a["losses"] == b["losses"] for a, b in zip(results[bottom]["inprocess"], results[bottom]["http"]))
        close = all(max(abs(x - y) for x, y in zip(a["losses"], b["losses"])) < 1e-4
                    for a, b in zip(results[bottom]["centralized"], results[bottom]["inprocess"]))
        out["ratios"].update({
            f"training.inprocess_vs_centralized_ratio.{bottom}": best["inprocess"] / best["centralized"],
            f"training.http_vs_inprocess_ratio.{bottom}": best["http"] / best["inprocess"],
            f"training.http_vs_inprocess_median_ratio.{bottom}": med["http"] / med["inprocess"],
            f"training.http_vs_inprocess_cpu_ratio.{bottom}": cpu["inprocess"] / cpu["http"],
        })
        out[f"identical_losses_http_vs_inprocess.{bottom}"] = same
        out[f"split_losses_match_centralized.{bottom}"] = close
    print_table(rows, ["bottom", "mode", "best samples/s", "median", "CPU s/step (all procs)", "KB sent/step"])
    for name, value in out["ratios"].items():
        print(f"  {name} = {value:.3f}")
    for bottom in bottoms:
        print(f"  {bottom}: identical losses over HTTP and in process: "
              f"{out[f'identical_losses_http_vs_inprocess.{bottom}']}; split = centralized (1e-4): "
              f"{out[f'split_losses_match_centralized.{bottom}']}")
    write_result("training_throughput", out)
    return out


if __name__ == "__main__":
    main()
