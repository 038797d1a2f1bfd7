"""The attack registry: one module of :mod:`splitpriv.attacks` per attack, each declaring itself.

An attack is a subclass of :class:`Attack` registered under its name::

    from splitpriv.attacks.registry import ATTACKS, Attack

    @ATTACKS.register("mine")
    class Mine(Attack):
        description = "one line for `splitpriv attack --help`"
        kind = "inversion"            # or "set", "label", "attribute", "response"
        Options = MineOptions         # a dataclass; every field has a default and metadata={"help": ...}

        @staticmethod
        def applies(setting):         # None, or why it does not apply
            return None if setting.n_bottom_layers == 0 else "needs k = 0"

        @staticmethod
        def run(evaluation, options): # -> AttackResult
            ...

``run(evaluation, options)`` is the one calling convention of every kind: ``evaluation`` is the evaluator of one
setting (:class:`splitpriv.attacks.runner.Evaluation`), which hands an attack what the vendor observes (privatized
representations, a transcript of the messages of a training run) and its public knowledge, and scores the guess;
``options`` is an instance of ``Options``. The runner, the experiment grid and the command line read this registry.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields, is_dataclass

from splitpriv.registry import Registry, dataclass_from_dict, field_help

__all__ = ["ATTACKS", "KINDS", "Attack", "NoOptions", "Setting", "attack_option_help", "in_model_space",
           "names_of_kind"]

KINDS = ("inversion", "set", "label", "attribute", "response")


@dataclass(frozen=True)
class Setting:
    """What decides whether an attack applies: the split depth k, whether the customer uses CTI, its mechanism
    (a :class:`~splitpriv.privacy.Mechanism`, or None when unknown), whether a privatizer is folded into the
    bottom, the run's task (None when unknown)."""

    n_bottom_layers: int = 0
    cti: bool = False
    mechanism: object = None
    privatized: bool = False
    task: str | None = None


@dataclass(frozen=True)
class NoOptions:
    """An attack without options."""


class Attack:
    """Base of a registered attack; see the module docstring."""

    registry_name: str = ""
    description: str = ""
    kind: str = "inversion"
    Options: type = NoOptions

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.kind not in KINDS:
            raise TypeError(f"{cls.__qualname__}.kind must be one of {KINDS}, got {cls.kind!r}")
        if not is_dataclass(cls.Options):
            raise TypeError(f"{cls.__qualname__}.Options must be a dataclass")
        undocumented = [f.name for f in fields(cls.Options) if not field_help(f)
                        or (f.default is MISSING and f.default_factory is MISSING)]
        if undocumented or not cls.description:
            raise TypeError(f"{cls.__qualname__}: needs a description, and a default and help for every option "
                            f"(lacking: {undocumented})")

    @staticmethod
    def applies(setting) -> str | None:
        """None when the attack applies to ``setting``, else the reason it does not."""
        return None

    @classmethod
    def options(cls, values: dict | None = None):
        """``Options`` from a dict; an unknown option is an error naming the attack and the accepted ones."""
        if isinstance(values, cls.Options):
            return values
        return dataclass_from_dict(cls.Options, dict(values or {}), what=f"attack {cls.registry_name!r}")

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in fields(cls.Options) if f.init]

    @staticmethod
    def run(evaluation, options):
        """What the vendor recovers in ``evaluation``'s setting, scored: an :class:`AttackResult`."""
        raise NotImplementedError


ATTACKS: Registry[type[Attack]] = Registry("attack", "splitpriv.attacks")


def in_model_space(setting) -> str | None:
    """Applicability of attacks that score against the model's own representation space: not when a privatizer
    is folded into the bottom (``setting.privatized``; the adaptive attack and, at k = 0, nn/map judge those)."""
    if getattr(setting, "privatized", False):
        return "the bottom has a privatizer: its output is not in the model's representation space"
    return None


def names_of_kind(kind: str) -> list[str]:
    """Registered attacks of one kind, in registration order."""
    if kind not in KINDS:
        raise ValueError(f"attack kind must be one of {KINDS}, got {kind!r}")
    return [name for name, entry in ATTACKS.items() if entry.kind == kind]


def attack_option_help() -> dict[str, dict]:
    """Every registered attack: ``{name: {"description", "kind", "options": {option: (default, help)}}}``."""
    out = {}
    for name, entry in ATTACKS.items():
        opts = {}
        for f in fields(entry.Options):
            default = f.default if f.default is not MISSING else f.default_factory()
            opts[f.name] = (default, field_help(f))
        out[name] = {"description": entry.description, "kind": entry.kind, "options": opts}
    return out
