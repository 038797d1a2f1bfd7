r"""The privatizer interface and registry: a learned map between the customer's bottom and the mechanism.

A privatizer has two halves. The customer half :math:`f: \mathbb{R}^d \to \mathbb{R}^r` runs at home on every
token representation the bottom produces; the mechanism then perturbs :math:`u = f(h)` in :math:`r` dimensions, so
what leaves the customer is :math:`z = f(h) + n` (padding rows zero). The vendor half
:math:`g: \mathbb{R}^r \to \mathbb{R}^d` runs in the vendor's session before its top and is trained there like the
head. The split folds them in (:func:`splitpriv.parts.split_model` with ``privatizer=``): the bottom's output *is*
:math:`u`, and the bottom package carries :math:`f`'s weights, so a projection the vendor pre-trained ships inside
the bottom and a trained bottom fine-tunes it from the returned gradients.

Threat model: the vendor knows the privatizer's architecture *and its weights* (it chose or trained them, or can see
them in the package it shipped). A privatizer's guarantee must therefore hold for **any** weights: it is a bound the
customer half enforces by construction (e.g. a norm clip after the projection), on which the mechanism's guarantee
in :math:`u`-space rests. Nothing here relies on the weights being secret.

An entry is one module of :mod:`splitpriv.privacy` that subclasses :class:`Privatizer`, declares a ``Config``
dataclass (fields with ``metadata={"help": ...}``) and registers itself with ``@PRIVATIZERS.register(name)``.
On the command line a privatizer is a spec ``name:key=value,...`` (:func:`parse_privatizer_spec`).
"""

from __future__ import annotations

import abc
import json
from dataclasses import asdict, fields, replace

from torch import Tensor, nn

from splitpriv.registry import Registry, dataclass_from_dict

__all__ = ["PRIVATIZERS", "Privatizer", "build_privatizer", "describe_privatizers", "parse_privatizer_spec",
           "privatizer_config"]

PRIVATIZERS: "Registry[type[Privatizer]]" = Registry("privatizer", "splitpriv.privacy")


class Privatizer(abc.ABC):
    """A privatizer's validated config and the factory of its two halves (both :class:`torch.nn.Module`)."""

    name: str = ""
    Config: type

    def __init__(self, config):
        self.config = config
        self.check()

    #: tokens of the bottom's output a privatizer needs to :meth:`fit` its customer half (0: it does not fit)
    sample_size: int = 0

    #: the customer half maps every token's vector alone (``u_t = f(h_t)``, the mask only marks padding). A causal
    #: LM needs this: its middle reads token t before token t + 1 exists, and generation privatizes one new token at
    #: a time. A privatizer that mixes a sentence's tokens sets it False and serves classifiers only.
    token_wise: bool = True

    def check(self) -> None:
        """Reject bad parameters (one ``ValueError`` naming the parameter)."""

    def check_sample(self, n_tokens: int, vocab_size: int) -> None:
        """Reject a data-free fit sample of ``n_tokens`` distinct token ids (from a vocabulary of ``vocab_size``)
        too small to :meth:`fit` on, before the bottom runs. Default: any size will do."""

    def fit(self, customer: nn.Module, sample: Tensor) -> None:
        """Fit ``customer``'s state (parameters, so that it ships in the bottom file) to ``sample`` [N, d], outputs
        of the bottom before the privatizer; called once when the privatizer is attached. Default: nothing."""

    def fit_public(self, customer: nn.Module, vendor: nn.Module, sample: Tensor) -> bool:
        """Start both halves from ``sample`` [N, d], outputs of the bottom on *public* text (the vendor's
        pre-training, :mod:`splitpriv.roles.vendor.privatizer_pretrain`, before it distils); returns whether it
        changed anything. Default: nothing (the halves stay as built)."""
        return False

    def check_width(self, d: int) -> None:
        """Reject a privatizer that cannot apply to a model of width ``d``."""

    @abc.abstractmethod
    def width(self, d: int) -> int:
        """The width :math:`r` of what leaves the customer, for a bottom of width ``d``."""

    @abc.abstractmethod
    def customer_half(self, d: int, *, seed: int = 0) -> nn.Module:
        """``module(hidden [B, T, d], attention_mask [B, T]) -> u [B, T, r]``, seeded initialisation."""

    @abc.abstractmethod
    def vendor_half(self, customer: nn.Module, d: int, sample: Tensor | None = None) -> nn.Module:
        """``module(z [B, T, r]) -> [B, T, d]``, initialised to invert ``customer`` as well as it can; ``sample``
        [N, d] holds outputs of the bottom (before the privatizer) to calibrate that with."""

    def to_config(self) -> dict:
        """``{"name": ..., **parameters}`` (JSON); :func:`build_privatizer` rebuilds the privatizer from it."""
        return json.loads(json.dumps({"name": self.name, **asdict(self.config)}))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.to_config().items() if k != "name")
        return f"{type(self).__name__}({params})"


def _value(text: str):
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def parse_privatizer_spec(spec: str) -> dict:
    """``"bottleneck:r=16,clip=1"`` → ``{"name": "bottleneck", "r": 16, "clip": 1}`` (validated).

    ``"none"`` (or an empty spec) is ``None``: no privatizer."""
    if not isinstance(spec, str):
        raise ValueError(f"a privatizer spec must be a string like 'bottleneck:r=16', got {spec!r}")
    if spec.strip().lower() in ("", "none"):
        return None
    name, _, rest = spec.partition(":")
    params = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ValueError(f"privatizer spec {spec!r} does not parse: {item!r} is not key=value "
                             "(expected e.g. 'bottleneck:r=16,clip=1')")
        if key.strip() in params:
            raise ValueError(f"privatizer spec {spec!r} gives {key.strip()!r} twice")
        params[key.strip()] = _value(value)
    return build_privatizer({"name": name.strip(), **params}).to_config()


def build_privatizer(config) -> Privatizer | None:
    """A :class:`Privatizer` from its config dict, a spec string, a registered name, itself, or ``None``."""
    if config is None or isinstance(config, Privatizer):
        return config
    if isinstance(config, str):
        if ":" in config or config.strip().lower() == "none":
            return build_privatizer(parse_privatizer_spec(config))
        config = {"name": config}
    if not isinstance(config, dict) or not isinstance(config.get("name"), str):
        raise ValueError(f"a privatizer config needs a 'name' (one of {PRIVATIZERS.names()}), got {config!r}")
    params = dict(config)
    key = PRIVATIZERS.canonical(params.pop("name"))
    cls = PRIVATIZERS.get(key)
    checked = dataclass_from_dict(cls.Config, params, what=f"privatizer {key!r}")
    for f in fields(checked):
        value = getattr(checked, f.name)
        if f.type in ("int", int) and isinstance(value, float):
            raise ValueError(f"privatizer {key!r}: {f.name} must be an integer, got {value!r}")
        if f.type in ("float", float) and isinstance(value, int) and not isinstance(value, bool):
            checked = replace(checked, **{f.name: float(value)})
    return cls(checked)


def privatizer_config(config) -> dict | None:
    """The canonical JSON config of a privatizer (``None`` stays ``None``); validates it."""
    built = build_privatizer(config)
    return None if built is None else built.to_config()


def describe_privatizers() -> str:
    """One line per registered privatizer: its spec keys and their help (for ``--help`` texts)."""
    from splitpriv.registry import field_help

    return "; ".join(f"{name}: " + ", ".join(f"{f.name} ({field_help(f)})" for f in fields(cls.Config))
                     for name, cls in PRIVATIZERS.items())
