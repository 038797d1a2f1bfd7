"""Eight training customers at batch 8 on one vendor, and the most a multi-tenant training batch could save here.

Today a vendor runs every session's training forward and backward alone (under the session's lock; the predict path
batches tenants, :mod:`splitpriv.roles.tenant_batch`, the training path does not). Measured:

* ``concurrent``: ``--customers`` in-process customers (k = 2, LoRA r = 8, d_chi η = 10, batch 8), each its own
  session and thread, train ``--steps`` steps at once on their own slices of SST-2; aggregate steps/s against one
  customer training alone.
* ``ceiling``: the vendor's top alone, forward + backward of ``--customers`` batches of 8 real sentences one after
  another against one batch of all of them padded to the longest (the layout a training batch would run). The
  ratio bounds what batching training forwards could gain on this machine, before any wait for stragglers.

    python benchmarks/training_tenants.py [--quick] [--customers 8] [--steps 6]
"""

from __future__ import annotations

import argparse
import time

import common  # noqa: F401  (environment first)
from common import load_dev, machine, quiet, together, write_result


def concurrent(customers: int, steps: int, texts, labels) -> dict:
    import torch

    from splitpriv.batching import collate, encode_texts
    from splitpriv.config import PrivacyConfig, TrainConfig
    from splitpriv.protocol import SessionConfig
    from splitpriv.roles.customer import Customer
    from splitpriv.roles.vendor import Vendor
    from splitpriv.transport import InProcessTransport

    vendor = Vendor()
    session = SessionConfig(n_bottom_layers=2, tuning={"method": "lora", "r": 8}, total_steps=steps + 1)

    def run(n: int) -> float:
        opened = [Customer.open(InProcessTransport(vendor), session, PrivacyConfig(mechanism="dchi", eta=10.0),
                                TrainConfig(batch_size=8, noise_seed=i)) for i in range(n)]
        batches = []
        for i, c in enumerate(opened):
            enc = encode_texts(c.tokenizer, texts, 64)
            rows = [torch.arange(8 * (i * steps + s), 8 * (i * steps + s + 1)) % len(enc) for s in range(steps)]
            batches.append([(*collate(enc, r, c.tokenizer.pad_token_id), torch.tensor(labels)[r], r) for r in rows])

        def work(i: int) -> None:
            for s, (ids, mask, y, r) in enumerate(batches[i], start=1):
                opened[i].train_step(s, ids, mask, y, r)

        wall = together(n, work)
        return n * steps / wall

    alone, many = run(1), run(customers)
    return {"steps_per_s_alone": alone, "steps_per_s_concurrent": many, "ratio": many / alone}


def ceiling(customers: int, texts, reps: int = 7) -> dict:
    import torch
    from transformers import AutoTokenizer

    from splitpriv.batching import collate, encode_texts
    from splitpriv.protocol import SessionConfig
    from splitpriv.roles.vendor import Vendor

    vendor = Vendor()
    info = vendor.open_session(SessionConfig(n_bottom_layers=2, tuning={"method": "lora", "r": 8}))
    session = vendor.session(info.session_id, info.token)
    tokenizer = AutoTokenizer.from_pretrained(vendor.model_folder)
    enc = encode_texts(tokenizer, texts, 64)
    with torch.no_grad():
        alone = [(session.parts.bottom(ids, mask), mask) for ids, mask in
                 (collate(enc, torch.arange(8 * i, 8 * i + 8), tokenizer.pad_token_id) for i in range(customers))]
        ids, mask = collate(enc, torch.arange(8 * customers), tokenizer.pad_token_id)  # all rows, padded to the longest
        big = (session.parts.bottom(ids, mask), mask)
    module = session.tuned.module
    module.train()

    def step(pairs) -> None:
        for x, m in pairs:
            module(x, m).sum().backward()

    best = {"one_at_a_time": float("inf"), "one_batch": float("inf")}
    for _ in range(reps):
        for name, pairs in (("one_at_a_time", alone), ("one_batch", [big])):
            step(pairs)
            start = time.perf_counter()
            step(pairs)
            best[name] = min(best[name], 1000 * (time.perf_counter() - start))
    return {"ms": best, "rows": 8 * customers, "padded_length": int(big[1].shape[1]),
            "tokens": int(sum(m.numel() for _, m in alone)), "ratio": best["one_at_a_time"] / best["one_batch"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--customers", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6, help="training steps per customer")
    a = ap.parse_args()
    if a.quick:
        a.customers, a.steps = 4, 2
    quiet()
    texts, labels = load_dev(None)
    out = {"quick": a.quick, "machine": machine(), "customers": a.customers, "batch_size": 8, "steps": a.steps}
    out["ceiling"] = ceiling(a.customers, texts)
    c = out["ceiling"]
    print(f"vendor top forward+backward of {c['rows']} rows: {c['ms']['one_at_a_time']:.0f} ms as {a.customers} "
          f"batches of 8, {c['ms']['one_batch']:.0f} ms as one batch (padded to {c['padded_length']}): at most "
          f"{c['ratio']:.2f}x from training batches", flush=True)
    write_result("training_tenants", out)
    out["concurrent"] = concurrent(a.customers, a.steps, texts, labels)
    c = out["concurrent"]
    print(f"{a.customers} customers training at once: {c['steps_per_s_concurrent']:.2f} steps/s against "
          f"{c['steps_per_s_alone']:.2f} for one alone ({c['ratio']:.2f}x)", flush=True)
    write_result("training_tenants", out)


if __name__ == "__main__":
    main()
