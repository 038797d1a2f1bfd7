"""Run every benchmark (each in its own process) and write ``results/summary.json``: every ratio under a plain
name, the goals and whether each is met, how long each benchmark took, and the machine.

    python benchmarks/run_all.py [--quick] [--only training_throughput,wire_bytes] [--summary-only]

The summary takes every benchmark's latest ``results/<name>.json``, whether it was run now or before (``--only``
refreshes some; ``--summary-only`` runs none); ``benchmarks.<name>`` says in which mode and at which commit (where
the result records it) each was measured.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import common
from common import RESULTS, machine, write_result

BENCHMARKS = ("wire_bytes", "training_throughput", "inference_throughput", "tenants", "scaling", "attack_cost")

# name: (comparison, threshold, what the number is)
GOALS = {
    "training.http_vs_inprocess_ratio.frozen": (">=", 0.9, "split training samples/s over HTTP / in process, frozen bottom"),
    "training.http_vs_inprocess_ratio.trained": (">=", 0.9, "the same, trained bottom"),
    "inference.http_vs_local_ratio": (">=", 0.8, "private inference texts/s over HTTP / in process (float32 wire)"),
    "wire.bytes_vs_floor_ratio": ("<=", 1.1, "bytes sent per training sample (float16 wire, real tokens) / "
                                  "(real tokens x d x 2 bytes)"),
    "tenants.rss_added_50_sessions_gib": ("<=", 1.0, "vendor RSS with 50 LoRA sessions over the base model, GiB "
                                          "(service as shipped)"),
    "attack.nn_ivf_tokens_per_s": (">=", 100_000, "nearest-neighbour inversion vectors/s, IVF search (default index), "
                                   "noiseless SST-2 dev; see attack.nn_ivf_agreement_* for what it gives up"),
}


def met(value, comparison: str, threshold: float) -> bool | None:
    if value is None:
        return None
    return value >= threshold if comparison == ">=" else value <= threshold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every benchmark in its --quick mode")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    parser.add_argument("--summary-only", action="store_true", help="run nothing; rebuild the summary from results/")
    args = parser.parse_args()
    names = [] if args.summary_only else (args.only.split(",") if args.only else list(BENCHMARKS))
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; choose from {BENCHMARKS}")

    runs, metrics = {}, {}
    started = time.perf_counter()
    for name in names:
        cmd = [sys.executable, str(common.HERE / f"{name}.py")] + (["--quick"] if args.quick else [])
        print(f"\n=== {name} {'(quick)' if args.quick else ''} ===", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=common.ROOT)
        runs[name] = {"returncode": proc.returncode, "seconds": round(time.perf_counter() - t0, 1), "run_now": True}
        if proc.returncode != 0:
            print(f"!!! {name} failed with exit code {proc.returncode}", flush=True)
    for name in BENCHMARKS:
        path = RESULTS / f"{name}.json"
        if not path.is_file() or runs.get(name, {}).get("returncode", 0) != 0:
            continue
        data = json.loads(path.read_text())
        metrics.update(data.get("ratios", {}))
        runs.setdefault(name, {"run_now": False})
        measured = data.get("machine") if isinstance(data.get("machine"), dict) else {}
        runs[name].update(result=str(path.relative_to(common.ROOT)), quick=data.get("quick"),
                          git_commit=measured.get("git_commit"))

    goals = {}
    for name, (comparison, threshold, what) in GOALS.items():
        value = metrics.get(name)
        goals[name] = {"value": value, "goal": f"{comparison} {threshold}", "met": met(value, comparison, threshold),
                       "what": what}
    summary = {"machine": machine(), "quick": args.quick, "total_seconds": round(time.perf_counter() - started, 1),
               "goals": goals, "metrics": dict(sorted(metrics.items())), "benchmarks": runs}
    print("\n=== summary ===")
    for name, g in goals.items():
        value = "missing" if g["value"] is None else f"{g['value']:.4g}"
        mark = {True: "met", False: "NOT MET", None: "not measured"}[g["met"]]
        print(f"  {name:48s} {value:>9s}  goal {g['goal']:7s}  {mark}")
    others = {k: v for k, v in metrics.items() if k not in goals}
    for name, value in sorted(others.items()):
        print(f"  {name:48s} {value:9.4g}")
    write_result("summary", summary)
    failed = [n for n, r in runs.items() if r.get("returncode", 0) != 0]
    if failed:
        print(f"failed benchmarks: {failed}")
        sys.exit(1)


if __name__ == "__main__":
    main()
