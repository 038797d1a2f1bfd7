"""Registries: one per extension point (mechanisms, attacks, tuning methods, model families, transports).

An entry is one module that declares itself, the way a ``peft`` tuner maps its config type to its implementation::

    from splitpriv.privacy.registry import MECHANISMS

    @MECHANISMS.register("mine")
    class Mine(Mechanism): ...

The command line, the experiment grid and the attack runner read the registries, so that one new file is the only
edit a new entry needs. Entries are found by importing, on first use of a registry:

* every module of the registry's own package (a file dropped into ``splitpriv/privacy/``, ``splitpriv/attacks/``,
  ``splitpriv/tuning/``, ``splitpriv/models/`` or ``splitpriv/transport/``);
* the modules named in ``$SPLITPRIV_PLUGINS`` (comma-separated import paths): a plugin outside the source tree;
* the ``splitpriv.plugins`` entry points of installed distributions.

Names are case-insensitive; an unknown name is a :class:`ValueError` that names the kind and the known entries.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import pkgutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import MISSING, Field, fields, is_dataclass
from typing import Any, Generic, TypeVar

__all__ = ["Registry", "load_plugins", "dataclass_from_dict", "field_help"]

T = TypeVar("T")
PLUGINS_ENV = "SPLITPRIV_PLUGINS"
ENTRY_POINT_GROUP = "splitpriv.plugins"

_plugins_loaded = False
_lock = threading.RLock()


def load_plugins() -> None:
    """Import the out-of-tree plugin modules (``$SPLITPRIV_PLUGINS`` and entry points), once per process."""
    global _plugins_loaded
    with _lock:
        if _plugins_loaded:
            return
        _plugins_loaded = True
        for name in filter(None, (s.strip() for s in os.environ.get(PLUGINS_ENV, "").split(","))):
            try:
                importlib.import_module(name)
            except ImportError as exc:
                raise ValueError(f"plugin module {name!r} (from ${PLUGINS_ENV}) cannot be imported: {exc}") from exc
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            ep.load()


class Registry(Generic[T]):
    """Name → entry for one extension point. ``package`` is imported module by module on first lookup."""

    def __init__(self, kind: str, package: str | None = None):
        self.kind = kind
        self.package = package
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}
        self._discovered = False

    # ----------------------------------------------------------------------------------------- declaring
    def register(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` on a class (or any object) adds it under ``name``."""
        key = self._norm(name)

        def add(entry: T) -> T:
            with _lock:
                if key in self._entries and self._entries[key] is not entry:
                    old = self._entries[key]
                    if getattr(old, "__qualname__", None) != getattr(entry, "__qualname__", object()) or getattr(
                        old, "__module__", None
                    ) != getattr(entry, "__module__", object()):
                        raise ValueError(f"{self.kind} {name!r} is registered twice ({old!r} and {entry!r})")
                self._entries[key] = entry
                for alias in aliases:
                    self._aliases[self._norm(alias)] = key
                try:
                    entry.registry_name = key  # type: ignore[attr-defined]
                except (AttributeError, TypeError):
                    pass
            return entry

        return add

    # ------------------------------------------------------------------------------------------ looking up
    def _discover(self) -> None:
        if self._discovered:
            return
        with _lock:
            if self._discovered:
                return
            self._discovered = True
            if self.package:
                pkg = importlib.import_module(self.package)
                for info in pkgutil.iter_modules(getattr(pkg, "__path__", [])):
                    if not info.name.startswith("_"):
                        importlib.import_module(f"{self.package}.{info.name}")
            load_plugins()

    @staticmethod
    def _norm(name: str) -> str:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"a registry name must be a non-empty string, got {name!r}")
        return name.strip().lower()

    def canonical(self, name: str) -> str:
        """The registered name for ``name`` or one of its aliases; ValueError naming the choices otherwise."""
        self._discover()
        if not isinstance(name, str):
            raise ValueError(f"{self.kind} name must be a string, got {name!r}")
        key = self._aliases.get(self._norm(name), self._norm(name))
        if key not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; expected one of {self.names()}")
        return key

    def get(self, name: str) -> T:
        return self._entries[self.canonical(name)]

    def __contains__(self, name: object) -> bool:
        self._discover()
        return isinstance(name, str) and bool(name.strip()) and (
            self._aliases.get(self._norm(name), self._norm(name)) in self._entries)

    def names(self) -> list[str]:
        """Registered names, in registration order (the order help texts and grids list them in)."""
        self._discover()
        return list(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        self._discover()
        return iter(list(self._entries.items()))

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"


# ------------------------------------------------------------------------------------- config dataclasses
def field_help(f: Field) -> str:
    return str(f.metadata.get("help", ""))


def dataclass_from_dict(cls: type, values: dict, *, what: str) -> Any:
    """``cls(**values)`` for a config dataclass, with one clear error naming ``what`` and every unknown key or
    missing field (instead of a bare ``TypeError``), and numbers checked against the field's declared type."""
    if not is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not isinstance(values, dict):
        raise ValueError(f"{what}: options must be a mapping, got {type(values).__name__}")
    known = {f.name: f for f in fields(cls) if f.init}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{what}: unknown option(s) {unknown}; accepted: {sorted(known)}")
    missing = [n for n, f in known.items() if n not in values and f.default is MISSING
               and f.default_factory is MISSING]
    if missing:
        raise ValueError(f"{what}: missing option(s) {missing}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise ValueError(f"{what}: {exc}") from None
