r"""Noise mechanisms applied by the customer to every token representation before it leaves the bottom model.

A mechanism :math:`M` maps a representation :math:`x \in \mathbb{R}^d` of one token to :math:`z = x + n`, with the
noise :math:`n` drawn independently for every real token (``attention_mask == 1``) of every call. Padding positions
are returned bit-identical: they carry no text, and the vendor learns the padding pattern anyway.

Threat model shared by all mechanisms: the vendor (attacker) sees every :math:`z`, knows the mechanism and its
parameters (including any per-token ``noise_scale``), the bottom model's weights (it supplied them) and public text,
so it can compute the representation of any candidate text and run a MAP attack with :meth:`Mechanism.log_likelihood`.
The guarantees below are about the representation :math:`x` handed to the mechanism; a bound stated in a metric on
representations says nothing by itself about how different two *texts* are.

Randomness never comes from the global RNG: every draw goes through an explicit :class:`torch.Generator`, and a
call without one uses a fresh generator seeded from OS entropy.
"""

from __future__ import annotations

import abc
import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["Mechanism", "DChi", "Gaussian", "Laplace", "Identity", "build_mechanism"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _check_scalar(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def _check_positive_tensor(name: str, value: Tensor) -> Tensor:
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


def _check_param(name: str, value) -> float | Tensor:
    if isinstance(value, Tensor):
        if value.dim() == 0:
            return _check_scalar(name, value.item())
        if value.dim() != 2:
            raise ValueError(f"a per-token {name} must have shape [batch, tokens], got shape {tuple(value.shape)}")
        return _check_positive_tensor(name, value)
    return _check_scalar(name, value)


def _check_token_shape(name: str, value: Tensor, batch_shape: Sequence[int]) -> None:
    if tuple(value.shape) != tuple(batch_shape):
        raise ValueError(
            f"per-token {name} has shape {tuple(value.shape)}, expected [batch, tokens] = {tuple(batch_shape)}"
        )


def _make_generator(generator: torch.Generator | None, device) -> torch.Generator:
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return generator
    g = torch.Generator(device=device)
    g.seed()
    return g


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def _standard_gamma(concentration: float, size: Sequence[int], generator: torch.Generator) -> Tensor:
    """Gamma(concentration, 1) draws in float64 on the generator's device, driven only by ``generator``."""
    alpha = torch.full(tuple(size), float(concentration), dtype=torch.float64, device=generator.device)
    try:
        return torch._standard_gamma(alpha, generator=generator)
    except TypeError:
        # Older torch: _standard_gamma takes no generator. For integer d, Gamma(d, 1) is exactly the sum of d
        # independent Exp(1) = -log U draws, which rand() can produce from the explicit generator.
        if float(concentration) != int(concentration):
            raise
        u = torch.rand((*size, int(concentration)), dtype=torch.float64, generator=generator, device=generator.device)
        return -torch.log1p(-u).sum(-1)


class Mechanism(abc.ABC):
    """Adds noise to token representations ``h`` of shape ``[batch, tokens, d]``.

    Subclasses implement :meth:`sample_noise`, :meth:`log_likelihood`, :meth:`expected_norm` and :meth:`to_config`.
    ``noise_scale`` (shape ``[batch, tokens]``, positive) multiplies the noise magnitude of each token: a token with
    scale :math:`s` gets the mechanism's noise times :math:`s` and its guarantee weakens (or strengthens)
    accordingly. The attacker is assumed to know ``noise_scale``.
    """

    name: str = ""

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
        dtype = _compute_dtype(h.dtype)
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
            _check_token_shape("noise_scale", noise_scale, batch_shape)
            _check_positive_tensor("noise_scale", noise_scale)
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
        _check_token_shape("noise_scale", noise_scale, shape[:-1])
        _check_positive_tensor("noise_scale", noise_scale)
        return noise_scale.detach().to(device=device, dtype=dtype).unsqueeze(-1)

    @abc.abstractmethod
    def sample_noise(
        self,
        shape: Sequence[int],
        *,
        generator: torch.Generator | None,
        noise_scale: Tensor | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """Draw noise of ``shape`` (last axis = d); ``noise_scale`` has shape ``shape[:-1]``."""

    @abc.abstractmethod
    def log_likelihood(self, z: Tensor, x: Tensor) -> Tensor:
        """:math:`\\log p(z \\mid x)` up to an additive constant independent of ``x``.

        ``z[..., d]`` broadcasts against ``x[..., d]``; the result has the broadcast shape without the last axis.
        """

    @abc.abstractmethod
    def expected_norm(self, d: int) -> float:
        """:math:`\\mathbb{E}\\lVert n \\rVert_2` for noise in :math:`\\mathbb{R}^d` (at ``noise_scale`` 1)."""

    @abc.abstractmethod
    def to_config(self) -> dict:
        """JSON-serialisable config; ``build_mechanism(m.to_config())`` rebuilds the mechanism."""

    @staticmethod
    def _diff(z: Tensor, x: Tensor) -> Tensor:
        if z.shape[-1] != x.shape[-1]:
            raise ValueError(
                f"z and x must share the last (feature axis) size, got d = {z.shape[-1]} and {x.shape[-1]}"
            )
        dtype = torch.promote_types(_compute_dtype(z.dtype), _compute_dtype(x.dtype))
        try:
            return z.to(dtype) - x.to(dtype)
        except RuntimeError as err:
            raise ValueError(
                f"z of shape {tuple(z.shape)} does not broadcast against x of shape {tuple(x.shape)}"
            ) from err

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.to_config().items() if k != "name")
        return f"{type(self).__name__}({params})"


class DChi(Mechanism):
    r"""Metric local differential privacy (:math:`d_\chi`-privacy) with the Euclidean metric.

    Feyisetan et al. (2020), as used by SAP (Shen et al., 2023). The noise density in :math:`\mathbb{R}^d` is

    .. math::
        p(n) = \frac{\eta^d\,\Gamma(d/2)}{2\pi^{d/2}\,\Gamma(d)}\; e^{-\eta \lVert n \rVert_2},

    sampled exactly as :math:`n = r\,u` with :math:`u = g/\lVert g \rVert`, :math:`g \sim \mathcal{N}(0, I_d)`
    (a uniform direction) and :math:`r \sim \mathrm{Gamma}(\text{shape}=d, \text{scale}=1/\eta)`, so
    :math:`\mathbb{E}\lVert n\rVert = d/\eta` and :math:`\mathrm{sd}\lVert n\rVert = \sqrt{d}/\eta`.

    Guarantee: for any two inputs :math:`x, x'` and every output :math:`z`, by the triangle inequality

    .. math::
        p(z \mid x) \le e^{\eta \lVert x - x' \rVert_2}\, p(z \mid x').

    Assumed attacker knowledge: the mechanism, :math:`\eta` (and any ``noise_scale``), the bottom model's weights
    and public text. What it does **not** protect:

    * the bound grows with distance: a token whose representation is far from every other candidate is
      distinguishable (e.g. rare tokens, or any token when :math:`\eta \cdot` typical inter-token distance is large);
    * fresh draws compose: :math:`k` noisy observations of the same :math:`x` (repeated epochs, inference calls)
      only give :math:`p(z_{1..k} \mid x) \le e^{k\eta\lVert x - x'\rVert} p(z_{1..k} \mid x')`, and averaging
      them removes the noise;
    * sequence length and the padding pattern are sent in the clear.

    ``eta`` is a positive float or a per-token ``[batch, tokens]`` tensor (then each token has its own bound
    :math:`\eta_i`). ``noise_scale`` :math:`s` gives :math:`\eta_i = \eta / s_i`. A per-token :math:`\eta` that
    depends on the token (CTI) only bounds distinguishability between tokens with the same :math:`\eta`; see
    :mod:`splitpriv.privacy.cti`.
    """

    name = "dchi"

    def __init__(self, eta: float | Tensor):
        self.eta = _check_param("eta", eta)

    def _check_batch_shape(self, batch_shape):
        if isinstance(self.eta, Tensor):
            _check_token_shape("eta", self.eta, batch_shape)

    def sample_noise(self, shape, *, generator=None, noise_scale=None, dtype=torch.float32, device="cpu"):
        shape = tuple(shape)
        if len(shape) < 1 or shape[-1] < 1:
            raise ValueError(f"noise shape must end with a feature axis d >= 1, got {shape}")
        d = shape[-1]
        g = _make_generator(generator, device)
        scale = self._prepare_scale(noise_scale, shape, torch.float64, device)
        if isinstance(self.eta, Tensor):
            _check_token_shape("eta", self.eta, shape[:-1])
            eta = self.eta.to(device=device, dtype=torch.float64).unsqueeze(-1)
        else:
            eta = self.eta
        work = torch.float64 if dtype == torch.float64 else torch.float32
        direction = torch.randn(shape, generator=g, dtype=work, device=g.device)
        direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(direction.dtype).tiny)
        radius = _standard_gamma(d, shape[:-1], g).unsqueeze(-1).to(device) / eta
        if scale is not None:
            radius = radius * scale
        return (direction.to(device) * radius.to(direction.dtype)).to(dtype)

    def log_likelihood(self, z, x):
        r"""Exact log density :math:`-\eta\lVert z - x\rVert_2 + \log\frac{\eta^d\Gamma(d/2)}{2\pi^{d/2}\Gamma(d)}`.

        With a per-token ``eta`` tensor, ``eta`` must broadcast against the output shape.
        """
        diff = self._diff(z, x)
        d = diff.shape[-1]
        dist = diff.norm(dim=-1)
        eta = self.eta.to(device=dist.device, dtype=dist.dtype) if isinstance(self.eta, Tensor) else self.eta
        log_norm = (
            d * torch.log(torch.as_tensor(eta, dtype=dist.dtype, device=dist.device))
            - math.lgamma(d) + math.lgamma(d / 2) - math.log(2.0) - (d / 2) * math.log(math.pi)
        )
        try:
            return -eta * dist + log_norm
        except RuntimeError as err:
            raise ValueError(
                f"per-token eta of shape {tuple(self.eta.shape)} does not broadcast against {tuple(dist.shape)}"
            ) from err

    def expected_norm(self, d: int) -> float:
        """``d / eta``; for a per-token ``eta`` tensor, the average over its tokens, ``d * mean(1/eta)``."""
        d = _check_dim(d)
        if isinstance(self.eta, Tensor):
            return float(d * (1.0 / self.eta.double()).mean())
        return d / self.eta

    def to_config(self) -> dict:
        eta = self.eta.tolist() if isinstance(self.eta, Tensor) else self.eta
        return {"name": self.name, "eta": eta}


class Gaussian(Mechanism):
    r"""Isotropic Gaussian noise :math:`n \sim \mathcal{N}(0, \sigma^2 I_d)`.

    .. math:: p(z \mid x) = (2\pi\sigma^2)^{-d/2} \exp\!\big(-\lVert z - x\rVert_2^2 / 2\sigma^2\big).

    Guarantee, relative to the L2 distance :math:`\Delta = \lVert x - x'\rVert_2`: the privacy loss
    :math:`\log p(z\mid x)/p(z\mid x')` is :math:`\mathcal{N}(\mu^2/2, \mu^2)` with :math:`\mu = \Delta/\sigma`
    (:math:`\mu`-Gaussian DP), hence :math:`(\varepsilon, \delta)`-indistinguishability for every :math:`\varepsilon`
    with :math:`\delta(\varepsilon) = \Phi(\mu/2 - \varepsilon/\mu) - e^{\varepsilon}\Phi(-\mu/2 - \varepsilon/\mu)`
    (Balle & Wang, 2018); the classic sufficient condition is
    :math:`\sigma \ge \Delta\sqrt{2\ln(1.25/\delta)}/\varepsilon` for :math:`\varepsilon < 1`. There is no
    pure (:math:`\delta = 0`) bound. Same attacker model and caveats as :class:`DChi`: far-apart representations are
    distinguishable, :math:`k` fresh draws give :math:`\mu\sqrt{k}`, lengths and padding are not hidden.
    """

    name = "gaussian"

    def __init__(self, sigma: float):
        self.sigma = _check_scalar("sigma", sigma)

    def sample_noise(self, shape, *, generator=None, noise_scale=None, dtype=torch.float32, device="cpu"):
        shape = tuple(shape)
        g = _make_generator(generator, device)
        scale = self._prepare_scale(noise_scale, shape, dtype, device)
        noise = torch.randn(shape, generator=g, dtype=_compute_dtype(dtype), device=g.device).to(device) * self.sigma
        if scale is not None:
            noise = noise * scale
        return noise.to(dtype)

    def log_likelihood(self, z, x):
        diff = self._diff(z, x)
        d = diff.shape[-1]
        return -diff.pow(2).sum(-1) / (2 * self.sigma**2) - (d / 2) * math.log(2 * math.pi * self.sigma**2)

    def expected_norm(self, d: int) -> float:
        r""":math:`\sigma\sqrt2\,\Gamma(\frac{d+1}2)/\Gamma(\frac d2)` (mean of a chi distribution)."""
        d = _check_dim(d)
        return self.sigma * math.sqrt(2.0) * math.exp(math.lgamma((d + 1) / 2) - math.lgamma(d / 2))

    def to_config(self) -> dict:
        return {"name": self.name, "sigma": self.sigma}


class Laplace(Mechanism):
    r"""I.i.d. Laplace noise per coordinate, :math:`n_j \sim \mathrm{Laplace}(0, b)`.

    .. math:: p(z \mid x) = (2b)^{-d} \exp\!\big(-\lVert z - x\rVert_1 / b\big).

    Guarantee: :math:`p(z\mid x) \le e^{\varepsilon} p(z\mid x')` with :math:`\varepsilon = \lVert x - x'\rVert_1 / b`
    (pure, L1 metric). Note :math:`\lVert\cdot\rVert_1` can be up to :math:`\sqrt d` times the L2 distance. Same
    attacker model and caveats as :class:`DChi` (distance-dependent, :math:`k` draws give :math:`k\varepsilon`,
    lengths and padding not hidden). :math:`\mathbb{E}|n_j| = b`, :math:`\mathrm{Var}\,n_j = 2b^2`.
    """

    name = "laplace"

    def __init__(self, scale: float):
        self.scale = _check_scalar("scale", scale)

    def sample_noise(self, shape, *, generator=None, noise_scale=None, dtype=torch.float32, device="cpu"):
        shape = tuple(shape)
        g = _make_generator(generator, device)
        scale = self._prepare_scale(noise_scale, shape, dtype, device)
        work = _compute_dtype(dtype)
        # Inverse CDF: with V uniform on (-1/2, 1/2), -b sign(V) log(1 - 2|V|) ~ Laplace(0, b).
        v = torch.rand(shape, generator=g, dtype=work, device=g.device).to(device) - 0.5
        noise = -self.scale * torch.sign(v) * torch.log1p(-2.0 * v.abs())
        if scale is not None:
            noise = noise * scale
        return noise.to(dtype)

    def log_likelihood(self, z, x):
        diff = self._diff(z, x)
        d = diff.shape[-1]
        return -diff.abs().sum(-1) / self.scale - d * math.log(2 * self.scale)

    def expected_norm(self, d: int) -> float:
        r""":math:`\mathbb{E}\lVert n\rVert_2`, by numerical integration (no closed form).

        With :math:`S = \lVert n\rVert_2^2`, :math:`\mathbb{E}\sqrt S = \frac1{2\sqrt\pi}\int_0^\infty
        (1 - \mathbb{E}e^{-tS})\,t^{-3/2}\,dt` and, for :math:`b = 1`,
        :math:`\mathbb{E}e^{-t n_j^2} = \sqrt{\pi/4t}\;\mathrm{erfcx}(1/2\sqrt t)`.
        """
        from scipy import integrate, special

        d = _check_dim(d)

        def integrand(u: float) -> float:
            t = math.exp(u)
            if t < 1e-4:
                # Moment series E e^{-t n^2} = sum_k (-t)^k (2k)!/k!; the closed form cancels catastrophically here.
                log_phi = math.log1p(t * (-2.0 + t * (12.0 + t * (-120.0 + t * 1680.0))))
            else:
                log_phi = 0.5 * math.log(math.pi / (4 * t)) + math.log(special.erfcx(0.5 / math.sqrt(t)))
            return -math.expm1(d * log_phi) * math.exp(-u / 2)

        # In u = log t the integrand is ~2d e^{u/2} below the scale u0 = -log(2d) of E S and e^{-u/2} above it,
        # so truncating at u0 -/+ 60 drops a relative mass below e^{-29}.
        centre = -math.log(2.0 * d)
        lo, _ = integrate.quad(integrand, centre - 60.0, centre, limit=200)
        hi, _ = integrate.quad(integrand, centre, centre + 60.0, limit=200)
        return self.scale * (lo + hi) / (2 * math.sqrt(math.pi))

    def to_config(self) -> dict:
        return {"name": self.name, "scale": self.scale}


class Identity(Mechanism):
    """No noise: :math:`z = x`. No privacy guarantee at all (the split alone); the baseline for comparisons.

    ``log_likelihood`` is that of a point mass: 0 where ``z == x`` exactly, ``-inf`` elsewhere.
    """

    name = "none"

    def __call__(self, h, attention_mask=None, *, generator=None, noise_scale=None):
        self._check_inputs(h, attention_mask, noise_scale)
        return h.clone()

    def sample_noise(self, shape, *, generator=None, noise_scale=None, dtype=torch.float32, device="cpu"):
        self._prepare_scale(noise_scale, tuple(shape), dtype, device)
        return torch.zeros(tuple(shape), dtype=dtype, device=device)

    def log_likelihood(self, z, x):
        diff = self._diff(z, x)
        equal = (diff == 0).all(-1)
        return torch.where(equal, torch.zeros((), dtype=diff.dtype), torch.full((), -math.inf, dtype=diff.dtype))

    def expected_norm(self, d: int) -> float:
        _check_dim(d)
        return 0.0

    def to_config(self) -> dict:
        return {"name": self.name}


def _check_dim(d) -> int:
    if isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1:
        raise ValueError(f"d must be a positive integer, got {d!r}")
    return int(d)


_REGISTRY: dict[str, type[Mechanism]] = {
    "dchi": DChi,
    "gaussian": Gaussian,
    "laplace": Laplace,
    "none": Identity,
}
_ALIASES = {"d_chi": "dchi", "identity": "none"}


def build_mechanism(config: dict | str | None, **params) -> Mechanism:
    """Build a mechanism from a name or a config dict; keyword ``params`` override the dict's entries.

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
            raise ValueError(f"mechanism config needs a 'name' (one of {sorted(_REGISTRY)}), got {config!r}")
        name = kwargs.pop("name")
    elif isinstance(config, Mechanism):
        if params:
            raise ValueError("cannot override parameters of an already-built mechanism")
        return config
    else:
        raise ValueError(f"mechanism config must be a dict, a name or None, got {type(config).__name__}")
    if not isinstance(name, str):
        raise ValueError(f"mechanism name must be a string, got {name!r}")
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _REGISTRY:
        raise ValueError(f"unknown mechanism {name!r}; expected one of {sorted(_REGISTRY)}")
    kwargs.update(params)
    cls = _REGISTRY[key]
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"bad parameters {sorted(kwargs)} for mechanism {key!r}: {err}") from err


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
