"""Cost of the inversion attacks on MiniLM and real SST-2 dev: tokens per second, seconds per 1k tokens.

    python benchmarks/attack_cost.py [--quick]

Prints each figure and, for nearest neighbour, its ratio to the goal of 100k tokens/s on 2 cores; writes
``benchmarks/results/attack_cost.json``.

* NN exact: brute force over all V = 30522 candidates; ~23 MFLOP per vector, so it is bounded by the machine's
  matrix-multiply throughput (100k tokens/s would need ~2.3 TFLOP/s).
* NN ivf: the approximate inverted-file search (k-means clusters of candidates, ``n_probe`` of them scored
  exactly); reported with its agreement with exact search and both recoveries, on noiseless and noisy input.
* MAP: brute force plus likelihood and prior (d_chi η = 10).
* Optimization (k = 2) and learned (k = 2) attacks: seconds per 1k inverted tokens, and the learned inverter's
  training time.

``OMP_WAIT_POLICY=PASSIVE`` is set (unless already set) before torch loads: on cores shared with other busy
processes, OpenMP's active waiting otherwise slows small tensor operations by an order of magnitude.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

GOAL_NN_TOKENS_PER_S = 100_000
# (clusters, probes) of the inverted-file index compared beside NearestNeighbour's default
IVF_SETTINGS = [(1024, 8), (256, 4), (256, 8), (128, 2), (128, 4), (64, 2)]
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "attack_cost.json"


def _data_dir():
    if "SPLITPRIV_DATA_DIR" not in os.environ:
        shared = ROOT.parent / "shared" / "data"
        if shared.is_dir():
            os.environ["SPLITPRIV_DATA_DIR"] = str(shared)


def _timed(fn, repeat=1):
    best = float("inf")
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="cost of the inversion attacks")
    ap.add_argument("--quick", action="store_true", help="small slices (a smoke run, ~1-2 minutes)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    _data_dir()

    from splitpriv.attacks import AttackerKnowledge, LearnedInversion, MAPInversion, NearestNeighbour
    from splitpriv.attacks import OptimizationInversion, observe
    from splitpriv.attacks.base import recovery_metrics
    from splitpriv.attacks.nearest import IVFIndex
    from splitpriv.candidates import target_positions
    from splitpriv.data import load_dataset, load_public_text
    from splitpriv.models import load_model
    from splitpriv.privacy import DChi, Identity
    from splitpriv.parts import split_model

    quick = args.quick
    default = NearestNeighbour(search="ivf")
    default_ivf = (default.n_clusters, default.n_probe)
    ivf_settings = [default_ivf] + [s for s in IVF_SETTINGS if s != default_ivf]
    model, tok = load_model()
    dev = load_dataset("sst2", "dev", limit=200 if quick else None, seed=0)
    public = load_public_text("wikitext2", "valid") + load_public_text("wikitext2", "test")
    bottom0 = split_model(model, 0).bottom
    out = {"quick": quick, "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "goal_nn_tokens_per_s": GOAL_NN_TOKENS_PER_S,
           "n_dev_sentences": len(dev)}

    def say(key, value, note=""):
        out[key] = value
        print(f"{key:42s} {value:12.4g} {note}" if isinstance(value, float) else f"{key:42s} {value} {note}",
              flush=True)

    # ---------------------------------------------------------------- nearest neighbour / MAP at k = 0
    for label, mech in (("clean", Identity()), ("eta10", DChi(10.0))):
        z, mask, ids = observe(bottom0, tok, mech, dev.texts, generator=torch.Generator().manual_seed(0))
        kn = AttackerKnowledge(bottom0, tok, mech, public)
        nn_attack = NearestNeighbour().fit(kn)
        rows, cols = target_positions(tok, mask)
        zz, truth = z[rows, cols], ids[rows, cols]
        n = len(zz)

        def exact():
            return torch.cat([nn_attack.scores(zz[s:s + 512], cols[s:s + 512]).argmax(1) for s in range(0, n, 512)])

        ref, sec = _timed(exact)
        say(f"nn_exact_{label}_tokens_per_s", n / sec, f"(ratio to goal {n / sec / GOAL_NN_TOKENS_PER_S:.3f})")
        say(f"nn_exact_{label}_recovery", float((ref == truth).float().mean()))

        if label == "clean":
            indexes = {}
            for clusters, probes in ivf_settings:
                indexes[clusters, probes], build = _timed(
                    lambda: IVFIndex(nn_attack.space, nn_attack.penalty, clusters, probes))
                say(f"ivf{clusters}x{probes}_build_seconds", build)
                for p in cols.unique().tolist():
                    indexes[clusters, probes].centroids(p)
        reps = 1 if quick else 4  # more vectors per call: the index's per-cluster loop is amortised
        zz_r, cols_r = torch.cat([zz] * reps), torch.cat([cols] * reps)
        for (clusters, probes), index in indexes.items():
            found, sec = _timed(lambda: index.search(zz_r, cols_r))
            found = found[:n]
            name = "nn_ivf" if (clusters, probes) == default_ivf else f"nn_ivf{clusters}x{probes}"
            say(f"{name}_{label}_tokens_per_s", len(zz_r) / sec,
                f"(ratio to goal {len(zz_r) / sec / GOAL_NN_TOKENS_PER_S:.3f})")
            say(f"{name}_{label}_agreement_with_exact", float((found == ref).float().mean()))
            say(f"{name}_{label}_recovery", float((found == truth).float().mean()))

        if label == "eta10":
            map_attack = MAPInversion().fit(kn)

            def map_run():
                return torch.cat([map_attack.scores(zz[s:s + 512], cols[s:s + 512]).argmax(1)
                                  for s in range(0, n, 512)])

            guess, sec = _timed(map_run)
            say("map_eta10_tokens_per_s", n / sec)
            say("map_eta10_recovery", float((guess == truth).float().mean()))

    # ---------------------------------------------------------------- optimization and learned at k = 2
    bottom2 = split_model(model, 2).bottom
    texts = dev.texts[:16 if quick else 64]
    z, mask, ids = observe(bottom2, tok, Identity(), texts, generator=torch.Generator().manual_seed(0))
    kn2 = AttackerKnowledge(bottom2, tok, Identity(), public)
    n_tok = int(mask.sum())
    steps = 50 if quick else 200
    opt = OptimizationInversion(steps=steps, progress=False).fit(kn2)
    pred, sec = _timed(lambda: opt.invert(z, mask))
    say("opt_k2_steps", steps)
    say("opt_k2_seconds_per_1k_tokens", 1000 * sec / n_tok)
    say("opt_k2_recovery", recovery_metrics(pred, ids, mask, tok)["token_recovery"])

    n_public, epochs = (300, 1) if quick else (2000, 2)
    learned = LearnedInversion(n_public=n_public, epochs=epochs, progress=False).fit(kn2)
    say("learned_k2_n_public", n_public)
    say("learned_k2_epochs", epochs)
    say("learned_k2_train_seconds", learned.train_seconds)
    say("learned_k2_train_tokens_per_s", learned.n_train_tokens / learned.train_seconds)
    pred, sec = _timed(lambda: learned.invert(z, mask))
    say("learned_k2_seconds_per_1k_tokens", 1000 * sec / n_tok)
    say("learned_k2_recovery", recovery_metrics(pred, ids, mask, tok)["token_recovery"])

    out["ratios"] = {
        "attack.nn_exact_tokens_per_s": out["nn_exact_clean_tokens_per_s"],
        "attack.nn_ivf_tokens_per_s": out["nn_ivf_clean_tokens_per_s"],
        "attack.nn_ivf_vs_goal_ratio": out["nn_ivf_clean_tokens_per_s"] / GOAL_NN_TOKENS_PER_S,
        "attack.nn_ivf_agreement_with_exact.clean": out["nn_ivf_clean_agreement_with_exact"],
        "attack.nn_ivf_agreement_with_exact.eta10": out["nn_ivf_eta10_agreement_with_exact"],
        "attack.map_tokens_per_s": out["map_eta10_tokens_per_s"],
        "attack.opt_k2_seconds_per_1k_tokens": out["opt_k2_seconds_per_1k_tokens"],
        "attack.learned_k2_train_seconds": out["learned_k2_train_seconds"],
        "attack.learned_k2_seconds_per_1k_tokens": out["learned_k2_seconds_per_1k_tokens"],
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
