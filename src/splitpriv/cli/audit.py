"""``splitpriv audit``: what the vendor could read of the customer's own file, as a report, run offline at home."""

from __future__ import annotations

from typing import Optional

import typer

from splitpriv.cli.app import Mechanism, app, clean_errors, quiet_libraries
from splitpriv.cli.options import with_attack_options, with_mechanism_parameters


@app.command()
@clean_errors
@with_attack_options
@with_mechanism_parameters
def audit(
    file: str = typer.Option(..., "--file", help="your texts: a .csv, .tsv or .jsonl file"),
    text_column: str = typer.Option("text", help="the column holding the texts"),
    label_column: Optional[str] = typer.Option(None, help="the task's label column: task words and label leakage"),
    attribute_column: Optional[str] = typer.Option(None, help="an author attribute column: attribute advantage"),
    model: Optional[str] = typer.Option(None, help="the vendor's model (default MiniLM)"),
    bottom_layers: int = typer.Option(..., "--bottom-layers", "-k", help="blocks the customer runs at home"),
    mechanism: Mechanism = typer.Option("none", help="the customer's mechanism (its parameters: the options named "
                                        "after them below)"),
    mechanism_params: dict = None,
    privatizer: Optional[str] = typer.Option(None, help="a learned privatizer before the mechanism, e.g. "
                                             "bottleneck:r=16"),
    cti: bool = typer.Option(False, "--cti", help="the customer uses CTI (needs --label-column)"),
    cti_multiplier: float = typer.Option(2.0),
    limit: Optional[int] = typer.Option(200, help="rows of the file audited (a seeded sample); 0: all"),
    seed: int = typer.Option(0),
    sample: int = typer.Option(8, help="sentences shown as the vendor would read them"),
    label_limit: int = typer.Option(64, help="rows of the simulated training run the label attack reads"),
    attacks: Optional[str] = typer.Option(None, help="comma-separated inversion attacks to run (default: every one "
                                          "that applies)"),
    curve: bool = typer.Option(True, "--curve/--no-curve", help="the privacy curve over the noise parameter"),
    frontier: str = typer.Option("results/frontier.json", help="measured frontier utilities, when present"),
    out: str = typer.Option(..., "--out", help="folder for audit.json, report.html, report.md"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    attack_options: dict = None,
):
    """Run the vendor's attacks on your own texts, offline, and write a report of what it could read. The options
    after --progress are the attacks' own (e.g. --head and --label-dp-epsilon for the label attack)."""
    from splitpriv.audit import AuditConfig, write_audit
    from splitpriv.config import PrivacyConfig

    quiet_libraries()
    PrivacyConfig(mechanism=mechanism.value, **mechanism_params).validate()
    if privatizer is not None:
        from splitpriv.privacy.privatizer import parse_privatizer_spec

        privatizer = parse_privatizer_spec(privatizer)
    config = AuditConfig(file=file, text_column=text_column, label_column=label_column,
                         attribute_column=attribute_column, model=model, n_bottom_layers=bottom_layers,
                         mechanism={"name": mechanism.value, **mechanism_params}, privatizer=privatizer, cti=cti,
                         cti_multiplier=cti_multiplier, limit=limit or None, seed=seed, sample_size=sample,
                         label_limit=label_limit, curve=curve,
                         attacks=tuple(a.strip() for a in attacks.split(",") if a.strip()) if attacks else None,
                         frontier=frontier, attack_options=attack_options,
                         progress=progress)
    result = write_audit(config, out)
    typer.echo(result["verdict"])
    typer.echo(f"empirical privacy {100 * result['empirical_privacy']:.1f}% (strongest: {result['strongest_attack']});"
               f" floor {100 * result['floor']:.1f}%; report: {out}/report.html")
