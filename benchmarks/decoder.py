"""SmolLM2-135M-Instruct through the three-part split: LoRA training samples/s split (in process, no noise) vs
centralized; greedy generation tokens/s over HTTP vs in process vs transformers' own ``generate``; bytes sent per
generated token against the floor of one d-vector in float16 (d × 2 = 1,152 bytes).

    python benchmarks/decoder.py [--quick]

Writes ``results/decoder.json``. Run alone (the machine's two cores are shared; timings are medians of repeats).
Every path runs once untimed first: the first pass in a process pays one-time costs (torch's lazy kernels and
thread pools, the vendor's session set-up, the first HTTP connection) that would otherwise land on whichever path
happens to run first.
"""

from __future__ import annotations

import argparse
import time

import common
from common import machine, print_table, summarize, vendor_service, write_result

MODEL = "smollm2-135m-instruct"
PROMPT = "Write one sentence about the sea."


def training(n_train: int, repeats: int) -> dict:
    from splitpriv.runs.centralized import CentralizedTrainer
    from splitpriv.config import PrivacyConfig, TrainConfig
    from splitpriv.data.instructions import load_lm_dataset
    from splitpriv.models import load_tokenizer, resolve_model_name
    from splitpriv.contract import SessionConfig
    from splitpriv.roles.customer import Customer
    from splitpriv.roles.vendor import Vendor
    from splitpriv.transport import InProcessTransport

    examples = load_lm_dataset("sst2", "train", load_tokenizer(resolve_model_name(MODEL)), limit=n_train)
    session = SessionConfig(task="causal-lm", n_bottom_layers=2, n_tail_layers=2, total_steps=n_train, lr=2e-3)
    train = TrainConfig(batch_size=8, noise_seed=0)
    vendor = Vendor(MODEL)

    def split_rate(data) -> float:
        customer = Customer.open(InProcessTransport(vendor), session, PrivacyConfig(), train)
        return customer.fit(data, progress=False)["train_samples_per_s"]

    def central_rate(data) -> float:
        return CentralizedTrainer(session, train, MODEL).fit(data)["train_samples_per_s"]

    split_rate(examples[:train.batch_size]), central_rate(examples[:train.batch_size])  # warm-up, untimed
    split, central = [], []
    for i in range(repeats):  # alternate which goes first
        order = (split_rate, central_rate) if i % 2 == 0 else (central_rate, split_rate)
        rates = {f: f(examples) for f in order}
        split.append(rates[split_rate])
        central.append(rates[central_rate])
    return {"split_samples_per_s": summarize(split), "centralized_samples_per_s": summarize(central),
            "split_vs_centralized_ratio": summarize(split)["median"] / summarize(central)["median"],
            "n_train": n_train, "batch_size": 8, "k": 2, "j": 2}


def _customer(transport, wire_dtype: str):
    from splitpriv.config import PrivacyConfig, TrainConfig
    from splitpriv.contract import SessionConfig
    from splitpriv.roles.customer import Customer

    session = SessionConfig(task="causal-lm", n_bottom_layers=2, n_tail_layers=2, total_steps=1)
    return Customer.open(transport, session, PrivacyConfig(), TrainConfig(noise_seed=0, wire_dtype=wire_dtype))


def _tokens_per_s(generate, prompt, n_new: int, repeats: int) -> dict:
    generate(prompt, 2)  # warm-up, untimed
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        out = generate(prompt, n_new)
        rates.append(len(out) / (time.perf_counter() - started))
    return summarize(rates)


def generation(n_new: int, repeats: int) -> dict:
    import torch

    from splitpriv import load_model
    from splitpriv.roles.vendor import Vendor
    from splitpriv.transport import HttpTransport, InProcessTransport

    model, tokenizer = load_model(MODEL, task="causal-lm")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True)

    def hf(ids, n):
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return out[0, len(ids):].tolist()

    result = {"prompt_tokens": len(prompt), "new_tokens": n_new,
              "transformers": _tokens_per_s(hf, prompt, n_new, repeats)}
    local = _customer(InProcessTransport(Vendor(MODEL)), "float32")
    result["inprocess"] = _tokens_per_s(lambda p, n: local.generate(p, n, stop_ids=()), prompt, n_new, repeats)
    with vendor_service(model=MODEL) as (url, _):
        for dtype in ("float32", "float16"):
            transport = HttpTransport(url)
            remote = _customer(transport, dtype)
            key = "http" if dtype == "float32" else "http_float16"
            result[key] = _tokens_per_s(lambda p, n: remote.generate(p, n, stop_ids=()), prompt, n_new, repeats)
            prompt_bytes = _prompt_bytes(transport, remote, prompt)
            sent = transport.bytes_sent
            remote.generate(prompt, n_new + 1, stop_ids=())
            result[f"bytes_per_token_{dtype}"] = (transport.bytes_sent - sent - prompt_bytes) / n_new
            transport.close()
    floor = local.bottom.d_model * 2
    result["bytes_floor_float16"] = floor
    result["bytes_vs_floor_ratio_float16"] = result["bytes_per_token_float16"] / floor
    result["http_vs_inprocess_ratio"] = result["http"]["median"] / result["inprocess"]["median"]
    result["inprocess_vs_transformers_ratio"] = result["inprocess"]["median"] / result["transformers"]["median"]
    return result


def _prompt_bytes(transport, customer, prompt) -> int:
    """Bytes of the prompt's decode request alone (a one-token generation sends only it)."""
    before = transport.bytes_sent
    customer.generate(prompt, 1, stop_ids=())
    return transport.bytes_sent - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    common.quiet()
    repeats = 1 if args.quick else 5
    data = {"training": training(16 if args.quick else 64, repeats),
            "generation": generation(8 if args.quick else 32, repeats), "machine": machine()}
    t, g = data["training"], data["generation"]
    print_table([["training samples/s (split / centralized)", t["split_samples_per_s"]["median"],
                  t["centralized_samples_per_s"]["median"], t["split_vs_centralized_ratio"]],
                 ["generation tokens/s (HTTP / in process)", g["http"]["median"], g["inprocess"]["median"],
                  g["http_vs_inprocess_ratio"]],
                 ["generation tokens/s (in process / transformers)", g["inprocess"]["median"],
                  g["transformers"]["median"], g["inprocess_vs_transformers_ratio"]],
                 ["bytes per new token, float16 wire (measured / floor)", g["bytes_per_token_float16"],
                  g["bytes_floor_float16"], g["bytes_vs_floor_ratio_float16"]]],
                ["what", "a", "b", "a / b"])
    write_result("decoder", data)


if __name__ == "__main__":
    main()
