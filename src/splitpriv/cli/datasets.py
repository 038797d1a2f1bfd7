"""``splitpriv --version`` and ``splitpriv datasets``: what is installed, and which data it can read right now."""

from __future__ import annotations

import typer

from splitpriv.cli.app import app


def _version(value: bool) -> None:
    if value:
        from splitpriv import __version__
        from splitpriv.provenance import git_commit, versions

        commit = git_commit()
        libs = versions()
        typer.echo(f"splitpriv {__version__}" + (f" (git {commit[:12]})" if commit else "")
                   + f"; torch {libs.get('torch')}, transformers {libs.get('transformers')}, python {libs.get('python')}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="print splitpriv's version (and git commit, torch, transformers) and exit")):
    """Split-and-Privatize fine-tuning of language models as a service."""


@app.command()
def datasets():
    """The named datasets and where each would be read from now (embedded, the SPLITPRIV_DATA_DIR folder, the
    Hugging Face Hub, or not available offline), and where the attacker's public text comes from."""
    from splitpriv.data import dataset_availability, public_text_origin

    availability = dataset_availability()
    width = max(map(len, availability))
    for name, where in availability.items():
        typer.echo(f"{name:<{width}}  {where}")
    typer.echo(f"{'public text':<{width}}  WikiText-2 from the {public_text_origin()}")
