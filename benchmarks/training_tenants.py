"""Eight training customers at batch 8 on one vendor, with and without multi-tenant training batches.

A vendor batches the training forwards of LoRA sessions that train without dropout (one shared forward, one
shared backward: :mod:`splitpriv.roles.vendor.training_batch`); sessions with dropout (the default) train alone, each
step under its own session's lock. Measured:

* ``concurrent``: ``--customers`` in-process customers (k = 2, LoRA r = 8, d_chi η = 10, batch 8, dropout on), each
  its own session and thread, train ``--steps`` steps at once on their own slices of SST-2; aggregate steps/s
  against one customer training alone.
* ``training_batches``: the same without dropout, on a vendor that batches training forwards and on one that
  does not (``batch_train=False``): aggregate steps/s of each, and the ratio batched / unbatched.
* ``ceiling``: the vendor's top alone (dropout on), forward + backward of ``--customers`` batches of 8 real
  sentences one after another against one batch of all of them padded to the longest.
* ``ceiling_dropout_free``: the same in eval mode, plus the multi-tenant forward + backward a training batch runs
  (``BatchTop``, one session per batch of 8; packed, as MiniLM's training batches are, and right-padded, as other
  families' are): what batching can gain on this machine before any wait.

    python benchmarks/training_tenants.py [--quick] [--customers 8] [--steps 6]
"""

from __future__ import annotations

import argparse
import time

import common  # noqa: F401  (environment first)
from common import load_dev, machine, quiet, together, write_result


def concurrent(customers: int, steps: int, texts, labels, *, dropout: bool = True, batch_train: bool = True) -> dict:
    import torch

    from splitpriv.batching import collate, encode_texts
    from splitpriv.config import PrivacyConfig, TrainConfig
    from splitpriv.contract import SessionConfig
    from splitpriv.roles.customer import Customer
    from splitpriv.roles.vendor import Vendor
    from splitpriv.transport import InProcessTransport

    vendor = Vendor(batch_train=batch_train)
    session = SessionConfig(n_bottom_layers=2, tuning={"method": "lora", "r": 8}, total_steps=steps + 1,
                            dropout=dropout)

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

    alone, before = run(1), vendor.batcher.train_rows
    many = run(customers)
    return {"steps_per_s_alone": alone, "steps_per_s_concurrent": many, "ratio": many / alone,
            "rows_in_shared_forwards": vendor.batcher.train_rows - before, "rows": customers * steps * 8}


def training_batches(customers: int, steps: int, texts, labels) -> dict:
    """Dropout-free customers on a vendor that batches their training forwards and on one that does not."""
    out = {"unbatched": concurrent(customers, steps, texts, labels, dropout=False, batch_train=False),
           "batched": concurrent(customers, steps, texts, labels, dropout=False, batch_train=True)}
    out["ratio"] = out["batched"]["steps_per_s_concurrent"] / out["unbatched"]["steps_per_s_concurrent"]
    return out


def _best_ms(variants: dict, reps: int) -> dict:
    """Best of ``reps`` timed rounds (after one warm-up each) of every variant, interleaved."""
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(reps):
        for name, run in variants.items():
            run()
            start = time.perf_counter()
            run()
            best[name] = min(best[name], 1000 * (time.perf_counter() - start))
    return best


def ceiling(customers: int, texts, reps: int = 7, dropout: bool = True) -> dict:
    import torch
    from transformers import AutoTokenizer

    from splitpriv.batching import collate, encode_texts
    from splitpriv.contract import SessionConfig
    from splitpriv.roles.vendor.tenant_batch import BatchTop, _Item
    from splitpriv.roles.vendor import Vendor

    vendor = Vendor()
    config = SessionConfig(n_bottom_layers=2, tuning={"method": "lora", "r": 8}, dropout=dropout)
    sessions = [vendor.session(i.session_id, i.token) for i in
                (vendor.open_session(config) for _ in range(customers if not dropout else 1))]
    session = sessions[0]
    tokenizer = AutoTokenizer.from_pretrained(vendor.model_folder)
    enc = encode_texts(tokenizer, texts, 64)
    with torch.no_grad():
        alone = [(session.parts.bottom(ids, mask), mask) for ids, mask in
                 (collate(enc, torch.arange(8 * i, 8 * i + 8), tokenizer.pad_token_id) for i in range(customers))]
        ids, mask = collate(enc, torch.arange(8 * customers), tokenizer.pad_token_id)  # all rows, padded to the longest
        big = (session.parts.bottom(ids, mask), mask)
    module = session.tuned.module
    module.train(dropout)

    def step(pairs) -> None:
        for x, m in pairs:
            module(x, m).sum().backward()

    variants = {"one_at_a_time": lambda: step(alone), "one_batch": lambda: step([big])}
    if not dropout:
        for s in sessions:
            s.tuned.module.eval()
        items = [_Item(s, x, m, 1) for s, (x, m) in zip(sessions, alone)]
        for name, pack in (("one_batch_packed", True), ("one_batch_multi_tenant", False)):
            variants[name] = lambda top=BatchTop(session, pack=pack): sum(o.sum() for o in top(items)).backward()
    best = _best_ms(variants, reps)
    return {"ms": best, "rows": 8 * customers, "padded_length": int(big[1].shape[1]),
            "tokens": int(sum(m.numel() for _, m in alone)), "ratio": best["one_at_a_time"] / best["one_batch"],
            **({"ratio_packed": best["one_at_a_time"] / best["one_batch_packed"],
                "ratio_multi_tenant": best["one_at_a_time"] / best["one_batch_multi_tenant"]} if not dropout else {})}


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
    stages = [  # (record key, measurement, its line of output); each is recorded as soon as it is measured
        ("ceiling", lambda: ceiling(a.customers, texts), lambda c: (
            f"vendor top forward+backward of {c['rows']} rows: {c['ms']['one_at_a_time']:.0f} ms as {a.customers} "
            f"batches of 8, {c['ms']['one_batch']:.0f} ms as one batch (padded to {c['padded_length']}): at most "
            f"{c['ratio']:.2f}x from training batches")),
        ("ceiling_dropout_free", lambda: ceiling(a.customers, texts, dropout=False), lambda c: (
            f"the same without dropout: {c['ms']['one_at_a_time']:.0f} ms as {a.customers} batches, "
            f"{c['ms']['one_batch']:.0f} ms padded ({c['ratio']:.2f}x); as one multi-tenant batch (a LoRA per "
            f"batch of 8): {c['ms']['one_batch_multi_tenant']:.0f} ms padded ({c['ratio_multi_tenant']:.2f}x), "
            f"{c['ms']['one_batch_packed']:.0f} ms packed ({c['ratio_packed']:.2f}x)")),
        ("concurrent", lambda: concurrent(a.customers, a.steps, texts, labels), lambda c: (
            f"{a.customers} customers training at once: {c['steps_per_s_concurrent']:.2f} steps/s against "
            f"{c['steps_per_s_alone']:.2f} for one alone ({c['ratio']:.2f}x)")),
        ("training_batches", lambda: training_batches(a.customers, a.steps, texts, labels), lambda c: (
            f"{a.customers} dropout-free customers: {c['batched']['steps_per_s_concurrent']:.2f} steps/s with "
            f"training batches ({c['batched']['rows_in_shared_forwards']} of {c['batched']['rows']} rows in shared "
            f"forwards), {c['unbatched']['steps_per_s_concurrent']:.2f} without ({c['ratio']:.2f}x); one alone: "
            f"{c['unbatched']['steps_per_s_alone']:.2f}")),
    ]
    for key, measure, line in stages:
        out[key] = measure()
        print(line(out[key]), flush=True)
        write_result("training_tenants", out)

if __name__ == "__main__":
    main()
