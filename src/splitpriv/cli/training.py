"""``splitpriv train`` and ``robust-top``: the customer's fine-tuning (every task) and the vendor's adaptation of its
top to noise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from splitpriv.cli.app import (
    BottomMode,
    Denoise,
    Head,
    Mechanism,
    Method,
    NoiseMode,
    Task,
    WireDtype,
    app,
    clean_errors,
    quiet_libraries,
)
from splitpriv.cli.options import with_mechanism_parameters



@app.command()
@clean_errors
@with_mechanism_parameters
def train(
    dataset: str = typer.Option("sst2-sample", help="sst2, sst2-sample (embedded), financial_phrasebank, blog_authorship; "
                                "causal-lm: sst2, sst2-sample, financial_phrasebank (as instructions), wikitext2, or a "
                                ".jsonl file with prompt/response"),
    task: Task = typer.Option("sequence-classification", help="causal-lm: the customer keeps bottom and tail, the "
                              "vendor tunes the middle; next-token loss on the responses at home"),
    tail_layers: int = typer.Option(0, "--tail-layers", "-j", help="causal-lm: blocks in the customer's tail"),
    eval_before: bool = typer.Option(False, "--eval-before", help="causal-lm: also score the untuned model"),
    method: Method = typer.Option("lora", help="tuning method on the vendor's top"),
    bottom_layers: int = typer.Option(0, "--bottom-layers", "-k", help="blocks in the customer's bottom"),
    mechanism: Mechanism = typer.Option("none", help="privacy mechanism on token representations "
                                        "(its parameters: the options named after them below)"),
    mechanism_params: dict = None,
    cti: bool = typer.Option(False, "--cti", help="Contributing Token Identification: less noise on task tokens"),
    cti_fraction: float = typer.Option(0.005, help="share of seen token ids selected by CTI"),
    cti_multiplier: float = typer.Option(2.0, help="eta multiplier for contributing tokens"),
    bottom: BottomMode = typer.Option(BottomMode.frozen, help="freeze the bottom or train it from returned gradients"),
    noise: NoiseMode = typer.Option("auto", help="once: each sentence privatized once and re-sent every epoch; "
                                    "per-step: fresh noise every step (with several epochs the vendor can average "
                                    "its looks: warned); auto: once when epochs > 1 and the bottom is frozen"),
    head: Head = typer.Option(Head.vendor, help="who holds pooler + classifier (customer keeps labels' gradients home)"),
    label_dp_epsilon: Optional[float] = typer.Option(None, help="label DP by randomized response"),
    grad_clip: Optional[float] = typer.Option(None, help="clip each example's returned gradient to this L2 norm "
                                              "(a causal LM's gradient reveals its response tokens)"),
    grad_sigma: float = typer.Option(0.0, help="Gaussian noise on the returned gradient, standard deviation "
                                     "grad_sigma * grad_clip per coordinate of a real token"),
    denoise: Denoise = typer.Option("none", help="nn / map: the vendor maps each received vector to its nearest "
                                    "(map: most probable, given the declared noise) token embedding before its top "
                                    "(k = 0, frozen bottom; costs no privacy)"),
    privatizer: Optional[str] = typer.Option(None, help="learned privatizer before the mechanism, e.g. "
                                             "bottleneck:r=16,clip=1 (noise then in r dimensions)"),
    train_limit: Optional[int] = typer.Option(None, help="train on a seeded random subset of this size"),
    eval_limit: Optional[int] = typer.Option(None, help="evaluate on a seeded random subset of this size"),
    epochs: int = typer.Option(1),
    batch_size: int = typer.Option(32),
    max_length: Optional[int] = typer.Option(None, help="tokens per example (default 64; causal-lm 256)"),
    wire_dtype: WireDtype = typer.Option(WireDtype.float32, help="dtype of the representations on the wire "
                                         "(float16/bfloat16 halve the bytes; the vendor computes in float32)"),
    lr: float = typer.Option(2e-3, help="learning rate of the vendor's top (and a customer-held head)"),
    bottom_lr: float = typer.Option(5e-5, help="learning rate of a trained bottom"),
    privatizer_lr: Optional[float] = typer.Option(None, help="learning rate of the privatizer's projection when "
                                                  "the bottom is trained (default: --bottom-lr)"),
    privatizer_warm_start: int = typer.Option(0, help="epochs of training the privatizer at home on the customer's "
                                              "own labels (noise included, nothing sent) before split training"),
    warm_start_blocks: bool = typer.Option(False, "--warm-start-blocks", help="also train the bottom's k blocks "
                                           "during the warm start (at home, at --bottom-lr), then freeze them"),
    lora_r: int = typer.Option(8, help="LoRA rank"),
    seed: int = typer.Option(0, help="data order, initialisation and dropout"),
    dropout: bool = typer.Option(True, "--dropout/--no-dropout", help="dropout in the vendor's top while training; "
                                 "without it, a vendor that batches tenants runs this session's training forwards "
                                 "in batches with other customers' (serve --batch-train)"),
    noise_seed: Optional[int] = typer.Option(None, help="fixes the noise (experiments only: keep it secret in real use)"),
    model: Optional[str] = typer.Option(None, help="Hugging Face id or folder (default: all-MiniLM-L6-v2, offline)"),
    out: Optional[Path] = typer.Option(None, help="run folder: metrics.json, vendor adapter, customer bottom"),
    centralized: bool = typer.Option(False, "--centralized", help="train the non-private unsplit baseline only"),
    baseline: bool = typer.Option(False, "--baseline", help="also train the centralized baseline and compare"),
    vendor: Optional[str] = typer.Option(None, help="vendor service URL (default: vendor in this process)"),
    api_key: Optional[str] = typer.Option(None, envvar="SPLITPRIV_API_KEY", show_default=False,
                                          help="the vendor's API key for opening the session (env SPLITPRIV_API_KEY)"),
    ca_file: Optional[Path] = typer.Option(None, help="CA certificate (PEM) that signed the vendor's TLS certificate"),
    keep_session: bool = typer.Option(False, "--keep-session", help="--vendor: leave the session open at the end "
                                      "(for `splitpriv predict --run DIR`; `splitpriv close --run DIR` ends it)"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue the --vendor run in this folder after "
                                          "either side was killed (its other options are read from the folder)"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    as_json: bool = typer.Option(False, "--json", help="print metrics as JSON"),
):
    """Fine-tune the vendor's model on private labelled text: split, privatize, train over the wire, evaluate.
    With --vendor the session is closed at the end unless --keep-session."""
    if resume is not None:
        return _resume(resume, vendor, ca_file, keep_session, progress, as_json)
    from splitpriv.config import PrivacyConfig, TrainConfig
    from splitpriv.runs.run import RunConfig, run
    from splitpriv.tasks import task_of

    quiet_libraries()
    method_params = {"r": lora_r} if method.value == "lora" else {}
    max_length = max_length or task_of(task.value).default_max_length
    config = RunConfig(
        dataset=dataset, task=task.value, tail_layers=tail_layers, eval_before=eval_before, train_limit=train_limit,
        eval_limit=eval_limit, model=model, method=method.value,
        method_params=method_params, bottom_layers=bottom_layers, head=head.value, denoise=denoise.value, lr=lr,
        dropout=dropout,
        centralized=centralized,
        baseline=baseline, vendor_url=vendor,
        privacy=PrivacyConfig(mechanism=mechanism.value, **mechanism_params, cti=cti,
                              cti_fraction=cti_fraction, cti_multiplier=cti_multiplier, noise=noise.value,
                              label_dp_epsilon=label_dp_epsilon, privatizer=privatizer, grad_clip=grad_clip,
                              grad_sigma=grad_sigma),
        train=TrainConfig(epochs=epochs, batch_size=batch_size, max_length=max_length, bottom=bottom.value,
                          bottom_lr=bottom_lr, privatizer_lr=privatizer_lr,
                          privatizer_warm_start=privatizer_warm_start, warm_start_blocks=warm_start_blocks,
                          seed=seed, noise_seed=noise_seed,
                          wire_dtype=wire_dtype.value),
    )
    transport = None
    if vendor and not centralized:
        from splitpriv.transport import make_transport

        options = {"api_key": api_key} if api_key else {}
        if ca_file is not None:
            options["ca_file"] = str(ca_file)
        transport = make_transport(vendor, **options)
    try:
        metrics = run(config, out, progress=progress, transport=transport)
    finally:
        if transport is not None and transport.session is not None and not keep_session:
            _close_quietly(transport)
    summary = None if as_json else task_of(task.value).summary(metrics, out)
    if summary is not None:
        typer.echo(summary)
    elif as_json:
        typer.echo(json.dumps({k: v for k, v in metrics.items() if k != "losses"}, default=str))
    else:
        _print_summary(metrics, out)


def _resume(run_dir: Path, vendor: str | None, ca_file: Path | None, keep_session: bool, progress: bool,
            as_json: bool) -> None:
    from splitpriv.runs.run import resume

    quiet_libraries()
    options = {"ca_file": str(ca_file)} if ca_file else {}
    transport = None
    try:
        metrics, transport = resume(run_dir, vendor, progress=progress, **options)
    finally:
        if transport is not None and not keep_session:
            _close_quietly(transport)
    if as_json:
        typer.echo(json.dumps({k: v for k, v in metrics.items() if k != "losses"}, default=str))
    else:
        _print_summary(metrics, run_dir)


def _close_quietly(transport) -> None:
    """Close the run's session on the vendor; a failure to do so is a warning (the run's results stand)."""
    try:
        transport.close()
    except Exception as exc:  # noqa: BLE001 - the vendor may be gone; say so, keep the results
        typer.secho(f"warning: could not close session on the vendor ({exc}); close it later with "
                    "`splitpriv close --run DIR`", fg=typer.colors.YELLOW, err=True)


def _print_summary(metrics: dict, out: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    cfg = metrics["config"]
    priv = cfg["privacy"]
    setting = f"{metrics['mode']}, k={cfg['bottom_layers']}, {cfg['method']}, bottom {cfg['train']['bottom']}"
    if metrics["mode"] == "split":
        mech = priv["mechanism"]
        noise = mech["name"] + "".join(f" {k}={v}" for k, v in mech.items() if k != "name") + (
            " +CTI" if priv["cti"] else "")
        setting += f", {noise}, noise {priv['noise']}, head {cfg['head']}"
        if cfg.get("denoise", "none") != "none":
            setting += f", vendor denoise {cfg['denoise']}"
        if priv.get("privatizer"):
            setting += ", privatizer " + ",".join(f"{k}={v}" for k, v in priv["privatizer"].items())
    table = Table(title=f"splitpriv: {metrics['dataset']} ({metrics['n_train']} train / {metrics['n_eval']} eval)")
    table.add_column("run")
    table.add_column("accuracy", justify="right")
    table.add_column("macro-F1", justify="right")
    table.add_column("train samples/s", justify="right")
    table.add_row(setting, f"{metrics['accuracy']:.4f}", f"{metrics['macro_f1']:.4f}", f"{metrics['train_samples_per_s']:.1f}")
    if "baseline_accuracy" in metrics:
        table.add_row("centralized baseline (same config, no split, no noise)", f"{metrics['baseline_accuracy']:.4f}",
                      f"{metrics['baseline_macro_f1']:.4f}", f"{metrics['baseline_samples_per_s']:.1f}")
    console = Console()
    console.print(table)
    if "disclosure" in metrics:
        d = metrics["disclosure"]
        console.print(f"bottom shipped to the customer: {d['shipped_parameters']:,} of {d['total_parameters']:,} "
                      f"parameters ({100 * d['shipped_share']:.1f}%)")
    if "accuracy_loss" in metrics:
        console.print(f"accuracy loss against the baseline: {100 * metrics['accuracy_loss']:+.2f} points")
    console.print(f"wall time {metrics['wall_time_s']:.1f} s" + (f"; run folder {out}" if out else ""))


@app.command("robust-top")
@clean_errors
@with_mechanism_parameters
def robust_top(
    out: Path = typer.Option(..., help="folder for the adapted model (serve it with `splitpriv serve --model OUT`)"),
    mechanism: Mechanism = typer.Option("dchi", help="the noise customers will add (its parameters: the options "
                                        "named after them below)"),
    mechanism_params: dict = None,
    bottom_layers: int = typer.Option(0, "--bottom-layers", "-k", help="blocks in the customers' bottom"),
    denoise: Denoise = typer.Option("none", help="adapt to inputs the vendor projects first (serve sessions "
                                    "with the same --denoise)"),
    steps: int = typer.Option(600, help="AdamW steps on public text (WikiText-2)"),
    batch_size: int = typer.Option(32),
    max_length: int = typer.Option(64),
    lr: float = typer.Option(1e-4),
    seed: int = typer.Option(0),
    model: Optional[str] = typer.Option(None, help="Hugging Face id or folder (default: all-MiniLM-L6-v2, offline)"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Vendor, before any customer: adapt the top's blocks to privatized inputs by distillation on public text
    (the bottom stays bit-identical, so privacy is unchanged)."""
    from splitpriv.config import PrivacyConfig
    from splitpriv.roles.vendor.robust_top import RobustTopConfig, distill_robust_top

    quiet_libraries()
    config = RobustTopConfig(privacy=PrivacyConfig(mechanism=mechanism.value, **mechanism_params),
                             n_bottom_layers=bottom_layers, steps=steps, batch_size=batch_size,
                             max_length=max_length, lr=lr, seed=seed, denoise=denoise.value)
    meta = distill_robust_top(config, out, model=model, progress=progress)
    typer.echo(f"adapted model written to {out}: held-out representation error (relative) "
               f"{meta['heldout_error_before']:.3f} -> {meta['heldout_error_after']:.3f} "
               f"in {meta['wall_time_s']:.0f} s")

