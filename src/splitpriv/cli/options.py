"""Command-line options generated from the registries, so that a new mechanism, attack, tuning method or transport
shows up in ``splitpriv ... --help`` without an edit here or in :mod:`splitpriv.cli`.

* :func:`choices` makes the ``str`` Enum typer needs for a ``--mechanism`` / ``--method`` / ``--attack`` choice;
* :func:`with_mechanism_parameters` adds one ``--NAME`` option per parameter that any registered mechanism declares
  (``--eta`` for d_chi, ``--sigma`` for Gaussian, ...; help text from the config dataclass) and hands the command a
  ``mechanism_params`` dict of the ones given; :func:`with_attack_options` does the same for attack options.
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


def _option_type(annotation) -> type | None:
    """The scalar type of a config field's annotation (``float``, ``"float | None"``, ...) for a CLI option; None
    for a field that is not a scalar (set it in a config file instead)."""
    if isinstance(annotation, type):
        return annotation if annotation in _TYPES.values() else None
    text = str(annotation).replace("typing.", "").replace("Optional[", "").rstrip("]")
    for part in (p.strip() for p in text.split("|")):
        if part in _TYPES:
            return _TYPES[part]
    return None


def declared_options(fn, param: str, declared: dict[str, list], *, reserved=()):
    """Decorator factory body: replace ``fn``'s ``param: dict`` parameter by one ``--NAME`` option per entry of
    ``declared`` (option name -> ``[(owner name, dataclass Field), ...]``), collected back into ``param`` (only the
    options given). Names in ``reserved`` (the command's own options) are an error: two meanings for one flag."""
    from splitpriv.registry import field_help

    sig = inspect.signature(fn)
    if param not in sig.parameters:
        raise TypeError(f"{fn.__name__} needs a {param} parameter")
    clash = sorted(set(declared) & (set(sig.parameters) | set(reserved)))
    if clash:
        raise TypeError(f"{fn.__name__}: options {clash} are declared by a registry entry and by the command")
    declared = {n: e for n, e in declared.items() if _option_type(e[0][1].type) is not None}
    added = []
    for pname, entries in declared.items():
        typ = _option_type(entries[0][1].type)
        helps = "; ".join(f"{owner}: {field_help(f)}" for owner, f in entries)
        added.append(inspect.Parameter(
            pname, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[typ],
            default=typer.Option(None, f"--{pname.replace('_', '-')}", help=helps, show_default=False)))

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        given = {p: kwargs.pop(p) for p in declared if p in kwargs}
        return fn(*args, **{param: {k: v for k, v in given.items() if v is not None}}, **kwargs)

    kept = [p for p in sig.parameters.values() if p.name != param]
    wrapper.__signature__ = sig.replace(parameters=kept + added)
    wrapper.__annotations__ = {k: v for k, v in getattr(fn, "__annotations__", {}).items() if k != param}
    wrapper.__annotations__.update({p.name: p.annotation for p in added})
    return wrapper


def with_mechanism_parameters(fn):
    """One option per parameter any registered mechanism declares (``--eta``, ``--sigma``, ...), handed to the
    command as ``mechanism_params``."""
    from splitpriv.privacy import mechanism_parameters

    return declared_options(fn, "mechanism_params", mechanism_parameters())


def with_attack_options(fn):
    """One option per option any registered attack declares (``--steps``, ``--head``, ...), handed to the command
    as ``attack_options``; each attack receives the ones it declares."""
    from dataclasses import fields

    from splitpriv.attacks.registry import ATTACKS

    declared: dict[str, list] = {}
    for name, entry in ATTACKS.items():
        for f in fields(entry.Options):
            declared.setdefault(f.name, []).append((name, f))
    return declared_options(fn, "attack_options", declared)
