"""``splitpriv`` command line: train, predict, generate, serve, robust-top, attack, experiment, datasets.

One module per command group registers its commands on :data:`app` (:mod:`.training`, :mod:`.inference`, :mod:`.serving`,
:mod:`.attacking`, :mod:`.experiments`); choices and mechanism options come from the registries (:mod:`.app`,
:mod:`.options`).
"""

from splitpriv.cli.app import app
from splitpriv.cli import (  # noqa: F401  (commands)
    attacking,
    audit,
    datasets,
    experiments,
    inference,
    keys,
    privatizer,
    serving,
    training,
)

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover
    app(prog_name="splitpriv")
