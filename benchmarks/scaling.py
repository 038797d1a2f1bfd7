"""Step time of split training vs batch size and vs sequence length, and where one step's time goes.

Scaling: in-process split training steps (``Customer.train_step``, k = 0, LoRA, d_chi noise, frozen bottom) on
full-length synthetic sequences (every position a real token, so the length is exactly T), median of ``--steps``
steps after a warm-up step, for batch sizes at T = 64 and for lengths at B = 32. Plot: ``results/scaling.png``.

Profile: one training step taken apart into the calls ``Customer.train_step`` and the vendor make, each timed with
``perf_counter`` (the customer's bottom, its noise, the cast to the wire dtype, every message's encoding and
decoding, the vendor's top forward and backward + optimizer step, the loss, the bottom's backward + optimizer step),
on real SST-2 batches (batch 32, max_length 64), for a frozen and a trained bottom. ``pack_hidden`` and
``unpack_hidden`` (the real-tokens-only packing) are timed inside the encode/decode calls by wrapping them, so
"serialization" is the safetensors part alone. The HTTP row is the loopback round trip of one step's messages when
the vendor computes nothing (repeated step ids, answered from its store), measured against a vendor service in a
separate process.

Threads: the same split training step in two fresh processes, one with libgomp's default wait policy (torch's
OpenMP threads spin while waiting) and one with ``OMP_WAIT_POLICY=PASSIVE`` (what ``common.py`` sets for every
benchmark): on cores shared with other work the spinning is the largest slow spot found.

    python benchmarks/scaling.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import contextmanager

import common  # noqa: F401  (environment first)
from common import load_texts, machine, print_table, quiet, vendor_service, write_result


class Phases:
    def __init__(self):
        self.times: dict[str, list[float]] = defaultdict(list)
        self._current: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self._current[name] += time.perf_counter() - start

    def end_step(self, keep: bool) -> None:
        if keep:
            for name, value in self._current.items():
                self.times[name].append(value)
        self._current = defaultdict(float)


def _customer(vendor, *, bottom="frozen", total_steps=1000, wire_dtype="float32", eta=20.0):
    from splitpriv.config import PrivacyConfig, TrainConfig
    from splitpriv.contract import SessionConfig
    from splitpriv.roles.customer import Customer
    from splitpriv.transport import InProcessTransport

    session = SessionConfig(n_bottom_layers=0, total_steps=total_steps, train_bottom=bottom == "trained")
    privacy = PrivacyConfig(mechanism="dchi", eta=eta) if eta else PrivacyConfig()
    train = TrainConfig(batch_size=32, max_length=64, bottom=bottom, noise_seed=0, wire_dtype=wire_dtype)
    return Customer.open(InProcessTransport(vendor), session, privacy, train)


def synthetic_batch(tokenizer, batch: int, length: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    low = max(tokenizer.all_special_ids) + 1
    ids = torch.randint(low, tokenizer.vocab_size, (batch, length), generator=g)
    ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    mask = torch.ones(batch, length, dtype=torch.long)
    labels = torch.randint(0, 2, (batch,), generator=g)
    return ids, mask, labels


def step_times(customer, batch: int, length: int, steps: int, first_step: int) -> list[float]:
    out = []
    for i in range(steps + 1):  # the first is a warm-up
        ids, mask, labels = synthetic_batch(customer.tokenizer, batch, length, seed=first_step + i)
        start = time.perf_counter()
        customer.train_step(first_step + i, ids, mask, labels)
        if i:
            out.append(time.perf_counter() - start)
    return out


def scaling(vendor, batches, lengths, steps) -> dict:
    customer = _customer(vendor)
    step = 1
    by_batch, by_length = {}, {}
    for b in batches:
        times = step_times(customer, b, 64, steps, step)
        step += steps + 1
        by_batch[b] = {"median_s": statistics.median(times), "runs": times}
        print(f"  batch {b:4d} x 64 tokens: {1e3 * by_batch[b]['median_s']:7.0f} ms/step, "
              f"{b / by_batch[b]['median_s']:6.1f} samples/s")
    for t in lengths:
        times = step_times(customer, 32, t, steps, step)
        step += steps + 1
        by_length[t] = {"median_s": statistics.median(times), "runs": times}
        print(f"  batch 32 x {t:4d} tokens: {1e3 * by_length[t]['median_s']:7.0f} ms/step, "
              f"{32 * t / by_length[t]['median_s']:7.0f} tokens/s")
    customer.transport.close()
    return {"vs_batch_size": by_batch, "vs_seq_length": by_length, "steps_per_point": steps,
            "setting": "in-process split, k=0, LoRA, d_chi eta=20, frozen bottom, full-length synthetic sequences"}


def profile(vendor, texts, labels, bottom: str, steps: int, wire_dtype: str) -> dict:
    """Mean seconds per phase over ``steps`` real training steps (after one warm-up step)."""
    import torch
    import torch.nn.functional as F

    import splitpriv.contract as protocol
    from splitpriv.batching import collate, encode_texts, training_order
    from splitpriv.contract import BackwardRequest, ForwardRequest, decode
    from splitpriv.roles.customer.steps import step_optimizer as _step
    from splitpriv.seeding import step_rng

    customer = _customer(vendor, bottom=bottom, wire_dtype=wire_dtype)
    session = vendor.session(customer.transport.session.session_id, customer.transport.session.token)
    token = customer.transport.session.token
    sid = session.session_id
    encodings = encode_texts(customer.tokenizer, texts, 64)
    label_tensor = torch.tensor(labels)
    ph = Phases()
    original_pack, original_unpack = protocol.pack_hidden, protocol.unpack_hidden

    def timed_pack(*args):
        with ph("pack real tokens"):
            return original_pack(*args)

    def timed_unpack(*args):
        with ph("unpack real tokens"):
            return original_unpack(*args)

    protocol.pack_hidden, protocol.unpack_hidden = timed_pack, timed_unpack
    encoded = {"to_vendor": 0}
    try:
        for step, _, index in training_order(len(encodings), 32, 1, 0):
            if step > steps + 1:
                break
            ids, mask = collate(encodings, index, customer.tokenizer.pad_token_id)
            trained = bottom == "trained"
            customer.bottom.train(trained)
            with ph("customer: bottom forward"), torch.set_grad_enabled(trained), step_rng(0, "customer", step):
                hidden = customer.bottom(input_ids=ids, attention_mask=mask)
            with ph("customer: noise (privatize)"):
                z = customer.privatize(hidden.detach(), ids, mask)
            with ph("customer: cast to wire dtype"):
                z = z.to(customer.wire_dtype)
            with ph("encode forward request"):
                data = ForwardRequest(session_id=sid, step=step, hidden=z, attention_mask=mask).to_bytes()
            encoded["to_vendor"] += len(data)
            with ph("decode forward request"):
                req = decode(data)
            with ph("vendor: top forward"):
                out = vendor.forward(req, token)
            with ph("encode outputs"):
                data = out.to_bytes()
            with ph("decode outputs"):
                out = decode(data)
            with ph("customer: loss and its gradient"):
                received = out.outputs.detach().requires_grad_(True)
                loss = F.cross_entropy(received, label_tensor[index])
                loss.backward()
            with ph("encode backward request"):
                data = BackwardRequest(session_id=sid, step=step, grad_outputs=received.grad).to_bytes()
            with ph("decode backward request"):
                req = decode(data)
            with ph("vendor: top backward + optimizer"):
                result = vendor.backward(req, token)
            with ph("encode backward result"):
                data = result.to_bytes()
            with ph("decode backward result"):
                result = decode(data)
            if trained:
                with ph("customer: bottom backward + optimizer"):
                    hidden.backward(result.grad_hidden.to(hidden.dtype) * mask.unsqueeze(-1).to(hidden.dtype))
                    _step(customer.bottom_optimizer, customer.bottom_scheduler)
            ph.end_step(keep=step > 1)
    finally:
        protocol.pack_hidden, protocol.unpack_hidden = original_pack, original_unpack
    customer.transport.close()
    mean = {name: statistics.mean(v) for name, v in ph.times.items()}
    # safetensors alone: the encode/decode calls less the packing they contain
    codec = [n for n in mean if n.startswith(("encode ", "decode "))]
    serialization = sum(mean[n] for n in codec) - mean.get("pack real tokens", 0) - mean.get("unpack real tokens", 0)
    groups = {
        "bottom (forward, and backward + optimizer when trained)": mean["customer: bottom forward"]
        + mean.get("customer: bottom backward + optimizer", 0.0),
        "noise (privatize)": mean["customer: noise (privatize)"],
        "wire encode/decode (cast, pack/unpack real tokens)": mean["customer: cast to wire dtype"]
        + mean.get("pack real tokens", 0) + mean.get("unpack real tokens", 0),
        "serialization (safetensors, every message)": serialization,
        "top forward (vendor)": mean["vendor: top forward"],
        "top backward + optimizer (vendor)": mean["vendor: top backward + optimizer"],
        "loss (customer)": mean["customer: loss and its gradient"],
    }
    return {"bottom": bottom, "wire_dtype": wire_dtype, "steps": steps, "phases_s": mean, "groups_s": groups,
            "step_s": sum(groups.values()), "bytes_to_vendor_per_step": encoded["to_vendor"] / (steps + 1)}


def http_roundtrip(url: str, batch: int, length: int, d: int, replays: int, wire_dtype: str) -> float:
    """Seconds for one step's forward + backward exchange over HTTP when the vendor computes nothing."""
    import torch

    from splitpriv.contract import WIRE_DTYPES, BackwardRequest, ForwardRequest, SessionConfig
    from splitpriv.transport.http_client import HttpTransport

    transport = HttpTransport(url)
    info = transport.open_session(SessionConfig(n_bottom_layers=0, total_steps=10))
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[:, length * 2 // 5:] = 0  # SST-2 batches are ~40% real tokens at max_length 64
    hidden = (torch.randn(batch, length, d, generator=g) * mask.unsqueeze(-1)).to(WIRE_DTYPES[wire_dtype])
    forward = ForwardRequest(info.session_id, 1, hidden, mask)
    out = transport.forward(forward).outputs
    backward = BackwardRequest(info.session_id, 1, torch.randn(out.shape, generator=g))
    best_f = min(_timed(transport.forward, forward) for _ in range(replays))
    transport.backward(backward)
    best_b = min(_timed(transport.backward, backward) for _ in range(replays))
    transport.close()
    transport.disconnect()
    return best_f + best_b


def _timed(fn, arg) -> float:
    start = time.perf_counter()
    fn(arg)
    return time.perf_counter() - start


_CHILD = """
import json, sys
sys.path.insert(0, {here!r})
import scaling
from common import quiet
quiet()
from splitpriv.roles.vendor import Vendor
customer = scaling._customer(Vendor(), eta=None)
print("RESULT " + json.dumps(scaling.step_times(customer, 32, 32, {steps}, 1)))
"""


def wait_policy(steps: int, rounds: int) -> dict:
    """Median step time (batch 32 x 32 tokens, in-process split) with libgomp's default OpenMP wait policy and
    with PASSIVE, each in a fresh process (the policy is read when torch loads), alternating ``rounds`` times."""
    out = {"default": [], "PASSIVE": []}
    for r in range(rounds):
        for policy in (("default", "PASSIVE") if r % 2 == 0 else ("PASSIVE", "default")):
            env = dict(os.environ)
            env.pop("OMP_WAIT_POLICY", None)
            if policy == "default":
                env["SPLITPRIV_BENCH_OMP_DEFAULT"] = "1"
            else:
                env["OMP_WAIT_POLICY"] = "PASSIVE"
            code = _CHILD.format(here=str(common.HERE), steps=steps)
            proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1800)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not line:
                raise RuntimeError(f"wait-policy child failed ({proc.returncode}): {proc.stderr[-2000:]}")
            out[policy].append(statistics.median(json.loads(line[0][7:])))
            print(f"  OpenMP wait policy {policy:8s}: {1e3 * out[policy][-1]:7.0f} ms/step", flush=True)
    return {"median_step_s": {k: statistics.median(v) for k, v in out.items()}, "runs": out,
            "setting": "in-process split, batch 32 x 32 tokens, k=0, LoRA, no noise, torch default thread count"}


def plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    sc = result["scaling"]
    b = sorted(int(k) for k in sc["vs_batch_size"])
    axes[0].plot(b, [1e3 * sc["vs_batch_size"][k]["median_s"] for k in b], "o-")
    axes[0].set(xlabel="batch size (T = 64)", ylabel="ms per training step", title="step time vs batch size")
    t = sorted(int(k) for k in sc["vs_seq_length"])
    axes[1].plot(t, [1e3 * sc["vs_seq_length"][k]["median_s"] for k in t], "o-", color="C1")
    axes[1].set(xlabel="sequence length (B = 32)", ylabel="ms per training step", title="step time vs length")
    for ax in axes[:2]:
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    prof = result["profile"]
    names = list(prof[0]["groups_s"])
    width = 0.8 / len(prof)
    for i, p in enumerate(prof):
        axes[2].barh([j + i * width for j in range(len(names))], [1e3 * p["groups_s"][n] for n in names], width,
                     label=f"{p['bottom']} bottom")
    axes[2].set_yticks([j + width * (len(prof) - 1) / 2 for j in range(len(names))])
    axes[2].set_yticklabels([n.split(" (")[0] for n in names])
    axes[2].invert_yaxis()
    axes[2].set(xlabel="ms per step (batch 32, SST-2, max_length 64)", title="where a step's time goes")
    axes[2].legend()
    m = result["machine"]
    fig.suptitle(f"splitpriv split training, all-MiniLM-L6-v2, in process; {m['cpu_count']} cores, torch {m['torch']}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer points and steps (a minute or two)")
    parser.add_argument("--wire-dtype", default="float16", help="wire dtype of the profiled steps")
    args = parser.parse_args()
    quiet()
    from splitpriv.roles.vendor import Vendor

    batches = [8, 32, 64] if args.quick else [4, 8, 16, 32, 64, 128]
    lengths = [16, 64, 128] if args.quick else [16, 32, 64, 128, 256]
    steps = 2 if args.quick else 5
    prof_steps = 3 if args.quick else 10
    m = machine()
    vendor = Vendor()
    print("step time (in-process split, k=0, LoRA, d_chi eta=20, frozen bottom):")
    result = {"machine": m, "quick": args.quick, "scaling": scaling(vendor, batches, lengths, steps)}
    texts, labels = load_texts(32 * (prof_steps + 1))
    result["profile"] = [profile(vendor, texts, labels, b, prof_steps, args.wire_dtype) for b in ("frozen", "trained")]
    with vendor_service() as (url, _):
        result["http_roundtrip_per_step_s"] = http_roundtrip(url, 32, 64, 384, 5 if args.quick else 20, args.wire_dtype)
    for p in result["profile"]:
        total = p["step_s"]
        print(f"\nwhere one step's time goes ({p['bottom']} bottom, {p['wire_dtype']} wire, SST-2 batch 32, "
              f"max_length 64, mean of {p['steps']} steps): {1e3 * total:.0f} ms")
        rows = [[name, 1e3 * s, f"{100 * s / total:.1f}%"] for name, s in p["groups_s"].items()]
        print_table(rows, ["phase", "ms", "share"])
        detail = [[name, 1e3 * s] for name, s in p["phases_s"].items()]
        print_table(detail, ["  call", "ms"])
    print("\nOpenMP wait policy (each in a fresh process):")
    result["wait_policy"] = wait_policy(2 if args.quick else 5, 1 if args.quick else 2)
    rt = result["http_roundtrip_per_step_s"]
    base = result["profile"][0]["step_s"]
    print(f"\nHTTP loopback round trip of one step's messages (vendor computing nothing): {1e3 * rt:.1f} ms "
          f"= {100 * rt / base:.1f}% of an in-process frozen-bottom step")
    result["ratios"] = {
        "scaling.http_roundtrip_vs_step_ratio": rt / base,
        "scaling.serialization_share": result["profile"][0]["groups_s"]["serialization (safetensors, every message)"] / base,
        "scaling.wire_codec_share": result["profile"][0]["groups_s"]["wire encode/decode (cast, pack/unpack real tokens)"] / base,
        "scaling.omp_default_vs_passive_step_time_ratio": result["wait_policy"]["median_step_s"]["default"]
        / result["wait_policy"]["median_step_s"]["PASSIVE"],
    }
    write_result("scaling", result)
    plot(result, common.RESULTS / "scaling.png")
    return result


if __name__ == "__main__":
    main()
