"""``splitpriv attack``: what the vendor recovers from what it observes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from splitpriv.attacks.registry import ATTACKS
from splitpriv.cli.app import Mechanism, app, clean_errors, quiet_libraries
from splitpriv.cli.options import choices, with_attack_options, with_mechanism_parameters


Attack = choices("Attack", [*ATTACKS.names(), "all"])
ATTACK_HELP = "which attack; all: every inversion attack that applies. " + "; ".join(
    f"{name}: {entry.description}" for name, entry in ATTACKS.items())


@app.command()
@clean_errors
@with_attack_options
@with_mechanism_parameters
def attack(
    attack: Attack = typer.Option("all", help=ATTACK_HELP),
    dataset: Optional[str] = typer.Option(None, help="the customer's data (default: the --run's dataset, else sst2; "
                                          "aia defaults to blog_authorship)"),
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
    privatizer: Optional[str] = typer.Option(None, help="a fresh privatizer before the mechanism, e.g. "
                                             "bottleneck:r=16 (its initial weights; --run attacks trained ones)"),
    run: Optional[Path] = typer.Option(None, "--run", help="attack a finished `splitpriv train --out` run: its "
                                       "model, k, mechanism, CTI and privatizer, through its customer's final "
                                       "bottom (trained weights included); replaces those options"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    attack_options: dict = None,
):
    """Attack what the vendor observes; empirical privacy = 1 − the strongest attack's success. The options after
    --json are the attacks' own (each attack takes those it declares)."""
    from splitpriv.attacks.runner import run_attack
    from splitpriv.config import PrivacyConfig

    quiet_libraries()
    setting = dict(n_bottom_layers=bottom_layers, mechanism={"name": mechanism.value, **mechanism_params}, cti=cti,
                   cti_multiplier=cti_multiplier, model=model, privatizer=privatizer)
    PrivacyConfig(mechanism=mechanism.value, **mechanism_params, privatizer=privatizer).validate()
    if run is not None:
        if mechanism.value != "none" or privatizer is not None or cti or bottom_layers or model:
            raise ValueError("--run takes the setting from the run: give either --run or --mechanism/--privatizer/"
                             "--cti/--bottom-layers/--model")
        setting = _run_setting(run, dataset, seed)
    dataset = dataset or setting.pop("dataset", None) or "sst2"
    setting.pop("dataset", None)
    result = run_attack(attack.value, dataset=dataset, split=split, limit=limit, seed=seed,
                        progress=progress, **setting, **attack_options)
    if as_json:
        typer.echo(json.dumps(result, default=str))
        return
    for name, res in (result.get("results") or {result["attack"]: result}).items():
        typer.echo(f"{name:>10}: success {100 * res['success']:.1f}%  "
                   + "  ".join(f"{k}={v:.3f}" for k, v in res.items() if isinstance(v, float) and k != "success"))
    if "empirical_privacy" in result:
        typer.echo(f"empirical privacy = {100 * result['empirical_privacy']:.1f}%"
                   + (f" (strongest: {result['strongest_attack']})" if result.get("strongest_attack") else ""))


def _run_setting(run: Path, dataset: str, seed: int) -> dict:
    """The attack setting of a finished run folder: what its customer sent, with its final bottom; when the run
    trained on a seeded sample of ``dataset``'s train split drawn with ``seed``, the rest of that split is public
    in-domain text for the attacker (``customer_train_limit``)."""
    from splitpriv.data.loaders import canonical_dataset_name
    from splitpriv.models import SEQUENCE_CLASSIFICATION
    from splitpriv.parts import load_bottom
    from splitpriv.runs.run import RUN_FILE, RunConfig
    from splitpriv.tasks import task_of

    if not (run / RUN_FILE).is_file() or not (run / "customer").is_dir():
        raise FileNotFoundError(f"{run} is not a finished run folder (it needs {RUN_FILE} and customer/, as "
                                "`splitpriv train --out` writes them)")
    config = RunConfig.from_dict(json.loads((run / RUN_FILE).read_text()))
    if task_of(config.task).model_task != SEQUENCE_CLASSIFICATION:
        raise ValueError(f"--run attacks classification runs; {run} is a {config.task} run")
    p = config.privacy
    same_sample = (config.train_limit and config.train.seed == seed
                   and canonical_dataset_name(config.dataset) == canonical_dataset_name(dataset or config.dataset))
    return dict(n_bottom_layers=config.bottom_layers, mechanism=p.mechanism_config, cti=p.cti,
                cti_multiplier=p.cti_multiplier, model=config.model, privatizer=p.privatizer,
                bottom=load_bottom(run / "customer"),
                customer_train_limit=config.train_limit if same_sample else None, dataset=config.dataset)
