"""A privatizer a customer of SmolLM2-135M-Instruct can afford (issue 33, item 2): the vendor pre-trains the bottleneck
and its middle on public text (``splitpriv pretrain-privatizer --task causal-lm``), then a customer fine-tunes.

(a) WikiText-2 perplexity through the three-part private split (k = 2, j = 2: the customer holds embeddings, 4 of
30 blocks and the LM head) on held-out public sentences the pre-training never read: the clean model; the
privatizer as a session on the plain vendor builds it (random orthogonal projection); its principal-component start
alone; the pre-trained one at its training noise and at twice that noise. (b) A short split LoRA fine-tune on SST-2
instructions with the pre-trained folder and the same privatizer and noise, against centralized LoRA on the clean
model with the same data (greedy exact match on dev instructions). (c) The token attacks on what that customer sends
(the pre-trained bottom as shipped, its projection's final weights handed to the attacker, the same noise), on SST-2
dev sentences: the privacy figure that travels with (b)'s utility.

    python benchmarks/decoder_privatizer.py [--steps 100] [--train-limit 256] [--eval-limit 200] [--quick]
        [--stages pretrain,perplexity,fine_tune,attacks] [--folder DIR] [--attacks floor,linear]

With ``--folder DIR`` holding an earlier pre-training (its ``robust_top.json``), that folder is reused and the stages
not asked for keep their rows from ``results/decoder_privatizer.json``.

Writes ``results/decoder_privatizer.json`` after every stage (a stopped run keeps its rows); wall times are on the
machine as it was (``machine.load_average_at_start``). The pre-trained folder is model weights: it goes to a temporary
folder (``--folder`` to keep it), never into ``results/``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import common
from common import machine, print_table, write_result

MODEL = "smollm2-135m-instruct"


def heldout_examples(config, n: int, tokenizer, max_length: int):
    """``n`` public sentences the pre-training never reads: the last of its shuffled training list, past the
    ``n_public`` it is limited to."""
    from splitpriv.data.instructions import text_example
    from splitpriv.roles.vendor.robust_top import public_sentences

    every = public_sentences(replace(config, n_public=None))[0]
    if config.n_public is None or config.n_public + n > len(every):
        raise ValueError(f"{n} held-out sentences need n_public <= {len(every) - n}")
    return [text_example(tokenizer, s, max_length) for s in every[-n:]]


def private_perplexity(parts, mechanism, examples, pad_id: int, seed: int = 0) -> dict:
    """``perplexity`` of the split ``parts`` with ``mechanism``'s noise (seeded) on what leaves the customer."""
    import torch

    from splitpriv.tasks.causal_lm import perplexity

    generator = torch.Generator().manual_seed(seed)

    def logits_of(ids, mask):
        sent = parts.bottom(input_ids=ids, attention_mask=mask)
        if mechanism is not None:
            sent = mechanism(sent, mask, generator=generator)
        return parts.tail(parts.top(sent, mask), mask)

    started = time.perf_counter()
    result = perplexity(logits_of, examples, pad_id, batch_size=16)
    return {**result, "wall_s": time.perf_counter() - started}


def pretrained_split(args, spec, folder):
    """``(parts, (model, tokenizer))``: the pre-trained ``folder`` split at k, j with its privatizer's trained halves."""
    from splitpriv import load_model, split_model
    from splitpriv.parts.privatizer import load_privatizer

    pair = load_model(str(folder), task="causal-lm")
    return load_privatizer(split_model(pair[0], args.k, args.j, privatizer=spec), folder), pair


def perplexities(args, config, spec, folder) -> list[dict]:
    """Stage (a): the rows of the perplexity table."""
    from splitpriv import load_model, split_model
    from splitpriv.config import PrivacyConfig
    from splitpriv.privacy.privatizer import build_privatizer
    from splitpriv.roles.vendor.privatizer_pretrain import start_from_public
    from splitpriv.roles.vendor.robust_top import public_sentences

    base, tokenizer = load_model(args.model, task="causal-lm")
    examples = heldout_examples(config, args.n_perplexity, tokenizer, config.max_length)
    pad = tokenizer.pad_token_id
    noisy = config.privacy.build_mechanism()
    double = PrivacyConfig("dchi", eta=args.eta / 2).build_mechanism()
    rows = [{"setting": "clean", **private_perplexity(split_model(base, args.k, args.j), None, examples, pad)}]
    untrained = split_model(base, args.k, args.j, privatizer=spec)
    rows.append({"setting": "untrained privatizer", "eta": args.eta,
                 **private_perplexity(untrained, noisy, examples, pad)})
    plain = split_model(base, args.k, args.j)
    start_from_public(build_privatizer(spec), untrained, tokenizer, public_sentences(config)[0], config, plain)
    rows.append({"setting": "principal-component start only", "eta": args.eta,
                 **private_perplexity(untrained, noisy, examples, pad)})
    adapted, _ = pretrained_split(args, spec, folder)
    rows.append({"setting": "pre-trained privatizer", "eta": args.eta,
                 **private_perplexity(adapted, noisy, examples, pad)})
    rows.append({"setting": "pre-trained privatizer, twice the noise", "eta": args.eta / 2,
                 **private_perplexity(adapted, double, examples, pad)})
    return rows


def fine_tune(args, spec, folder) -> dict:
    """Stage (b): split LoRA on the pre-trained folder vs centralized LoRA on the clean model, same data."""
    from splitpriv.config import PrivacyConfig, TrainConfig
    from splitpriv.runs.config import RunConfig
    from splitpriv.runs.run import reference_config, run

    config = RunConfig(dataset="sst2", task="causal-lm", model=str(folder), bottom_layers=args.k, tail_layers=args.j,
                       train_limit=args.train_limit, eval_limit=args.eval_limit, lr=2e-3,
                       privacy=PrivacyConfig("dchi", eta=args.eta, privatizer=spec),
                       train=TrainConfig(batch_size=8, max_length=128, noise_seed=0))
    out = {}
    for name, cfg in (("split", config), ("centralized", reference_config(config))):
        started = time.perf_counter()
        metrics = run(cfg, progress=False)
        keep = ("exact_match", "perplexity", "n_train", "n_eval", "train_seconds", "train_samples_per_s")
        out[name] = {**{k: metrics.get(k) for k in keep}, "wall_s": time.perf_counter() - started}
        print(f"  {name}: exact match {metrics['exact_match']:.3f}, {out[name]['wall_s']:.0f} s", flush=True)
    return out


def attacks(args, spec, folder, data: dict) -> None:
    """Stage (c): each token attack on the pre-trained bottom as shipped, under the run's noise (``data["attacks"]``,
    written after each attack)."""
    from splitpriv.attacks.runner import run_attack

    parts, pair = pretrained_split(args, spec, folder)
    shipped = parts.bottom
    rows = data["attacks"] = []
    data["attacks_on"] = f"{args.attack_limit} SST-2 dev sentences"
    for name in args.attacks.split(","):
        started = time.perf_counter()
        r = run_attack(name, model=pair, n_bottom_layers=args.k, bottom=shipped, mechanism="dchi", eta=args.eta,
                       limit=args.attack_limit, progress=False)
        keep = {k: v for k, v in r.items() if not isinstance(v, (list, dict))}
        rows.append({**keep, "wall_s": time.perf_counter() - started})
        print(f"  {name}: token recovery {r['success']:.3f} ({rows[-1]['wall_s']:.0f} s)", flush=True)
        write_result(args.result, data)


def _pretrained(args, spec, config, folder, data) -> None:
    """Stage pretrain, or the folder of an earlier one (``--folder`` with its metadata)."""
    from splitpriv.roles.vendor.privatizer_pretrain import pretrain_privatizer

    if (folder / "robust_top.json").is_file() and "pretrain" not in args.stages:
        return
    started = time.perf_counter()
    meta = pretrain_privatizer(spec, config, folder, model=args.model, task="causal-lm", n_tail_layers=args.j,
                               progress=False)
    data["pretraining"] = {k: meta[k] for k in ("config", "heldout_error", "heldout_error_before",
                                                "heldout_error_after", "final_loss", "n_train_sentences",
                                                "public_init")}
    data["pretraining"]["wall_s"] = time.perf_counter() - started
    print(f"pre-training: held-out KL {meta['heldout_error_before']:.3f} -> {meta['heldout_error_after']:.3f} "
          f"nats/token in {data['pretraining']['wall_s']:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("-k", type=int, default=2)
    parser.add_argument("-j", type=int, default=2)
    parser.add_argument("--r", type=int, default=64)
    parser.add_argument("--eta", type=float, default=128.0, help="d_chi eta in r dimensions (E||n|| = r / eta)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--max-length", type=int, default=32, help="tokens per public sentence (WikiText-2: ~21)")
    parser.add_argument("--n-perplexity", type=int, default=200)
    parser.add_argument("--train-limit", type=int, default=256)
    parser.add_argument("--eval-limit", type=int, default=200)
    parser.add_argument("--folder", type=Path, default=None, help="keep the pre-trained model folder here")
    parser.add_argument("--stages", default="pretrain,perplexity,fine_tune,attacks",
                        help="comma-separated; stages left out keep their rows from the last results file")
    parser.add_argument("--attacks", default="floor,linear", help="token attacks of stage attacks, comma-separated")
    parser.add_argument("--attack-limit", type=int, default=100, help="SST-2 dev sentences attacked")
    parser.add_argument("--result", default="decoder_privatizer",
                        help="results/RESULT.json (another name for another setting, e.g. another --eta)")
    parser.add_argument("--quick", action="store_true", help="10 steps, 32 sentences, 16 + 16 instructions")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.n_perplexity, args.train_limit, args.eval_limit, args.attack_limit = 10, 32, 16, 16, 16
    args.stages = set(args.stages.split(","))
    common.quiet()
    import json

    from splitpriv.config import PrivacyConfig
    from splitpriv.roles.vendor.robust_top import RobustTopConfig

    spec = {"name": "bottleneck", "r": args.r, "clip": 1.0, "normalize": False}
    config = RobustTopConfig(privacy=PrivacyConfig("dchi", eta=args.eta), n_bottom_layers=args.k, steps=args.steps,
                             batch_size=8, max_length=args.max_length, lr=1e-4, n_public=8 * args.steps, n_heldout=64)
    previous = common.RESULTS / f"{args.result}.json"
    data = json.loads(previous.read_text()) if previous.is_file() and args.stages != {
        "pretrain", "perplexity", "fine_tune", "attacks"} else {}
    data.update({"model": args.model, "k": args.k, "j": args.j, "privatizer": spec, "mechanism": {"dchi": args.eta},
                 "noise_norm_expected": args.r / args.eta, "quick": args.quick, "machine": machine()})
    folder = args.folder or Path(tempfile.mkdtemp(prefix="decoder-privatizer-")) / "model"
    try:
        _pretrained(args, spec, config, folder, data)
        write_result(args.result, data)
        if "perplexity" in args.stages:
            data["perplexity"] = perplexities(args, config, spec, folder)
            print_table([[r["setting"], r.get("eta", "-"), r["perplexity"], r["wall_s"]] for r in data["perplexity"]],
                        ["WikiText-2 held-out", "eta", "perplexity", "wall s"])
            write_result(args.result, data)
        if "fine_tune" in args.stages:
            data["fine_tune"] = fine_tune(args, spec, folder)
            write_result(args.result, data)
        if "attacks" in args.stages:
            attacks(args, spec, folder, data)
    finally:
        if args.folder is None:
            shutil.rmtree(folder.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
