r"""PAC-calibrated Gaussian: anisotropic noise set from the bottom's output covariance to meet a mutual-information budget.

After Xiao & Devadas, "PAC Privacy: Automatic Privacy Measurement and Control of Data Processing" (CRYPTO 2023,
arXiv:2210.03458), their anisotropic Gaussian noise for a deterministic release: with the release's covariance
:math:`\Sigma = V\,\mathrm{diag}(\lambda)\,V^\top`, noise :math:`\mathcal{N}(0, V\,\mathrm{diag}(\sigma^2)\,V^\top)`
with

.. math:: \sigma_j^2 = \frac{\sqrt{\lambda_j}\,\sum_k \sqrt{\lambda_k}}{2\beta}

gives :math:`I(X; M(X) + n) \le \beta` (their :math:`v = \beta`). Self-contained: for :math:`X \sim D`, a release
:math:`u` of covariance :math:`\mathrm{diag}(\lambda_j/\sigma_j^2)` and :math:`n \sim \mathcal{N}(0, I)`, the
Gaussian maximises entropy at fixed covariance, so
:math:`I(X; u + n) \le \tfrac12\sum_j \log(1 + \lambda_j/\sigma_j^2) \le \tfrac12\sum_j \lambda_j/\sigma_j^2 = \beta`,
and among all :math:`\sigma` with :math:`\tfrac12\sum_j\lambda_j/\sigma_j^2 = \beta` this one has the least total
power :math:`\sum_j\sigma_j^2 = (\sum_j\sqrt{\lambda_j})^2/2\beta` (Lagrange; isotropic noise needs
:math:`r\sum_j\lambda_j/2\beta`, larger by Cauchy–Schwarz). Noise goes where the representations differ.

Customer half (whitening): :math:`u = \mathrm{diag}(1/\sigma_j)\,V_r^\top(h - \mu)` over the top ``r`` eigendirections
(all ``d`` by default; the dropped directions release nothing, the sums run over the kept ones), so that the
mechanism ``gaussian`` with **sigma = 1** realises exactly that noise. Vendor half: :math:`\hat h = V_r\,
\mathrm{diag}(\sigma_j)\,z + \mu` (initialised so, trained with the head). :math:`V, \sigma, \mu, \lambda` are fitted on
the attach sample (the bottom's outputs on uniformly drawn vocabulary ids at random positions, data-free; see
:func:`splitpriv.parts.privatizer.attach_privatizer`) and ship in the bottom as frozen parameters.

What the budget bounds: the mutual information, in nats per token, between a token representation drawn from
:math:`D` (the fit distribution: a uniformly random vocabulary id at k = 0) and what is sent. PAC privacy turns it
into a bound on any attacker's posterior success :math:`p` against its prior best guess :math:`p_0`:
:math:`\mathrm{KL}(\mathrm{Bern}(p)\,\Vert\,\mathrm{Bern}(p_0)) \le \beta`. It is an average over :math:`D`, not a
worst case: no DP guarantee, an outlying token (far from :math:`\mu` in a low-variance direction) can stand out,
and text whose distribution differs from :math:`D` (frequent words; a trained bottom, whose outputs move while
:math:`\sigma` stays fixed) is not covered. A sentence of :math:`T` tokens (noise independent per token) gets at most
:math:`T\beta`; :math:`m` fresh looks at the same sentence :math:`m\beta` (hence noise once per sentence).

Other mechanisms (nothing checks the pairing: the privacy config accepts any mechanism, so it is stated here):
``gaussian`` with sigma :math:`s` gives :math:`\tfrac12\sum_j\log(1+\lambda_j/(s^2\sigma_j^2)) \le \beta/s^2` (CTI's
multiplier :math:`m` scales :math:`s` by :math:`m`); d_chi, Laplace or none: the budget is **not** met by this
argument (non-Gaussian noise of equal covariance leaks more; none leaks everything). Threat model: as
:mod:`.privatizer`, the vendor knows :math:`V, \sigma, \mu`; nothing rests on their secrecy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from splitpriv.privacy.privatizer import PRIVATIZERS, Privatizer


@dataclass(frozen=True)
class PACConfig:
    budget: float = field(metadata={"help": "mutual-information budget beta in nats per token (> 0); use with "
                                    "mechanism gaussian, sigma=1"})
    r: int | None = field(default=None, metadata={"help": "keep only the top-r eigendirections of the bottom's "
                                                  "output covariance (default: all d)"})


def _frozen(shape) -> nn.Parameter:
    # parameters, not buffers: the bottom file (splitpriv.parts.save_bottom) carries parameters only
    return nn.Parameter(torch.full(shape, float("nan")), requires_grad=False)


class PACWhitener(nn.Module):
    """The customer half, ``[B, T, d] -> [B, T, r]``: ``u = (h - mean) @ basis / scale``."""

    def __init__(self, d: int, r: int, budget: float):
        super().__init__()
        self.budget = float(budget)
        self.mean = _frozen((d,))  # NaN until fitted or loaded
        self.basis = _frozen((d, r))  # V_r, columns by decreasing eigenvalue
        self.scale = _frozen((r,))  # sigma_j
        self.eigenvalues = _frozen((r,))  # lambda_j on the fit sample

    @property
    def width(self) -> int:
        return self.basis.shape[1]

    def mi_bound(self) -> float:
        """:math:`\\tfrac12\\sum_j \\log(1 + \\lambda_j/\\sigma_j^2)` nats (with gaussian sigma = 1), at most the budget."""
        lam, s2 = self.eigenvalues.double(), self.scale.double().pow(2)
        return float(0.5 * torch.log1p(lam / s2).sum())

    def noise_covariance(self) -> torch.Tensor:
        """:math:`V_r\\,\\mathrm{diag}(\\sigma^2)\\,V_r^\\top` [d, d]: the noise in h-space with gaussian sigma = 1."""
        v = self.basis.double()
        return (v * self.scale.double().pow(2)) @ v.T

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if bool(torch.isnan(self.scale[0])):
            raise ValueError("the pac privatizer is not fitted: attach it with split_model(..., privatizer=...) or "
                             "load a saved bottom")
        mean, basis, scale = (p.detach().to(hidden.dtype) for p in (self.mean, self.basis, self.scale))
        return ((hidden - mean) @ basis) / scale


@PRIVATIZERS.register("pac")
class PAC(Privatizer):
    """Whitening by the PAC-calibrated noise scales at home; the inverse map at the vendor."""

    name = "pac"
    Config = PACConfig
    sample_size = 16384

    def check(self) -> None:
        b, r = self.config.budget, self.config.r
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or b <= 0:
            raise ValueError(f"pac budget must be a finite number of nats > 0, got {b!r}")
        if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < 1):
            raise ValueError(f"pac r must be a positive integer (or unset), got {r!r}")

    def check_width(self, d: int) -> None:
        if self.config.r is not None and self.config.r > d:
            raise ValueError(f"pac r={self.config.r} is above the model width d={d}")

    def check_sample(self, n_tokens: int, vocab_size: int) -> None:
        if n_tokens < 2:
            raise ValueError(f"pac estimates a covariance from the bottom's outputs on distinct token ids: this "
                             f"model's vocabulary of {vocab_size} ids gives {n_tokens}, it needs at least 2")

    def width(self, d: int) -> int:
        self.check_width(d)
        return d if self.config.r is None else self.config.r

    def customer_half(self, d: int, *, seed: int = 0) -> PACWhitener:
        return PACWhitener(d, self.width(d), self.config.budget)

    @torch.no_grad()
    def fit(self, customer: PACWhitener, sample: torch.Tensor) -> None:
        """Mean, covariance eigendecomposition and :math:`\\sigma_j` from ``sample`` [N, d] (float64)."""
        x = sample.detach().double().cpu()
        if x.shape[0] < 2:
            raise ValueError("pac needs at least 2 sample points to estimate a covariance")
        mu = x.mean(0)
        cov = (x - mu).T @ (x - mu) / (x.shape[0] - 1)
        lam, vec = torch.linalg.eigh(cov)
        lam, vec = lam.flip(0)[: customer.width], vec.flip(1)[:, : customer.width]
        lam = lam.clamp_min(max(float(lam[0]), 1e-30) * 1e-12)  # rounding can leave tiny negatives
        root = lam.sqrt()
        sigma2 = root * root.sum() / (2 * self.config.budget)
        for param, value in ((customer.mean, mu), (customer.basis, vec), (customer.scale, sigma2.sqrt()),
                             (customer.eigenvalues, lam)):
            param.copy_(value.to(param.dtype))

    def vendor_half(self, customer: PACWhitener, d: int, sample: torch.Tensor | None = None) -> nn.Linear:
        """``V_r diag(sigma) z + mean``: undoes the whitening exactly (on the kept directions)."""
        up = nn.Linear(customer.width, d)
        with torch.no_grad():
            up.weight.copy_((customer.basis.double() * customer.scale.double()).to(up.weight.dtype))
            up.bias.copy_(customer.mean)
        return up
