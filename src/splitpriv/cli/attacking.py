"""``splitpriv attack``: what the vendor recovers from what it observes."""

from __future__ import annotations

import json
from enum import Enum
from typing import Optional

import typer

from splitpriv.cli.app import Head, Mechanism, NoiseMode, app, clean_errors, quiet_libraries



class Attack(str, Enum):
    nn = "nn"
    map = "map"
    opt = "opt"
    learned = "learned"
    average = "average"
    cti = "cti"
    aia = "aia"
    label = "label"
    all = "all"


@app.command()
@clean_errors
def attack(
    attack: Attack = typer.Option(Attack.all, help="which attack (all: every applicable inversion attack)"),
    dataset: str = typer.Option("sst2", help="the customer's data (aia defaults to blog_authorship)"),
    split: str = typer.Option("dev"),
    bottom_layers: int = typer.Option(0, "--bottom-layers", "-k"),
    mechanism: Mechanism = typer.Option(Mechanism.none),
    eta: Optional[float] = typer.Option(None),
    sigma: Optional[float] = typer.Option(None),
    scale: Optional[float] = typer.Option(None),
    cti: bool = typer.Option(False, "--cti"),
    cti_multiplier: float = typer.Option(2.0),
    noise: NoiseMode = typer.Option(NoiseMode.per_step, help="for the averaging attack: per-step or once"),
    epochs: int = typer.Option(3, help="for the averaging attack: how many looks the vendor gets"),
    head: Head = typer.Option(Head.vendor, help="for the label attack: who holds the head"),
    label_dp_epsilon: Optional[float] = typer.Option(None, help="for the label attack: label DP of the customer"),
    attribute: str = typer.Option("gender", help="for aia: gender or age_group"),
    limit: int = typer.Option(200, help="customer samples attacked"),
    seed: int = typer.Option(0),
    model: Optional[str] = typer.Option(None),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
):
    """Attack what the vendor observes; empirical privacy = 1 − the strongest attack's success."""
    from splitpriv.attacks.runner import run_attack

    quiet_libraries()
    kwargs = dict(dataset=dataset, split=split, n_bottom_layers=bottom_layers, mechanism=mechanism.value, eta=eta,
                  sigma=sigma, scale=scale, cti=cti, cti_multiplier=cti_multiplier, limit=limit, seed=seed,
                  model=model, progress=progress and not as_json)
    if attack in (Attack.average, Attack.all):
        kwargs.update(noise="once" if noise == NoiseMode.once else "fresh", epochs=epochs)
    if attack == Attack.label:
        kwargs.update(head=head.value, label_dp_epsilon=label_dp_epsilon)
    if attack == Attack.aia:
        kwargs.update(attribute=attribute)
    if mechanism != Mechanism.none:
        from splitpriv.config import PrivacyConfig

        PrivacyConfig(mechanism=mechanism.value, eta=eta, sigma=sigma, scale=scale).validate()
    result = run_attack(attack.value, **kwargs)
    if as_json:
        typer.echo(json.dumps(result, default=str))
        return
    for name, res in (result.get("results") or {result["attack"]: result}).items():
        typer.echo(f"{name:>10}: success {100 * res['success']:.1f}%  "
                   + "  ".join(f"{k}={v:.3f}" for k, v in res.items() if isinstance(v, float) and k != "success"))
    typer.echo(f"empirical privacy = {100 * result['empirical_privacy']:.1f}%"
               + (f" (strongest: {result['strongest_attack']})" if result.get("strongest_attack") else ""))

