"""``splitpriv`` command line: train, predict, serve, robust-top, attack, experiment.

One module per command group registers its commands on :data:`app` (:mod:`.training`, :mod:`.serving`,
:mod:`.attacking`, :mod:`.experiments`); choices and mechanism options come from the registries (:mod:`.app`,
:mod:`splitpriv.options`).
"""

from splitpriv.cli.app import app
from splitpriv.cli import attacking, experiments, serving, training  # noqa: F401  (they register commands)

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover
    app(prog_name="splitpriv")
