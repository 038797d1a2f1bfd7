"""d_chi (metric local DP) noise: uniform direction, Gamma(d, 1/η) radius."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from splitpriv.privacy.base import MECHANISMS, Mechanism, check_dim, check_param, check_token_shape, make_generator, standard_gamma


@dataclass(frozen=True)
class DChiConfig:
    eta: float = field(metadata={"help": "d_chi privacy parameter: noise density ∝ exp(-eta·‖n‖); E‖n‖ = d/eta"})


@MECHANISMS.register("dchi", aliases=("d_chi",))
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
    Config = DChiConfig
    capabilities = frozenset({"l2_loglik", "radius"})

    def __init__(self, eta: float | Tensor):
        self.eta = check_param("eta", eta)

    def _check_batch_shape(self, batch_shape):
        if isinstance(self.eta, Tensor):
            check_token_shape("eta", self.eta, batch_shape)

    def sample_noise(self, shape, *, generator=None, noise_scale=None, dtype=torch.float32, device="cpu"):
        shape = tuple(shape)
        if len(shape) < 1 or shape[-1] < 1:
            raise ValueError(f"noise shape must end with a feature axis d >= 1, got {shape}")
        d = shape[-1]
        g = make_generator(generator, device)
        scale = self._prepare_scale(noise_scale, shape, torch.float64, device)
        if isinstance(self.eta, Tensor):
            check_token_shape("eta", self.eta, shape[:-1])
            eta = self.eta.to(device=device, dtype=torch.float64).unsqueeze(-1)
        else:
            eta = self.eta
        work = torch.float64 if dtype == torch.float64 else torch.float32
        direction = torch.randn(shape, generator=g, dtype=work, device=g.device)
        direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(direction.dtype).tiny)
        radius = standard_gamma(d, shape[:-1], g).unsqueeze(-1).to(device) / eta
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
        d = check_dim(d)
        if isinstance(self.eta, Tensor):
            return float(d * (1.0 / self.eta.double()).mean())
        return d / self.eta

    def _scalar_eta(self, what: str) -> float:
        if isinstance(self.eta, Tensor):
            raise ValueError(f"{what} needs a scalar eta (give per-token variation as noise_scale)")
        return self.eta

    def supports(self, capability: str) -> bool:
        return super().supports(capability) and not isinstance(self.eta, Tensor)

    def nll(self, z, x):
        """:math:`\\eta\\sqrt{\\lVert z - x\\rVert^2 + 10^{-8}}` (smoothed at 0 so that it stays differentiable)."""
        eta = self._scalar_eta("nll")
        return eta * ((z - x).pow(2).sum(-1) + 1e-8).sqrt()

    def coordinate_variance(self, d: int) -> float:
        """The radius is Gamma(d, 1/η): :math:`\\mathbb{E} r^2 = d(d+1)/\\eta^2`, so :math:`(d+1)/\\eta^2` per coordinate."""
        return (check_dim(d) + 1) / self._scalar_eta("coordinate_variance") ** 2

    def loglik_from_sqdist(self, d2, noise_scale=None):
        """:math:`-(\\eta/s)\\,\\lVert z - x\\rVert_2` per row."""
        eta = self._scalar_eta("loglik_from_sqdist")
        scale = torch.ones(d2.shape[0]) if noise_scale is None else noise_scale.float().reshape(-1)
        return d2.sqrt_().mul_(-(eta / scale)[:, None])

    def radius_log_prob(self, r, d, noise_scale=1.0):
        """Gamma(d, rate η/s): :math:`d\\log(\\eta/s) + (d-1)\\log r - (\\eta/s) r - \\log\\Gamma(d)`."""
        rate = self._scalar_eta("radius_log_prob") / noise_scale
        r = torch.as_tensor(r)
        return d * math.log(rate) + (d - 1) * torch.log(r) - rate * r - math.lgamma(d)
