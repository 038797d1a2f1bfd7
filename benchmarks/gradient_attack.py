"""The gradient-side attack on causal-LM split training (issue 33): SmolLM2-135M-Instruct, k = 2, j ∈ {0, 2}, a short
split run on SST-2 instructions ("... positive or negative? Answer with one word." → "positive<|im_end|>"). The vendor
reads the response tokens back from the gradients it receives (`response` attack, src/splitpriv/attacks/response.py),
with and without the customer's defence (per-example clipping at C + Gaussian noise σ·C,
src/splitpriv/privacy/gradient_noise.py); the defence's cost is the held-out loss/perplexity of the trained split
model on SST-2 dev instructions.

C is the median per-example norm of the clean run's returned gradients at the same j (what a customer measures on
its own data). Each (j, defence) is one real split training run (simulate_lm_training, the harness the `response`
attack's registry entry uses) whose transcript both decoders read: "invert" (CGLS through the tail's blocks, the
attack's default) and, at j > 0, "raw g" (the gradient decoded as if j were 0).

Measured (results/gradient_attack.json, 32 examples, 4 steps of 8; 64 response tokens, 32 of them the sentiment
word): clean gradients give every response token back at j = 0 and j = 2 (floor 78%; the word 100% vs 56% for the
majority word), and so does decoding g as if j were 0 on this task (the inversion recovers more of the loss mask).
σ = 0.1 leaves every sentiment word readable (only the model's confident <|im_end|> is lost) and already lifts the
dev loss from 0.44 to 0.79-0.85; σ = 1 stops the attack (0%) and nearly stops the learning (0.97-0.99, untuned
1.04). The attacker uses no prior over answers: one that decodes among the few plausible answer words needs far
less signal, so σ = 1 is an optimistic figure for the defender.

    python benchmarks/gradient_attack.py [--limit 32] [--eval-limit 32] [--sigmas 0.1 1.0] [--quick]

Writes ``results/gradient_attack.json``. The vectors sent *up* (training and private generation) are another path,
covered by the inversion attacks (``learned``, ``linear``, ``adaptive``; ``nn``/``map`` at k = 0): see
decoder_attacks.py.
"""

from __future__ import annotations

import argparse
import time

import common
from common import machine, print_table, write_result

HEADER = ["j", "decoder", "clip C", "sigma", "token rec.", "floor", "word rec.", "word floor", "mask P/R", "N exact",
          "dev loss", "dev ppl", "wall s"]


def row(r: dict) -> list:
    return [r["tail_layers"], r["decoder"], r["grad_clip"] or "-", r["grad_sigma"], r["token_recovery"], r["floor"],
            r["content_recovery"], r["content_floor"], f"{r['mask_precision']:.2f}/{r['mask_recall']:.2f}",
            r["loss_tokens_inferred_exactly"], r["dev"]["loss"], r["dev"]["perplexity"], r["wall_s"]]


def per_example_norms(run) -> list[float]:
    from splitpriv.attacks.wire import read_transcript

    return [float(n) for s in read_transcript(run.messages).observed() for n in s.grad_outputs.flatten(1).norm(dim=1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=32, help="SST-2 train instructions the customer trains on")
    parser.add_argument("--eval-limit", type=int, default=32, help="SST-2 dev instructions for the defence's cost")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.1, 1.0], help="noise multipliers of C")
    parser.add_argument("--tails", type=int, nargs="+", default=[0, 2], help="j values")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="8 examples, j = 0, sigma 1 only")
    args = parser.parse_args()
    if args.quick:
        args.limit, args.eval_limit, args.sigmas, args.tails = 8, 8, [1.0], [0]
    common.quiet()
    import statistics

    import torch

    from splitpriv import load_model
    from splitpriv.attacks.response import GENERATION_PATH, attack_transcript, shipped_tail
    from splitpriv.config import PrivacyConfig
    from splitpriv.data.instructions import load_lm_dataset
    from splitpriv.roles.vendor import Vendor
    from splitpriv.simulation import simulate_lm_training
    from splitpriv.tasks.causal_lm import perplexity

    started_all = time.perf_counter()
    model, tokenizer = load_model("smollm2-135m-instruct", task="causal-lm")
    vendor = Vendor(model.config.name_or_path)
    train = load_lm_dataset("sst2", "train", tokenizer, limit=args.limit, seed=0, max_length=128)
    dev = load_lm_dataset("sst2", "dev", tokenizer, limit=args.eval_limit, seed=0, max_length=128)
    with torch.no_grad():
        before = perplexity(lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits, dev,
                            tokenizer.pad_token_id)
    print(f"untuned model on {len(dev)} dev instructions: loss {before['loss']:.4f}, perplexity "
          f"{before['perplexity']:.4f}", flush=True)
    results = []
    for j in args.tails:
        tail = shipped_tail(model, 2, j)
        clip = None
        for sigma in [None, *args.sigmas]:
            t0 = time.perf_counter()
            defence = {} if sigma is None else {"grad_clip": clip, "grad_sigma": sigma}
            run = simulate_lm_training(train, n_bottom_layers=2, n_tail_layers=j, privacy=PrivacyConfig(**defence),
                                       batch_size=args.batch_size, seed=0, max_length=128, vendor=vendor,
                                       eval_examples=dev)
            trained = time.perf_counter() - t0
            norms = per_example_norms(run)
            for decoder, steps in [("invert", 30)] + ([("raw g", 0)] if j and sigma is None else []):
                t1 = time.perf_counter()
                r = attack_transcript(run, tail, tokenizer, steps)
                results.append({"tail_layers": j, "decoder": decoder, "solver_steps": steps,
                                "grad_clip": defence.get("grad_clip"), "grad_sigma": defence.get("grad_sigma", 0.0),
                                **r, "dev": run.scores, "train_s": trained, "attack_s": time.perf_counter() - t1,
                                "returned_gradient_norms": {"median": statistics.median(norms), "min": min(norms),
                                                            "max": max(norms)},
                                "wall_s": time.perf_counter() - t0})
                print_table([row(results[-1])], HEADER)
                write_result("gradient_attack", {
                    "model": "smollm2-135m-instruct", "dataset": "sst2 train (attacked), sst2 dev (cost)",
                    "limit": len(train), "eval_limit": len(dev), "n_bottom_layers": 2, "batch_size": args.batch_size,
                    "epochs": 1, "method": "lora", "untuned_dev": before, "quick": args.quick, "results": results,
                    "clip_rule": "C = median per-example norm of the clean run's returned gradients at the same j",
                    "generation_path": GENERATION_PATH, "machine": machine(),
                    "wall_s": time.perf_counter() - started_all})
            if sigma is None:
                clip = float(f"{statistics.median(norms):.2g}")  # the customer calibrates C on its own clean run
    print_table([row(r) for r in results], HEADER)


if __name__ == "__main__":
    main()
