r"""The mechanism interface and registry: noise applied by the customer to every token representation before it leaves the bottom model.

A mechanism :math:`M` maps a representation :math:`x \in \mathbb{R}^d` of one token to :math:`z = x + n`, with the
noise :math:`n` drawn independently for every real token (``attention_mask == 1``) of every call. Padding positions
are returned bit-identical: they carry no text, and the vendor learns the padding pattern anyway.

Threat model shared by all mechanisms: the vendor (attacker) sees every :math:`z`, knows the mechanism and its
parameters (including any per-token ``noise_scale``), the bottom model's weights (it supplied them) and public text,
so it can compute the representation of any candidate text and run a MAP attack with :meth:`Mechanism.log_likelihood`.
The guarantees below are about the representation :math:`x` handed to the mechanism; a bound stated in a metric on
representations says nothing by itself about how different two *texts* are.

A mechanism is one module of :mod:`splitpriv.privacy` that subclasses :class:`Mechanism`, declares its parameters as a
config dataclass (fields with ``metadata={"help": ...}``) and registers itself with ``@MECHANISMS.register(name)``;
the command line, run configs, the experiment grid, sessions and attacks all read it from there. Attacks ask the
mechanism what they need (:meth:`Mechanism.nll`, :meth:`Mechanism.coordinate_variance`, the capabilities of
:meth:`Mechanism.supports`) instead of checking its class.

Randomness never comes from the global RNG: every draw goes through an explicit :class:`torch.Generator`, and a
call without one uses a fresh generator seeded from OS entropy.
"""

from __future__ import annotations

import abc
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from splitpriv.registry import Registry, dataclass_from_dict

__all__ = ["MECHANISMS", "Mechanism", "MechanismCapabilityError", "build_mechanism", "mechanism_parameters", "privatize"]

LOW_PRECISION = (torch.float16, torch.bfloat16)



def check_scalar(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def check_positive_tensor(name: str, value: Tensor) -> Tensor:
    if not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64, torch.int16, torch.int8)):
        raise ValueError(f"{name} must be a real-valued tensor, got dtype {value.dtype}")
    if value.numel() == 0:
        raise ValueError(f"{name} is empty")
    value = value.detach()
    if value.is_floating_point():
        if torch.isnan(value).any():
            raise ValueError(f"{name} contains NaN")
        if torch.isinf(value).any():
            raise ValueError(f"{name} contains inf; it must be finite")
    if (value <= 0).any():
        raise ValueError(f"{name} must be > 0 everywhere, min is {value.min().item()}")
    return value


def check_param(name: str, value) -> float | Tensor:
    if isinstance(value, Tensor):
        if value.dim() == 0:
            return check_scalar(name, value.item())
        if value.dim() != 2:
            raise ValueError(f"a per-token {name} must have shape [batch, tokens], got shape {tuple(value.shape)}")
        return check_positive_tensor(name, value)
    return check_scalar(name, value)


def check_token_shape(name: str, value: Tensor, batch_shape: Sequence[int]) -> None:
    if tuple(value.shape) != tuple(batch_shape):
        raise ValueError(
            f"per-token {name} has shape {tuple(value.shape)}, expected [batch, tokens] = {tuple(batch_shape)}"
        )


def make_generator(generator: torch.Generator | None, device) -> torch.Generator:
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return generator
    g = torch.Generator(device=device)
    g.seed()
    return g


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in LOW_PRECISION else dtype


def standard_gamma(concentration: float, size: Sequence[int], generator: torch.Generator) -> Tensor:
    """Gamma(concentration, 1) draws in float64 on the generator's device, driven only by ``generator``."""
    alpha = torch.full(tuple(size), float(concentration), dtype=torch.float64, device=generator.device)
    try:
        return torch._standard_gamma(alpha, generator=generator)
    except TypeError:
        # Older torch: standard_gamma takes no generator. For integer d, Gamma(d, 1) is exactly the sum of d
        # independent Exp(1) = -log U draws, which rand() can produce from the explicit generator.
        if float(concentration) != int(concentration):
            raise
        u = torch.rand((*size, int(concentration)), dtype=torch.float64, generator=generator, device=generator.device)
        return -torch.log1p(-u).sum(-1)



def check_dim(d) -> int:
    if isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1:
        raise ValueError(f"d must be a positive integer, got {d!r}")
    return int(d)




class MechanismCapabilityError(ValueError):
    """An attack or a vendor-side step needs something of a mechanism that the mechanism does not provide."""


@dataclass(frozen=True)
class NoParameters:
    """A mechanism without parameters."""


class Mechanism(abc.ABC):
    """Adds noise to token representations ``h`` of shape ``[batch, tokens, d]``.

    Subclasses set ``Config`` (a frozen dataclass of the constructor's parameters, each field with
    ``metadata={"help": ...}``) and implement :meth:`sample_noise`, :meth:`log_likelihood`, :meth:`nll`,
    :meth:`expected_norm` and :meth:`coordinate_variance`; optional capabilities (:meth:`supports`) add
    :meth:`loglik_from_sqdist` (``"l2_loglik"``) and :meth:`radius_log_prob` (``"radius"``).
    ``noise_scale`` (shape ``[batch, tokens]``, positive) multiplies the noise magnitude of each token: a token with
    scale :math:`s` gets the mechanism's noise times :math:`s` and its guarantee weakens (or strengthens)
    accordingly. The attacker is assumed to know ``noise_scale``.
    """

    name: str = ""
    Config: type = NoParameters
    #: capabilities beyond the interface every mechanism has; see :meth:`supports`
    capabilities: frozenset[str] = frozenset()
    #: True only for the mechanism that adds no noise
    is_noiseless: bool = False

    @classmethod
    def from_config(cls, config: dict | str | None) -> "Mechanism":
        """The mechanism a :meth:`to_config` dict (or a registered name) describes; same as :func:`build_mechanism`."""
        return build_mechanism(config)

    def __call__(
        self,
        h: Tensor,
        attention_mask: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        noise_scale: Tensor | None = None,
    ) -> Tensor:
        """Return ``h + n`` on real tokens (``attention_mask == 1``); padding positions come back bit-identical.

        Computation is in ``h``'s dtype (float32 when ``h`` is float16/bfloat16); the result has ``h``'s dtype.
        """
        mask = self._check_inputs(h, attention_mask, noise_scale)
        dtype = compute_dtype(h.dtype)
        noise = self.sample_noise(
            h.shape, generator=generator, noise_scale=noise_scale, dtype=dtype, device=h.device
        )
        noisy = (h.to(dtype) + noise).to(h.dtype)
        if mask is None:
            return noisy
        return torch.where(mask.unsqueeze(-1), noisy, h)

    def _check_inputs(self, h: Tensor, attention_mask: Tensor | None, noise_scale: Tensor | None) -> Tensor | None:
        if not isinstance(h, Tensor):
            raise ValueError(f"h must be a torch.Tensor, got {type(h).__name__}")
        if h.dim() != 3:
            raise ValueError(f"h must be [batch, tokens, d] (3-D), got shape {tuple(h.shape)}")
        if not h.is_floating_point():
            raise ValueError(f"h must be a floating-point tensor, got dtype {h.dtype}")
        if not torch.isfinite(h.detach()).all():
            raise ValueError("h contains NaN or inf values")
        batch_shape = tuple(h.shape[:2])
        mask = None
        if attention_mask is not None:
            if tuple(attention_mask.shape) != batch_shape:
                raise ValueError(
                    f"attention_mask shape {tuple(attention_mask.shape)} does not match h.shape[:2] = {batch_shape}"
                )
            if attention_mask.dtype != torch.bool and not ((attention_mask == 0) | (attention_mask == 1)).all():
                raise ValueError("attention_mask must contain only 0 (padding) and 1 (real token)")
            mask = attention_mask.to(device=h.device, dtype=torch.bool)
        if noise_scale is not None:
            if not isinstance(noise_scale, Tensor):
                raise ValueError(f"noise_scale must be a tensor of shape [batch, tokens], got {type(noise_scale)}")
            check_token_shape("noise_scale", noise_scale, batch_shape)
            check_positive_tensor("noise_scale", noise_scale)
        self._check_batch_shape(batch_shape)
        return mask

    def _check_batch_shape(self, batch_shape: tuple[int, ...]) -> None:
        """Hook for mechanisms with per-token parameters."""

    @staticmethod
    def _prepare_scale(noise_scale: Tensor | None, shape: Sequence[int], dtype, device) -> Tensor | None:
        if noise_scale is None:
            return None
        if not isinstance(noise_scale, Tensor):
            raise ValueError(f"noise_scale must be a tensor of shape {tuple(shape[:-1])}, got {type(noise_scale)}")
        check_token_shape("noise_scale", noise_scale, shape[:-1])
        check_positive_tensor("noise_scale", noise_scale)
        return noise_scale.detach().to(device=device, dtype=dtype).unsqueeze(-1)

    def sample_noise(
        self,
        shape: Sequence[int],
        *,
        generator: torch.Generator | None,
        noise_scale: Tensor | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """Draw noise of ``shape`` (last axis = d); ``noise_scale`` has shape ``shape[:-1]``. By default i.i.d.
        coordinates from :meth:`draw`, each token's scaled by its ``noise_scale``; a mechanism whose noise is not
        i.i.d. per coordinate overrides this."""
        shape = tuple(shape)
        g = make_generator(generator, device)
        scale = self._prepare_scale(noise_scale, shape, dtype, device)
        noise = self.draw(shape, g, compute_dtype(dtype)).to(device)
        if scale is not None:
            noise = noise * scale
        return noise.to(dtype)

    def draw(self, shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype) -> Tensor:
        """Noise of ``shape`` at ``noise_scale`` 1 on the generator's device, from ``generator`` only."""
        raise NotImplementedError(f"{type(self).__name__} implements neither sample_noise nor draw")

    @abc.abstractmethod
    def log_likelihood(self, z: Tensor, x: Tensor) -> Tensor:
        """:math:`\\log p(z \\mid x)` up to an additive constant independent of ``x``.

        ``z[..., d]`` broadcasts against ``x[..., d]``; the result has the broadcast shape without the last axis.
        """

    @abc.abstractmethod
    def expected_norm(self, d: int) -> float:
        """:math:`\\mathbb{E}\\lVert n \\rVert_2` for noise in :math:`\\mathbb{R}^d` (at ``noise_scale`` 1)."""

    @abc.abstractmethod
    def nll(self, z: Tensor, x: Tensor) -> Tensor:
        """:math:`-\\log p(z \\mid x)` up to a constant independent of ``x``, differentiable in ``x`` everywhere
        (optimisation attacks descend it); broadcasting as :meth:`log_likelihood`."""

    @abc.abstractmethod
    def coordinate_variance(self, d: int) -> float:
        """:math:`\\mathbb{E}\\lVert n \\rVert_2^2 / d` of one draw at ``noise_scale`` 1 (what averaging removes)."""

    def supports(self, capability: str) -> bool:
        """Whether this mechanism offers ``capability``: ``"l2_loglik"`` (the likelihood is a function of
        :math:`\\lVert z - x\\rVert_2` only, :meth:`loglik_from_sqdist`), ``"radius"`` (a law for
        :math:`\\lVert n\\rVert_2`, :meth:`radius_log_prob`)."""
        return capability in self.capabilities

    def require(self, capability: str, *, user: str) -> None:
        """Raise :class:`MechanismCapabilityError` naming ``user`` and this mechanism unless it supports
        ``capability``."""
        if not self.supports(capability):
            raise MechanismCapabilityError(
                f"{user} cannot handle mechanism {self!r}: it needs {capability!r}, which this mechanism does not "
                f"provide (mechanisms with it: {mechanisms_with(capability)})")

    def loglik_from_sqdist(self, d2: Tensor, noise_scale: Tensor | None = None) -> Tensor:
        """:math:`\\log p(z \\mid x)` up to a per-row constant from squared L2 distances ``d2`` [n, V]; ``noise_scale``
        [n] multiplies the noise of each row (CTI). May overwrite ``d2``. Needs ``"l2_loglik"``."""
        self.require("l2_loglik", user="loglik_from_sqdist")
        raise NotImplementedError

    def radius_log_prob(self, r: Tensor, d: int, noise_scale: float = 1.0) -> Tensor:
        """:math:`\\log p(\\lVert n\\rVert_2 = r)` in :math:`\\mathbb{R}^d` for noise multiplied by ``noise_scale``.
        Needs ``"radius"``."""
        self.require("radius", user="radius_log_prob")
        raise NotImplementedError

    def to_config(self) -> dict:
        """JSON-serialisable config ``{"name": ..., **parameters}``; ``build_mechanism(m.to_config())`` rebuilds it."""
        params = {}
        for f in fields(self.Config):
            value = getattr(self, f.name)
            params[f.name] = value.tolist() if isinstance(value, Tensor) else value
        return {"name": self.name, **params}

    @staticmethod
    def _diff(z: Tensor, x: Tensor) -> Tensor:
        if z.shape[-1] != x.shape[-1]:
            raise ValueError(
                f"z and x must share the last (feature axis) size, got d = {z.shape[-1]} and {x.shape[-1]}"
            )
        dtype = torch.promote_types(compute_dtype(z.dtype), compute_dtype(x.dtype))
        try:
            return z.to(dtype) - x.to(dtype)
        except RuntimeError as err:
            raise ValueError(
                f"z of shape {tuple(z.shape)} does not broadcast against x of shape {tuple(x.shape)}"
            ) from err

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.to_config().items() if k != "name")
        return f"{type(self).__name__}({params})"



MECHANISMS: Registry[type[Mechanism]] = Registry("mechanism", "splitpriv.privacy")


def mechanisms_with(capability: str) -> list[str]:
    return [name for name, cls in MECHANISMS.items() if capability in cls.capabilities]


def mechanism_parameters() -> dict[str, list]:
    """Parameter name → the config fields (:class:`dataclasses.Field`) of the registered mechanisms that declare it;
    the command line makes one option of each name."""
    out: dict[str, list] = {}
    for _, cls in MECHANISMS.items():
        for f in fields(cls.Config):
            out.setdefault(f.name, []).append((cls.registry_name, f))
    return out


def build_mechanism(config: dict | str | None, **params) -> Mechanism:
    """Build a mechanism from a registered name or a config dict; keyword ``params`` override the dict's entries.

    >>> build_mechanism("dchi", eta=10)
    DChi(eta=10.0)
    >>> build_mechanism({"name": "gaussian", "sigma": 0.5})
    Gaussian(sigma=0.5)
    >>> build_mechanism(None)
    Identity()
    """
    if config is None:
        name, kwargs = "none", {}
    elif isinstance(config, str):
        name, kwargs = config, {}
    elif isinstance(config, dict):
        kwargs = dict(config)
        if "name" not in kwargs:
            raise ValueError(f"mechanism config needs a 'name' (one of {MECHANISMS.names()}), got {config!r}")
        name = kwargs.pop("name")
    elif isinstance(config, Mechanism):
        if params:
            raise ValueError("cannot override parameters of an already-built mechanism")
        return config
    else:
        raise ValueError(f"mechanism config must be a dict, a name or None, got {type(config).__name__}")
    if not isinstance(name, str):
        raise ValueError(f"mechanism name must be a string, got {name!r}")
    key = MECHANISMS.canonical(name)
    kwargs.update(params)
    cls = MECHANISMS.get(key)
    checked = dataclass_from_dict(cls.Config, kwargs, what=f"bad parameters {sorted(kwargs)} for mechanism {key!r}")
    return cls(**{f.name: getattr(checked, f.name) for f in fields(checked)})


def privatize(
    mechanism: Mechanism,
    hidden: Tensor,
    attention_mask: Tensor,
    *,
    generator: torch.Generator | None = None,
    noise_scale: Tensor | None = None,
) -> Tensor:
    """What a customer sends: ``mechanism(hidden)`` on real tokens and **zeros at padding**.

    Padding is zeroed because at k ≥ 1 a padding position's hidden state attends to the real tokens and so carries
    un-noised information about them; the top never reads padding positions (they are masked as keys and the head
    reads real positions only), so zeroing them changes no output.
    """
    z = mechanism(hidden, attention_mask, generator=generator, noise_scale=noise_scale)
    return z * attention_mask.unsqueeze(-1).to(z.dtype)

