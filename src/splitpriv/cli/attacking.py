"""``splitpriv attack``: what the vendor recovers from what it observes."""

from __future__ import annotations

import json
from typing import Optional

import typer

from splitpriv.attacks.registry import ATTACKS
from splitpriv.cli.app import Mechanism, app, clean_errors, quiet_libraries
from splitpriv.options import choices, with_attack_options, with_mechanism_parameters


Attack = choices("Attack", [*ATTACKS.names(), "all"])
ATTACK_HELP = "which attack; all: every inversion attack that applies. " + "; ".join(
    f"{name}: {entry.description}" for name, entry in ATTACKS.items())


@app.command()
@clean_errors
@with_attack_options
@with_mechanism_parameters
def attack(
    attack: Attack = typer.Option("all", help=ATTACK_HELP),
    dataset: str = typer.Option("sst2", help="the customer's data (aia defaults to blog_authorship)"),
    split: str = typer.Option("dev"),
    bottom_layers: int = typer.Option(0, "--bottom-layers", "-k"),
    mechanism: Mechanism = typer.Option("none", help="the customer's mechanism (its parameters: the options named "
                                        "after them below)"),
    mechanism_params: dict = None,
    cti: bool = typer.Option(False, "--cti"),
    cti_multiplier: float = typer.Option(2.0),
    limit: int = typer.Option(200, help="customer samples attacked"),
    seed: int = typer.Option(0),
    model: Optional[str] = typer.Option(None),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    attack_options: dict = None,
):
    """Attack what the vendor observes; empirical privacy = 1 − the strongest attack's success. The options after
    --json are the attacks' own (each attack takes those it declares)."""
    from splitpriv.attacks.runner import run_attack
    from splitpriv.config import PrivacyConfig

    quiet_libraries()
    PrivacyConfig(mechanism=mechanism.value, **mechanism_params).validate()
    result = run_attack(attack.value, dataset=dataset, split=split, n_bottom_layers=bottom_layers,
                        mechanism={"name": mechanism.value, **mechanism_params}, cti=cti,
                        cti_multiplier=cti_multiplier, limit=limit, seed=seed, model=model,
                        progress=progress and not as_json, **attack_options)
    if as_json:
        typer.echo(json.dumps(result, default=str))
        return
    for name, res in (result.get("results") or {result["attack"]: result}).items():
        typer.echo(f"{name:>10}: success {100 * res['success']:.1f}%  "
                   + "  ".join(f"{k}={v:.3f}" for k, v in res.items() if isinstance(v, float) and k != "success"))
    if "empirical_privacy" in result:
        typer.echo(f"empirical privacy = {100 * result['empirical_privacy']:.1f}%"
                   + (f" (strongest: {result['strongest_attack']})" if result.get("strongest_attack") else ""))
