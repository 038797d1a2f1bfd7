"""Command-line options generated from the registries, so that a new mechanism, attack, tuning method or transport
shows up in ``splitpriv ... --help`` without an edit here or in :mod:`splitpriv.cli`.

* :func:`choices` makes the ``str`` Enum typer needs for a ``--mechanism`` / ``--method`` / ``--attack`` choice;
* :func:`with_mechanism_parameters` adds one ``--NAME`` option per parameter that any registered mechanism declares
  (``--eta`` for d_chi, ``--sigma`` for Gaussian, ...; help text from the config dataclass) and hands the command a
  ``mechanism_params`` dict of the ones given.
"""

from __future__ import annotations

import functools
import inspect
import typing
from enum import Enum
from typing import Optional

import typer

_TYPES = {"float": float, "int": int, "str": str, "bool": bool}


def choices(enum_name: str, names: typing.Iterable[str]) -> type[Enum]:
    """A ``str`` Enum with one member per registered name (typer shows them as the option's choices)."""
    return Enum(enum_name, {n.replace("-", "_"): n for n in names}, type=str)


def _option_type(annotation) -> type:
    """The scalar type of a config field's annotation (``float``, ``"float | None"``, ...) for a CLI option."""
    if isinstance(annotation, type):
        return annotation
    text = str(annotation).replace("typing.", "").replace("Optional[", "").rstrip("]")
    for part in (p.strip() for p in text.split("|")):
        if part in _TYPES:
            return _TYPES[part]
    return str


def with_mechanism_parameters(fn):
    """Decorator for a typer command with a ``mechanism_params: dict`` parameter: replaces it by one option per
    mechanism parameter in the registry, collected back into ``mechanism_params`` (only the ones given)."""
    from splitpriv.privacy import mechanism_parameters
    from splitpriv.registry import field_help

    declared = mechanism_parameters()
    sig = inspect.signature(fn)
    if "mechanism_params" not in sig.parameters:
        raise TypeError(f"{fn.__name__} needs a mechanism_params parameter")
    added = []
    for pname, entries in declared.items():
        typ = _option_type(entries[0][1].type)
        helps = "; ".join(f"{mech}: {field_help(f)}" for mech, f in entries)
        added.append(inspect.Parameter(
            pname, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[typ],
            default=typer.Option(None, f"--{pname.replace('_', '-')}", help=helps)))

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        params = {p: kwargs.pop(p) for p in declared if p in kwargs}
        return fn(*args, mechanism_params={k: v for k, v in params.items() if v is not None}, **kwargs)

    kept = [p for p in sig.parameters.values() if p.name != "mechanism_params"]
    wrapper.__signature__ = sig.replace(parameters=kept + added)
    wrapper.__annotations__ = {k: v for k, v in getattr(fn, "__annotations__", {}).items() if k != "mechanism_params"}
    wrapper.__annotations__.update({p.name: p.annotation for p in added})
    return wrapper
