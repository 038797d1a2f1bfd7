"""Isotropic Gaussian noise on every token representation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from splitpriv.privacy.base import MECHANISMS, Mechanism, check_dim, check_scalar


@dataclass(frozen=True)
class GaussianConfig:
    sigma: float = field(metadata={"help": "Gaussian noise standard deviation per coordinate"})


@MECHANISMS.register("gaussian")
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
    Config = GaussianConfig
    capabilities = frozenset({"l2_loglik", "radius"})

    def __init__(self, sigma: float):
        self.sigma = check_scalar("sigma", sigma)

    def draw(self, shape, generator, dtype):
        return torch.randn(shape, generator=generator, dtype=dtype, device=generator.device) * self.sigma

    def log_likelihood(self, z, x):
        diff = self._diff(z, x)
        d = diff.shape[-1]
        return -diff.pow(2).sum(-1) / (2 * self.sigma**2) - (d / 2) * math.log(2 * math.pi * self.sigma**2)

    def expected_norm(self, d: int) -> float:
        r""":math:`\sigma\sqrt2\,\Gamma(\frac{d+1}2)/\Gamma(\frac d2)` (mean of a chi distribution)."""
        d = check_dim(d)
        return self.sigma * math.sqrt(2.0) * math.exp(math.lgamma((d + 1) / 2) - math.lgamma(d / 2))

    def nll(self, z, x):
        return (z - x).pow(2).sum(-1) / (2 * self.sigma ** 2)

    def coordinate_variance(self, d: int) -> float:
        check_dim(d)
        return self.sigma ** 2

    def loglik_from_sqdist(self, d2, noise_scale=None):
        """:math:`-\\lVert z - x\\rVert^2 / 2(\\sigma s)^2` per row."""
        scale = torch.ones(d2.shape[0]) if noise_scale is None else noise_scale.float().reshape(-1)
        return d2.mul_(-1.0 / (2 * (self.sigma * scale) ** 2)[:, None])

    def radius_log_prob(self, r, d, noise_scale=1.0):
        """:math:`r/(\\sigma s)` follows a chi law with d degrees of freedom."""
        s = self.sigma * noise_scale
        r = torch.as_tensor(r)
        return ((d - 1) * torch.log(r) - r.pow(2) / (2 * s ** 2) - d * math.log(s)
                - (d / 2 - 1) * math.log(2.0) - math.lgamma(d / 2))
