"""I.i.d. Laplace noise per coordinate."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from splitpriv.privacy.base import MECHANISMS, Mechanism, check_dim, check_scalar


@dataclass(frozen=True)
class LaplaceConfig:
    scale: float = field(metadata={"help": "Laplace noise scale b per coordinate (pure DP in the L1 metric)"})


@MECHANISMS.register("laplace")
class Laplace(Mechanism):
    r"""I.i.d. Laplace noise per coordinate, :math:`n_j \sim \mathrm{Laplace}(0, b)`.

    .. math:: p(z \mid x) = (2b)^{-d} \exp\!\big(-\lVert z - x\rVert_1 / b\big).

    Guarantee: :math:`p(z\mid x) \le e^{\varepsilon} p(z\mid x')` with :math:`\varepsilon = \lVert x - x'\rVert_1 / b`
    (pure, L1 metric). Note :math:`\lVert\cdot\rVert_1` can be up to :math:`\sqrt d` times the L2 distance. Same
    attacker model and caveats as :class:`DChi` (distance-dependent, :math:`k` draws give :math:`k\varepsilon`,
    lengths and padding not hidden). :math:`\mathbb{E}|n_j| = b`, :math:`\mathrm{Var}\,n_j = 2b^2`.
    """

    name = "laplace"
    Config = LaplaceConfig

    def __init__(self, scale: float):
        self.scale = check_scalar("scale", scale)

    def draw(self, shape, generator, dtype):
        # Inverse CDF: with V uniform on (-1/2, 1/2), -b sign(V) log(1 - 2|V|) ~ Laplace(0, b).
        v = torch.rand(shape, generator=generator, dtype=dtype, device=generator.device) - 0.5
        return -self.scale * torch.sign(v) * torch.log1p(-2.0 * v.abs())

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

        d = check_dim(d)

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

    def nll(self, z, x):
        return (z - x).abs().sum(-1) / self.scale

    def coordinate_variance(self, d: int) -> float:
        check_dim(d)
        return 2 * self.scale ** 2
