"""The ``splitpriv`` typer app and what every command shares: choices generated from the registries and constants,
one-line errors instead of tracebacks."""

from __future__ import annotations

import functools
import os
import warnings

import typer

from splitpriv.config import BOTTOM_MODES, NOISE_CHOICES
from splitpriv.cli.options import choices
from splitpriv.privacy import MECHANISMS
from splitpriv.contract import DENOISERS, HEADS, WIRE_DTYPES
from splitpriv.tasks import task_values
from splitpriv.tuning import TUNING_METHODS

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Split-and-Privatize fine-tuning of language models as a service.")

Mechanism = choices("Mechanism", MECHANISMS.names())
Method = choices("Method", TUNING_METHODS.names())
BottomMode = choices("BottomMode", BOTTOM_MODES)
NoiseMode = choices("NoiseMode", NOISE_CHOICES)
WireDtype = choices("WireDtype", WIRE_DTYPES)
Head = choices("Head", HEADS)
Denoise = choices("Denoise", DENOISERS)
Task = choices("Task", task_values())


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def clean_errors(fn):
    """Bad input gets one line naming the problem and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from splitpriv.data import DatasetNotFoundError
        from splitpriv.contract import ProtocolError

        try:
            return fn(*args, **kwargs)
        except (ValueError, DatasetNotFoundError, ProtocolError, FileNotFoundError, PermissionError, LookupError) as exc:
            fail(str(exc))
        except ConnectionError as exc:
            fail(f"cannot reach the vendor: {exc}")

    return wrapper


def quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    # peft's notice that it will want transformers >= 5.6 one day: the lock pins a tested pair
    warnings.filterwarnings("ignore", message="Support for Transformers", category=FutureWarning)

