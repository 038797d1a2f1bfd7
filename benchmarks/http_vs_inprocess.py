"""Training throughput over HTTP vs in process, and the bytes one training step puts on the wire.

The same short split run (default: 20 steps, batch 32, max_length 64, k = 0, LoRA, no noise) is timed with the
customer talking to a Vendor in its own process (InProcessTransport) and to a vendor service in a separate
process on a loopback port (HttpTransport, ``splitpriv.service.serve``). Runs alternate, ``--repeats`` times
each. Reported: steps/s (best and median run: on a shared machine the best run is the least disturbed one) and
CPU seconds per step summed over every process involved (this one, and the service's), which other load on the
machine inflates less. Then the cost of the wire alone: a training step's forward and backward sent again (the
vendor answers a repeated step id from its store, without computing), fastest of ``--replays``.

    python benchmarks/http_vs_inprocess.py [--steps 20] [--batch-size 32] [--max-length 64] [--k 0] [--repeats 3]

Bytes are message bodies (what both transports count); HTTP adds its request and response headers on top
(about 0.3 KB per call here).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_texts(n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    from splitpriv.data import DatasetNotFoundError, load_dataset

    try:
        ds = load_dataset("sst2", "train", limit=n, seed=seed)
    except DatasetNotFoundError:
        ds = load_dataset("sst2-sample", "train")
    texts, labels = list(ds.texts), list(ds.labels)
    while len(texts) < n:  # a small sample: repeat it
        texts, labels = texts + ds.texts, labels + ds.labels
    return texts[:n], labels[:n]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    import httpx

    code = f"from splitpriv.service import serve; serve(port={port}, log_level='warning', checkpoint_every=None)"
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the vendor service exited with {proc.returncode}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=1).raise_for_status()
            return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("the vendor service did not come up")


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of this process (pid None) or of another one (Linux /proc)."""
    if pid is None:
        return time.process_time()
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(transport, args, texts, labels, server_pid: int | None = None) -> dict:
    from splitpriv.config import PrivacyConfig, TrainConfig
    from splitpriv.contract import SessionConfig
    from splitpriv.roles.customer import Customer

    session = SessionConfig(n_bottom_layers=args.k, total_steps=args.steps, tuning={"method": "lora"})
    train = TrainConfig(batch_size=args.batch_size, max_length=args.max_length, seed=0, noise_seed=0)
    customer = Customer.open(transport, session, PrivacyConfig(mechanism="none"), train)
    sent0, received0 = transport.bytes_sent, transport.bytes_received
    cpu0 = cpu_seconds(None) + (cpu_seconds(server_pid) if server_pid else 0.0)
    result = customer.fit(texts, labels, progress=False)
    cpu1 = cpu_seconds(None) + (cpu_seconds(server_pid) if server_pid else 0.0)
    steps = len(result["losses"])
    out = {
        "steps_per_s": steps / result["train_seconds"],
        "cpu_per_step": (cpu1 - cpu0) / steps,
        "sent_per_step": (transport.bytes_sent - sent0) / steps,
        "received_per_step": (transport.bytes_received - received0) / steps,
        "bottom_package": received0,
        "final_loss": result["losses"][-1],
    }
    transport.close()
    return out


def wire_cost(transport, args, replays: int) -> float:
    """Seconds for one step's forward + backward when the vendor computes nothing (repeated step ids)."""
    import torch

    from splitpriv.contract import BackwardRequest, ForwardRequest, SessionConfig

    info = transport.open_session(SessionConfig(n_bottom_layers=args.k, total_steps=10))
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.batch_size, args.max_length, info.d_model, generator=g)
    mask = torch.ones(args.batch_size, args.max_length, dtype=torch.long)
    forward = ForwardRequest(info.session_id, 1, hidden, mask)
    outputs = transport.forward(forward).outputs
    backward = BackwardRequest(info.session_id, 1, torch.randn(outputs.shape, generator=g))
    best_forward = min(_timed(transport.forward, forward) for _ in range(replays))
    transport.backward(backward)
    best_backward = min(_timed(transport.backward, backward) for _ in range(replays))
    transport.close()
    return best_forward + best_backward


def _timed(fn, arg) -> float:
    start = time.perf_counter()
    fn(arg)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--k", type=int, default=0, help="bottom layers held by the customer")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--url", help="an already running vendor service (else one is started on a free port)")
    args = parser.parse_args()

    from splitpriv.roles.vendor import Vendor
    from splitpriv.transport import InProcessTransport
    from splitpriv.transport.http_client import HttpTransport

    texts, labels = load_texts(args.steps * args.batch_size)
    server = None
    url = args.url
    if url is None:
        port = free_port()
        server = start_server(port)
        url = f"http://127.0.0.1:{port}"
    try:
        vendor = Vendor()
        results = {"in process": [], "http": []}
        for _ in range(args.repeats):
            results["in process"].append(run(InProcessTransport(vendor), args, texts, labels))
            results["http"].append(run(HttpTransport(url), args, texts, labels, server.pid if server else None))
        wire = {"in process": wire_cost(InProcessTransport(vendor), args, args.replays),
                "http": wire_cost(HttpTransport(url), args, args.replays)}
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)

    print(f"{args.steps} steps, batch {args.batch_size}, max_length {args.max_length}, k={args.k}, LoRA, no noise; "
          f"{args.repeats} runs each, alternating")
    best, med, cpu = {}, {}, {}
    for name, runs in results.items():
        best[name] = max(r["steps_per_s"] for r in runs)
        med[name] = statistics.median(r["steps_per_s"] for r in runs)
        cpu[name] = statistics.median(r["cpu_per_step"] for r in runs)
        r = runs[0]
        each = ", ".join(f"{x['steps_per_s']:.2f}" for x in runs)
        print(f"  {name:10s}: best {best[name]:5.2f} steps/s, median {med[name]:5.2f} (runs: {each}); "
              f"{cpu[name]:.3f} CPU s/step")
    r = results["http"][0]
    print(f"  bytes per training step (message bodies): {r['sent_per_step'] / 1e6:.3f} MB to the vendor "
          f"(forward + backward) + {r['received_per_step'] / 1e3:.2f} KB back; "
          f"bottom package once: {r['bottom_package'] / 1e6:.1f} MB")
    print(f"  ratio http / in process, steps/s: best {best['http'] / best['in process']:.3f}, "
          f"median {med['http'] / med['in process']:.3f}; CPU s/step: {cpu['http'] / cpu['in process']:.3f}")
    print(f"  the wire alone per step (repeated step ids, no compute): in process {1e3 * wire['in process']:.1f} ms, "
          f"http {1e3 * wire['http']:.1f} ms; a whole step in process (best run) {1e3 / best['in process']:.0f} ms")
    same = all(a["final_loss"] == b["final_loss"] for a, b in zip(results["in process"], results["http"]))
    print(f"  identical losses over both transports: {same}")


if __name__ == "__main__":
    main()
