"""Token inversion on SmolLM2-135M-Instruct (d = 576, embedding rows of norm ≈ 3.2, nearest other row ≈ 2.1 away):
nearest-neighbour and MAP at k = 0, the linear-map (ridge to the embedding rows) and learned inversions at k = 2
and 4, without noise and under d_chi at η suited to d = 576. The noise norm is d/η (58, 23, 12, 5.8 at η = 10, 25,
50, 100), but in d = 576 it is nearly orthogonal to the differences between rows: nearest-neighbour stays exact
until ‖n‖ ≈ √d·‖Δ‖/2 ≈ 25, i.e. η ≈ 25.

    python benchmarks/decoder_attacks.py [--limit 100] [--quick] [--resume [--rerun learned ...]]

Writes ``results/decoder_attacks.json`` (token recovery = the attack's success; empirical privacy = 1 − success).
"""

from __future__ import annotations

import argparse
import json
import time

import common
from common import machine, print_table, write_result

GRID = [("nn", 0, None), ("map", 0, None)] + [(a, 0, eta) for eta in (10, 25, 50, 100) for a in ("nn", "map")] + [
    (a, k, eta) for a in ("linear", "learned") for eta in (None, 50) for k in (2, 4)]
# the learned inverter trains on 2000 public sentences as before this attack started from the linear map: 1000 of
# WikiText-2 and 1000 of SST-2's public test split (its defaults, 2000 + all 1821, double the cost on shared cores)
OPTIONS = {"learned": {"n_public": 1000, "n_in_domain": 1000}}
HEADER = ["attack", "k", "eta", "token recovery", "content", "top-5", "empirical privacy"]


def row(r: dict) -> list:
    return [r["attack"], r["k"], r["eta"] or "none", r["token_recovery"], r.get("content_recovery"),
            r["top5_token_recovery"], r["empirical_privacy"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=100, help="SST-2 dev sentences attacked")
    parser.add_argument("--quick", action="store_true", help="k = 0 attacks only")
    parser.add_argument("--resume", action="store_true", help="keep the rows of results/decoder_attacks.json "
                        "measured with the same --limit and run only the missing ones")
    parser.add_argument("--rerun", action="append", default=[], metavar="ATTACK",
                        help="with --resume: measure this attack's rows again (repeatable)")
    args = parser.parse_args()
    common.quiet()
    from splitpriv import load_model
    from splitpriv.attacks.runner import run_attack

    pair = load_model("smollm2-135m-instruct", task="causal-lm")
    code_commit = machine()["git_commit"]  # the code this process runs (HEAD may move while it runs)
    results = []
    done = {}
    previous = common.RESULTS / "decoder_attacks.json"
    if args.resume and previous.is_file() and json.loads(previous.read_text()).get("limit") == args.limit:
        done = {(r["attack"], r["k"], r["eta"]): r for r in json.loads(previous.read_text())["results"]
                if r["attack"] not in args.rerun}
    for attack, k, eta in GRID:
        if args.quick and k:
            continue
        if (attack, k, eta) in done:
            results.append(done[(attack, k, eta)])
            continue
        noise = {"mechanism": "dchi", "eta": eta} if eta else {}
        started = time.perf_counter()
        r = run_attack(attack, model=pair, n_bottom_layers=k, limit=args.limit, progress=False, **noise,
                       **OPTIONS.get(attack, {}))
        keep = {key: v for key, v in r.items() if not isinstance(v, (list, dict))}
        results.append({"attack": attack, "k": k, "eta": eta, **keep, "wall_s": time.perf_counter() - started})
        results[-1]["git_commit"] = code_commit  # a resumed file mixes rows of several commits
        print_table([row(results[-1])], HEADER)
        write_result("decoder_attacks", {"model": "smollm2-135m-instruct", "dataset": "sst2 dev", "limit": args.limit,
                                         "results": results, "machine": machine()})  # a stopped run keeps its rows
    print_table([row(r) for r in results], HEADER)


if __name__ == "__main__":
    main()
