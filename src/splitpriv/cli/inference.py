"""``splitpriv predict`` and ``generate``: private inference with a finished run. Texts (or a prompt) → bottom → the
run's privacy mechanism → the vendor → the customer's end at home; ``generate`` lets the customer drive decoding
while the vendor's middle keeps the key/value cache."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from splitpriv.cli.app import app, clean_errors, quiet_libraries


@app.command()
@clean_errors
def predict(
    run_dir: Path = typer.Option(..., "--run", help="folder of a finished `splitpriv train --out` run"),
    input: Optional[Path] = typer.Option(None, "--input", "-i", help="texts, one per line (default: stdin)"),
    vendor: Optional[str] = typer.Option(None, help="vendor service URL (default: the run's vendor)"),
    ca_file: Optional[Path] = typer.Option(None, help="CA certificate (PEM) that signed the vendor's TLS certificate"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per text with class probabilities"),
):
    """Private inference: texts → bottom → the run's privacy mechanism → vendor top → prediction at home."""
    from splitpriv.runs.run import open_run

    quiet_libraries()
    if input is not None and not input.is_file():
        raise FileNotFoundError(f"input file {input} does not exist")
    lines = (input.read_text(encoding="utf-8") if input else sys.stdin.read()).splitlines()
    texts = [t.strip() for t in lines if t.strip()]
    if not texts:
        raise ValueError("no texts to predict: the input is empty")
    customer = open_run(run_dir, vendor, **({"ca_file": str(ca_file)} if ca_file else {}))
    if not customer.task.predicts_labels:
        raise ValueError(f"{run_dir} is a {customer.task.value} run: use `splitpriv generate`")
    probs = customer.predict_logits(texts).softmax(-1)
    labels_file = run_dir / "labels.json"
    names = json.loads(labels_file.read_text()) if labels_file.is_file() else None
    for text, p in zip(texts, probs.tolist()):
        label = max(range(len(p)), key=p.__getitem__)
        name = names[label] if names else str(label)
        if as_json:
            typer.echo(json.dumps({"text": text, "label": name, "probabilities": p}))
        else:
            typer.echo(f"{name}\t{max(p):.3f}\t{text}")


@app.command()
@clean_errors
def generate(
    run_dir: Path = typer.Option(..., "--run", help="folder of a finished `splitpriv train --task causal-lm --out` "
                                 "run"),
    prompt: str = typer.Option(..., help="the user's message (wrapped in the model's chat template)"),
    vendor: Optional[str] = typer.Option(None, help="vendor service URL (default: the run's vendor)"),
    ca_file: Optional[Path] = typer.Option(None, help="CA certificate (PEM) that signed the vendor's TLS certificate"),
    max_new_tokens: int = typer.Option(64, min=1, help="tokens to generate at most (stops at the end of turn)"),
    temperature: float = typer.Option(0.0, min=0.0, help="0 = greedy; else sample from softmax(logits / T)"),
    top_p: float = typer.Option(1.0, min=0.0, max=1.0, help="nucleus sampling: keep the smallest set reaching p"),
    seed: Optional[int] = typer.Option(None, help="sampling seed (default: fresh)"),
    raw: bool = typer.Option(False, "--raw", help="send the prompt as is, without the chat template"),
    as_json: bool = typer.Option(False, "--json", help="print {prompt, answer, tokens, bytes_sent, ...} as JSON"),
):
    """Generate privately: each token costs one privatized vector up (d wide, r with the run's privatizer) and one
    d-vector down."""
    import time

    import torch

    from splitpriv.runs.run import open_run

    quiet_libraries()
    if not prompt.strip():
        raise ValueError("the prompt is empty")
    customer = open_run(run_dir, vendor, **({"ca_file": str(ca_file)} if ca_file else {}))
    if customer.task.predicts_labels:
        raise ValueError(f"{run_dir} is a {customer.task.value} run: use `splitpriv predict`")
    tokenizer = customer.tokenizer
    if raw or not getattr(tokenizer, "chat_template", None):
        ids = tokenizer(prompt)["input_ids"]
    else:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    limit = int(customer.bottom.hf_config.get("max_position_embeddings", 0) or 0)
    if limit and len(ids) + max_new_tokens > limit:
        raise ValueError(f"the prompt has {len(ids)} tokens: with --max-new-tokens {max_new_tokens} it exceeds the "
                         f"model's maximum of {limit}")
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    sent, started = customer.transport.bytes_sent, time.perf_counter()
    tokens = customer.generate(ids, max_new_tokens, temperature=temperature, top_p=top_p, generator=generator)
    seconds = time.perf_counter() - started
    answer = tokenizer.decode(tokens, skip_special_tokens=True)
    if as_json:
        typer.echo(json.dumps({"prompt": prompt, "answer": answer, "tokens": tokens, "prompt_tokens": len(ids),
                               "bytes_sent": customer.transport.bytes_sent - sent, "seconds": seconds}))
    else:
        typer.echo(answer)
