"""``splitpriv pretrain-privatizer`` and ``privatize``: the vendor's pre-training of a learned privatizer, and the
export of exactly what the vendor receives from a run's customer (for auditing with any attack)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from splitpriv.cli.app import Mechanism, Task, app, clean_errors, quiet_libraries
from splitpriv.cli.options import with_mechanism_parameters
from splitpriv.privacy.privatizer import describe_privatizers


@app.command("pretrain-privatizer")
@clean_errors
@with_mechanism_parameters
def pretrain_privatizer(
    privatizer: str = typer.Option(..., help="spec name:key=value,... e.g. bottleneck:r=16,clip=1. "
                                   + describe_privatizers()),
    out: Path = typer.Option(..., help="model folder to write (serve it with `splitpriv serve --model OUT`, or "
                             "train with `--model OUT --privatizer SAME-SPEC`)"),
    mechanism: Mechanism = typer.Option("dchi", help="the noise customers will add in r dimensions (its parameters: "
                                        "the options named after them below)"),
    mechanism_params: dict = None,
    bottom_layers: int = typer.Option(0, "--bottom-layers", "-k", help="blocks in the customers' bottom"),
    task: Task = typer.Option("sequence-classification", help="causal-lm: the customers keep bottom and tail, the "
                              "vendor's middle is distilled on the next-token distribution through its copy of the "
                              "tail"),
    tail_layers: int = typer.Option(0, "--tail-layers", "-j", help="causal-lm: blocks in the customers' tail"),
    steps: int = typer.Option(600, help="AdamW steps on public text (WikiText-2)"),
    batch_size: int = typer.Option(32),
    max_length: int = typer.Option(64),
    lr: Optional[float] = typer.Option(None, help="learning rate of projection, up-projection and the vendor's "
                                       "blocks (default 1e-3; causal-lm 1e-4: every block of the middle trains)"),
    public_init: Optional[bool] = typer.Option(None, "--public-init/--no-public-init",
                                               help="start the halves from principal components of the bottom's "
                                               "outputs on public text (default: causal-lm only)"),
    seed: int = typer.Option(0),
    model: Optional[str] = typer.Option(None, help="Hugging Face id or folder (default: all-MiniLM-L6-v2, offline)"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Vendor, before any customer: train a privatizer's projection, its up-projection and a noise-adapted top (a
    causal LM's middle) by distilling the clean model on public text; the projection then ships inside every bottom
    package."""
    from splitpriv.config import PrivacyConfig
    from splitpriv.privacy.privatizer import parse_privatizer_spec
    from splitpriv.roles.vendor.privatizer_pretrain import pretrain_privatizer as pretrain
    from splitpriv.roles.vendor.robust_top import RobustTopConfig

    quiet_libraries()
    spec = parse_privatizer_spec(privatizer)
    if spec is None:
        raise ValueError("pretrain-privatizer needs a privatizer, e.g. --privatizer bottleneck:r=16")
    if lr is None:
        lr = 1e-4 if task.value == "causal-lm" else 1e-3
    config = RobustTopConfig(privacy=PrivacyConfig(mechanism=mechanism.value, **mechanism_params),
                             n_bottom_layers=bottom_layers, steps=steps, batch_size=batch_size,
                             max_length=max_length, lr=lr, seed=seed)
    meta = pretrain(spec, config, out, model=model, task=task.value, n_tail_layers=tail_layers,
                    public_init=public_init, progress=progress)
    typer.echo(f"privatizer {spec} pre-trained into {out}: held-out {meta['heldout_error']} "
               f"{meta['heldout_error_before']:.3f} -> {meta['heldout_error_after']:.3f} in {meta['wall_time_s']:.0f} s")


@app.command()
@clean_errors
def privatize(
    run_dir: Path = typer.Option(..., "--run", help="folder of a finished `splitpriv train --out` run"),
    input: Path = typer.Option(..., "--input", "-i", help="texts, one per line"),
    out: Path = typer.Option(..., help="safetensors file: hidden [N, T, r], attention_mask [N, T], input_ids [N, T]"),
    limit: Optional[int] = typer.Option(None, help="only the first N texts"),
    noise_seed: Optional[int] = typer.Option(None, help="fixed noise (default: fresh from the OS on every call)"),
):
    """Run the customer's side of a run (bottom, privatizer, mechanism) on texts and write exactly what the vendor
    receives; input_ids are for evaluation only (never sent in real use)."""
    from splitpriv.runs.wire_export import privatize_run, write_privatized

    quiet_libraries()
    if not input.is_file():
        raise FileNotFoundError(f"input file {input} does not exist")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be a positive integer, got {limit}")
    texts = [t.strip() for t in input.read_text(encoding="utf-8").splitlines() if t.strip()][:limit]
    tensors = privatize_run(run_dir, texts, noise_seed=noise_seed)
    write_privatized(tensors, out, run_dir)
    n, t, r = tensors["hidden"].shape
    typer.echo(f"wrote {out}: hidden [{n}, {t}, {r}], attention_mask and input_ids [{n}, {t}]")
