"""The transport registry (name → :class:`~splitpriv.transport.base.TransportBase` subclass) and
:func:`make_transport`, which builds the transport a target calls for."""

from __future__ import annotations

from typing import Any

from splitpriv.registry import Registry
from splitpriv.transport.base import TransportBase

TRANSPORTS: Registry[type[TransportBase]] = Registry("transport", "splitpriv.transport")


def transport_choices() -> dict[str, str]:
    """Every registered transport's name and description."""
    return {name: cls.description for name, cls in TRANSPORTS.items()}


def make_transport(target: Any, *, name: str | None = None, **kw) -> TransportBase:
    """The transport for ``target`` (a :class:`~splitpriv.roles.vendor.Vendor` object, an ``http(s)://`` URL, ...):
    the one registered as ``name``, or else the first whose ``accepts(target)`` is true. ``kw`` go to its
    constructor (``tap=``, ``session=``, retry settings, ...)."""
    if name is not None:
        cls = TRANSPORTS.get(name)
        if not cls.accepts(target):
            raise ValueError(f"transport {cls.registry_name!r} ({cls.description}) cannot reach {target!r}")
    else:
        cls = next((c for _, c in TRANSPORTS.items() if c.accepts(target)), None)
        if cls is None:
            raise ValueError(f"no transport reaches {target!r}; registered transports: {transport_choices()}")
    return cls.from_target(target, **kw)


__all__ = ["TRANSPORTS", "make_transport", "transport_choices"]
