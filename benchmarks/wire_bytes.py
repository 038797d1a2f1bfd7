"""Bytes on the wire per sample against the floor, and what a float16/bfloat16 wire does to accuracy.

The floor is what the representations alone cost in float16: real tokens × d × 2 bytes, nothing for padding.

1. Encodings: the ``ForwardRequest`` bodies of real SST-2 training batches (batch 32, max_length 64, d = 384)
   in float32/float16/bfloat16, padded (every [B, T, d] position and an int64 mask: the encoding before
   real-token packing) and packed (real tokens only + a uint8 mask: the current encoding).
2. A training run's traffic: ``InProcessTransport.bytes_sent`` (every forward and backward body the customer
   sent) per training sample, with the current encoding, against the float16 floor of the samples trained on:
   ``wire.bytes_vs_floor_ratio`` (float16 wire).
3. Accuracy: the same run (k = 0, LoRA, no noise by default, seed 0) with a float32, float16 and bfloat16 wire,
   evaluated on SST-2 dev: the accuracy difference to float32, how many dev predictions change, and the binomial
   standard error of one accuracy for scale.

    python benchmarks/wire_bytes.py [--quick] [--train 2000] [--dev 872] [--mechanism none|dchi --eta 20]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import common  # noqa: F401  (environment first)
from common import load_dev, load_texts, machine, print_table, quiet, write_result

D = 384
DTYPES = ("float32", "float16", "bfloat16")


def padded_bytes(msg) -> bytes:
    """The encoding before packing: every position of hidden [B, T, d] and the mask as int64."""
    from safetensors.torch import save as st_save

    meta = {"session_id": msg.session_id, "step": msg.step}
    return st_save({"hidden": msg.hidden.contiguous(), "attention_mask": msg.attention_mask.contiguous()},
                   metadata={"kind": msg.kind, "fields": json.dumps(meta)})


def encodings(texts, batch_size: int, max_length: int) -> dict:
    import torch

    from splitpriv.batching import collate, encode_texts, training_order
    from splitpriv.models import load_tokenizer
    from splitpriv.contract import WIRE_DTYPES, ForwardRequest, decode

    tokenizer = load_tokenizer()
    enc = encode_texts(tokenizer, texts, max_length)
    g = torch.Generator().manual_seed(0)
    sizes = {f"{dt}.{layout}": 0 for dt in DTYPES for layout in ("padded", "packed")}
    real = positions = samples = 0
    for step, _, index in training_order(len(enc), batch_size, 1, 0):
        ids, mask = collate(enc, index, tokenizer.pad_token_id)
        hidden = torch.randn(*ids.shape, D, generator=g) * mask.unsqueeze(-1)
        real += int(mask.sum())
        positions += mask.numel()
        samples += len(index)
        for dt in DTYPES:
            msg = ForwardRequest("0123456789abcdef", step, hidden.to(WIRE_DTYPES[dt]), mask)
            packed = msg.to_bytes()
            assert torch.equal(decode(packed).hidden, msg.hidden)
            sizes[f"{dt}.packed"] += len(packed)
            sizes[f"{dt}.padded"] += len(padded_bytes(msg))
    floor = real * D * 2
    return {"samples": samples, "real_tokens": real, "padded_positions": positions, "floor_bytes": floor,
            "bytes": sizes, "bytes_per_sample": {k: v / samples for k, v in sizes.items()},
            "vs_floor": {k: v / floor for k, v in sizes.items()}}


def train_eval(texts, labels, dev_texts, dev_labels, wire_dtype: str, args) -> dict:
    import torch

    from splitpriv.batching import encode_texts, num_steps
    from splitpriv.config import PrivacyConfig, TrainConfig
    from splitpriv.contract import SessionConfig
    from splitpriv.roles.customer import Customer
    from splitpriv.roles.vendor import Vendor
    from splitpriv.transport import InProcessTransport

    privacy = PrivacyConfig(mechanism=args.mechanism, eta=args.eta if args.mechanism == "dchi" else None)
    train = TrainConfig(batch_size=32, max_length=64, seed=0, noise_seed=0, wire_dtype=wire_dtype)
    session = SessionConfig(n_bottom_layers=0, tuning={"method": "lora", "r": 8}, lr=2e-3,
                            total_steps=num_steps(len(texts), 32, 1), seed=0)
    transport = InProcessTransport(Vendor())
    customer = Customer.open(transport, session, privacy, train)
    sent0 = transport.bytes_sent
    start = time.perf_counter()
    history = customer.fit(texts, labels, progress=False)
    sent = transport.bytes_sent - sent0
    real = sum(len(e) for e in encode_texts(customer.tokenizer, texts, 64))
    logits = customer.predict_logits(dev_texts)
    preds = logits.argmax(-1)
    accuracy = float((preds == torch.tensor(dev_labels)).float().mean())
    transport.close()
    return {"accuracy": accuracy, "predictions": preds.tolist(), "final_loss": sum(history["losses"][-5:]) / 5,
            "losses": history["losses"], "bytes_sent_per_sample": sent / len(texts),
            "floor_per_sample": real * D * 2 / len(texts), "seconds": time.perf_counter() - start}


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="256 training and 200 dev sentences")
    parser.add_argument("--train", type=int, default=None, help="training sentences (default 2000; quick 256)")
    parser.add_argument("--dev", type=int, default=None, help="dev sentences (default all 872; quick 200)")
    parser.add_argument("--mechanism", default="none", choices=["none", "dchi"])
    parser.add_argument("--eta", type=float, default=20.0)
    args = parser.parse_args()
    n_train = args.train or (256 if args.quick else 2000)
    n_dev = args.dev or (200 if args.quick else None)
    quiet()
    m = machine()
    texts, labels = load_texts(n_train)
    dev_texts, dev_labels = load_dev(n_dev)

    enc = encodings(texts, 32, 64)
    print(f"ForwardRequest bytes per sample, {enc['samples']} SST-2 training sentences, batch 32, max_length 64, "
          f"d={D}: {enc['real_tokens']} real tokens of {enc['padded_positions']} positions "
          f"({100 * enc['real_tokens'] / enc['padded_positions']:.0f}%); floor (real tokens x d x 2 B) "
          f"{enc['floor_bytes'] / enc['samples'] / 1e3:.1f} KB/sample")
    rows = [[dt, layout, enc["bytes_per_sample"][f"{dt}.{layout}"] / 1e3, enc["vs_floor"][f"{dt}.{layout}"]]
            for dt in DTYPES for layout in ("padded", "packed")]
    print_table(rows, ["wire dtype", "encoding", "KB/sample", "x floor"])

    runs = {}
    for dt in DTYPES:
        runs[dt] = train_eval(texts, labels, dev_texts, dev_labels, dt, args)
        r = runs[dt]
        print(f"  {dt:8s}: accuracy {r['accuracy']:.4f}, final loss {r['final_loss']:.4f}, "
              f"{r['bytes_sent_per_sample'] / 1e3:.1f} KB sent/sample ({r['seconds']:.0f} s)", flush=True)
    base = runs["float32"]
    se = math.sqrt(base["accuracy"] * (1 - base["accuracy"]) / len(dev_labels))
    accuracy = {}
    for dt in DTYPES:
        changed = sum(a != b for a, b in zip(runs[dt]["predictions"], base["predictions"]))
        accuracy[dt] = {"accuracy": runs[dt]["accuracy"], "delta_vs_float32": runs[dt]["accuracy"] - base["accuracy"],
                        "predictions_changed": changed, "predictions_changed_share": changed / len(dev_labels),
                        "max_abs_loss_diff_vs_float32": max(abs(a - b) for a, b in zip(runs[dt]["losses"], base["losses"])),
                        "final_loss": runs[dt]["final_loss"]}
    fp16 = runs["float16"]
    ratios = {
        "wire.bytes_vs_floor_ratio": fp16["bytes_sent_per_sample"] / fp16["floor_per_sample"],
        "wire.forward_bytes_vs_floor_ratio.float16_packed": enc["vs_floor"]["float16.packed"],
        "wire.forward_bytes_vs_floor_ratio.float16_padded": enc["vs_floor"]["float16.padded"],
        "wire.forward_bytes_vs_floor_ratio.float32_packed": enc["vs_floor"]["float32.packed"],
        "wire.forward_bytes_vs_floor_ratio.float32_padded": enc["vs_floor"]["float32.padded"],
        "wire.forward_bytes_vs_floor_ratio.bfloat16_packed": enc["vs_floor"]["bfloat16.packed"],
        "wire.packed_vs_padded_float32_ratio": enc["bytes"]["float32.packed"] / enc["bytes"]["float32.padded"],
        "wire.float16_vs_float32_training_bytes_ratio": fp16["bytes_sent_per_sample"] / base["bytes_sent_per_sample"],
        "wire.accuracy_delta_float16": accuracy["float16"]["delta_vs_float32"],
        "wire.accuracy_delta_bfloat16": accuracy["bfloat16"]["delta_vs_float32"],
        "wire.accuracy_standard_error": se,
    }
    print(f"\naccuracy on {len(dev_labels)} SST-2 dev sentences after {n_train} training sentences (k=0, LoRA, "
          f"{args.mechanism}{f' eta={args.eta}' if args.mechanism == 'dchi' else ''}); binomial SE of one "
          f"accuracy {se:.4f}")
    rows = [[dt, a["accuracy"], f"{100 * a['delta_vs_float32']:+.2f}", a["predictions_changed"],
             a["max_abs_loss_diff_vs_float32"]] for dt, a in accuracy.items()]
    print_table(rows, ["wire dtype", "accuracy", "delta (points)", "dev predictions changed", "max |loss diff|"])
    print(f"training traffic, float16 wire, real tokens: {fp16['bytes_sent_per_sample'] / 1e3:.1f} KB/sample sent "
          f"(forward + backward) vs floor {fp16['floor_per_sample'] / 1e3:.1f} KB")
    for name, value in ratios.items():
        print(f"  {name} = {value:.4f}")
    for r in runs.values():
        r.pop("predictions")
    out = {"machine": m, "quick": args.quick,
           "setting": {"train": n_train, "dev": len(dev_labels), "batch_size": 32, "max_length": 64, "k": 0,
                       "tuning": "lora r=8", "mechanism": args.mechanism,
                       "eta": args.eta if args.mechanism == "dchi" else None, "seed": 0, "d": D},
           "encodings": enc, "runs": runs, "accuracy": accuracy, "ratios": ratios}
    # the default (no noise) run feeds summary.json; a noisy run is kept beside it
    write_result("wire_bytes" if args.mechanism == "none" else f"wire_bytes_{args.mechanism}_eta{args.eta:g}", out)
    return out


if __name__ == "__main__":
    main()
