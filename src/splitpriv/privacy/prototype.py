r"""Prototype quantiser: snap every token representation to the nearest of :math:`K` prototypes, send the prototype.

Customer half: :math:`i(h) = \arg\min_k \lVert h - p_k\rVert_2` over prototypes :math:`p_1..p_K \in \mathbb{R}^d`
(k-means on a sample of the bottom's outputs, :meth:`Prototype.fit`), then :math:`u = c_{i'}` with
:math:`c_k = p_k` (``r`` unset) or :math:`c_k = B^\top(p_k - \bar p)`, the prototype's coordinates in the top-``r``
principal directions :math:`B \in \mathbb{R}^{d\times r}` of the centred prototypes (exact when
:math:`r \ge K - 1`: :math:`K` points span at most :math:`K - 1` affine dimensions, so the noise is spent there only).
Vendor half: :math:`\hat h = B z + \bar p` (identity without ``r``), trained with the head. Gradients pass the snap
straight through (:math:`\partial u / \partial h` as if :math:`u = B^\top(h - \bar p)`); the prototypes themselves
stay fixed (a trained bottom moves :math:`h`, not the codebook).

* ``mode=noise``: :math:`i' = i(h)`; the mechanism perturbs :math:`c_{i'}`. Guarantee of the mechanism on the
  prototype's vector with sensitivity :math:`\Delta = \max_{k,l}\lVert c_k - c_l\rVert_2`
  (:attr:`PrototypeQuantiser.sensitivity`): d_chi at :math:`\eta` makes any two tokens
  :math:`e^{\eta\Delta}`-indistinguishable, Gaussian :math:`\sigma` makes them :math:`\Delta/\sigma`-GDP, for any
  prototypes (the vendor's, fitted or trained): the output depends on :math:`h` only through :math:`i(h)`.
* ``mode=rr``: :math:`K`-ary randomized response on the id, :math:`P(i' = i) = e^\varepsilon/(e^\varepsilon+K-1)`,
  else uniform over the other :math:`K-1`: :math:`\varepsilon`-LDP on the prototype id of each token, hence on the
  token only through its prototype (any two tokens: :math:`e^{\varepsilon}`), whatever the mechanism adds after
  (post-processing; ``none`` is the natural mechanism). The draws come from the module's own generator
  (:attr:`PrototypeQuantiser.generator`, OS entropy: never the step RNG a known training seed fixes); the
  customer's noise-once cache holds the sent vector, so with ``noise=once`` each sentence is drawn once.

Both: the many-to-one snap adds :math:`k`-anonymity-like ambiguity (every token that shares a prototype is sent
identically) but no DP guarantee of its own: a prototype that holds one frequent token reveals it. A sentence of
:math:`T` tokens composes to :math:`T\varepsilon` (rr) or :math:`T\eta\Delta` (d_chi); fresh draws on every epoch
compose too. Threat model: as :mod:`.privatizer`, the vendor knows the prototypes (it fitted and shipped them).

Fit sample (``sample_size``): the bottom's outputs for ids drawn uniformly from the whole vocabulary at random
positions (:func:`splitpriv.parts.privatizer.attach_privatizer`), data-free and, at k = 0, exactly the candidate
set of the image-space attacks. Not frequency-weighted: k-means on text would give frequent tokens prototypes of
their own (their identity then leaks) and fewer to the task words. With ``mode=rr`` the image-space attacks
(:mod:`splitpriv.attacks.image_space`) tabulate each token's deterministic image (``randomize`` off); the adaptive
attack trains through the randomisation, as the customer's outputs carry it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from splitpriv.privacy.privatizer import PRIVATIZERS, Privatizer

MODES = ("noise", "rr")


@dataclass(frozen=True)
class PrototypeConfig:
    K: int = field(metadata={"help": "number of prototypes (16..512 is the useful range; at least 2)"})
    mode: str = field(default="noise", metadata={"help": "noise: send the prototype, the mechanism noises it; "
                                                 "rr: epsilon-LDP randomized response over prototype ids"})
    epsilon: float | None = field(default=None, metadata={"help": "rr only: epsilon of the K-ary randomized "
                                                          "response (keep own id w.p. e^eps/(e^eps+K-1))"})
    r: int | None = field(default=None, metadata={"help": "send the prototype's coordinates in its top-r principal "
                                                  "directions (exact for r >= K-1); default: the d-dim vector"})


class _StraightThrough(torch.autograd.Function):
    """Forward: the code, bit for bit (``lin + (code - lin).detach()`` would leak ``lin`` in its rounding);
    backward: the gradient of ``lin``."""

    @staticmethod
    def forward(ctx, lin: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return code.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def _frozen(shape, fill=float("nan")) -> nn.Parameter:
    # parameters, not buffers: the bottom file (splitpriv.parts.save_bottom) carries parameters only
    return nn.Parameter(torch.full(shape, fill), requires_grad=False)


class PrototypeQuantiser(nn.Module):
    """The customer half, ``[B, T, d] -> [B, T, r or d]``: nearest prototype, optionally randomized, as a vector."""

    def __init__(self, d: int, K: int, mode: str, epsilon: float | None, r: int | None, seed: int = 0):
        super().__init__()
        self.K, self.mode, self.epsilon, self.seed = int(K), mode, epsilon, int(seed)
        self.prototypes = _frozen((self.K, d))  # NaN until fitted or loaded
        if r is not None:
            self.basis = _frozen((d, int(r)))
            self.center = _frozen((d,))
        self.generator = torch.Generator()
        self.generator.seed()  # OS entropy: the vendor cannot predict the randomized response
        self.randomize = True

    @property
    def projected(self) -> bool:
        return hasattr(self, "basis")

    @property
    def width(self) -> int:
        return self.basis.shape[1] if self.projected else self.prototypes.shape[1]

    @property
    def keep_probability(self) -> float:
        """:math:`e^\\varepsilon/(e^\\varepsilon + K - 1)` in rr mode (1 in noise mode)."""
        if self.mode != "rr":
            return 1.0
        return 1.0 / (1.0 + (self.K - 1) * math.exp(-self.epsilon))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``B^T (x - c)`` (identity without ``r``)."""
        return (x - self.center.detach()) @ self.basis.detach() if self.projected else x

    @property
    def codes(self) -> torch.Tensor:
        """What is sent for each prototype, [K, r or d]."""
        return self.project(self.prototypes.detach())

    @property
    def sensitivity(self) -> float:
        """:math:`\\max_{k,l}\\lVert c_k - c_l\\rVert_2`: the L2 sensitivity the mechanism sees."""
        codes = self.codes.double()
        return float(torch.cdist(codes, codes).max())

    def _check_fitted(self) -> None:
        if bool(torch.isnan(self.prototypes[0, 0])):
            raise ValueError("the prototype privatizer is not fitted: attach it with split_model(..., privatizer=...) "
                             "or load a saved bottom")

    @torch.no_grad()
    def assign(self, flat: torch.Tensor) -> torch.Tensor:
        """Nearest prototype id of every row of ``flat`` [n, d]."""
        p = self.prototypes.to(flat.dtype)
        sq = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ p.T + p.pow(2).sum(1)
        return sq.argmin(1)

    @torch.no_grad()
    def respond(self, ids: torch.Tensor) -> torch.Tensor:
        """K-ary randomized response: keep ``ids`` w.p. :attr:`keep_probability`, else a uniform other id."""
        keep = torch.rand(ids.shape, generator=self.generator) < self.keep_probability
        other = (ids + 1 + torch.randint(0, self.K - 1, ids.shape, generator=self.generator)) % self.K
        return torch.where(keep.to(ids.device), ids, other.to(ids.device))

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        self._check_fitted()
        flat = hidden.reshape(-1, hidden.shape[-1])
        ids = self.assign(flat)
        if self.mode == "rr" and self.randomize:
            ids = self.respond(ids)
        lin = self.project(flat)
        out = _StraightThrough.apply(lin, self.codes.to(lin.dtype)[ids])  # the code; gradients as if lin
        return out.reshape(*hidden.shape[:-1], out.shape[-1])


@PRIVATIZERS.register("prototype")
class Prototype(Privatizer):
    """K-means prototypes at home (sent with noise or by randomized response); a linear map back to d at the vendor."""

    name = "prototype"
    Config = PrototypeConfig
    sample_size = 16384

    def __init__(self, config):
        eps = config.epsilon
        if isinstance(eps, int) and not isinstance(eps, bool):
            config = replace(config, epsilon=float(eps))
        super().__init__(config)

    def check(self) -> None:
        c = self.config
        if isinstance(c.K, bool) or not isinstance(c.K, int) or c.K < 2:
            raise ValueError(f"prototype K must be an integer >= 2 (16..512 is useful), got {c.K!r}")
        if c.mode not in MODES:
            raise ValueError(f"prototype mode must be one of {list(MODES)}, got {c.mode!r}")
        eps = c.epsilon
        if c.mode == "rr" and (isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps)
                               or eps <= 0):
            raise ValueError(f"prototype mode=rr needs epsilon, a finite number > 0, got epsilon={eps!r}")
        if c.mode == "noise" and eps is not None:
            raise ValueError(f"prototype epsilon={eps!r} applies to mode=rr only (mode=noise: the mechanism's "
                             "parameter sets the privacy)")
        if c.r is not None and (isinstance(c.r, bool) or not isinstance(c.r, int) or c.r < 1):
            raise ValueError(f"prototype r must be a positive integer (or unset), got {c.r!r}")

    def check_width(self, d: int) -> None:
        if self.config.r is not None and self.config.r > d:
            raise ValueError(f"prototype r={self.config.r} is above the model width d={d}")

    def check_sample(self, n_tokens: int, vocab_size: int) -> None:
        if self.config.K > n_tokens:
            raise ValueError(f"prototype K={self.config.K} is above the {n_tokens} tokens its k-means is fitted on "
                             f"(this model's vocabulary has {vocab_size} ids): choose K <= {n_tokens}")

    def width(self, d: int) -> int:
        self.check_width(d)
        return d if self.config.r is None else self.config.r

    def customer_half(self, d: int, *, seed: int = 0) -> PrototypeQuantiser:
        self.check_width(d)
        c = self.config
        return PrototypeQuantiser(d, c.K, c.mode, c.epsilon, c.r, seed)

    @torch.no_grad()
    def fit(self, customer: PrototypeQuantiser, sample: torch.Tensor) -> None:
        """k-means (scikit-learn ``MiniBatchKMeans``, ``random_state`` = the half's seed) on ``sample`` [N, d]."""
        from sklearn.cluster import MiniBatchKMeans

        x = sample.detach().double().cpu().numpy()
        if customer.K > x.shape[0]:
            raise ValueError(f"prototype K={customer.K} is above the {x.shape[0]} sample points to fit it on")
        km = MiniBatchKMeans(n_clusters=customer.K, random_state=customer.seed, n_init=3, batch_size=4096,
                             max_iter=100).fit(x)
        protos = torch.as_tensor(km.cluster_centers_, dtype=torch.float64)
        customer.prototypes.copy_(protos.to(customer.prototypes.dtype))
        if customer.projected:
            center = protos.mean(0)
            _, _, vh = torch.linalg.svd(protos - center, full_matrices=True)
            customer.basis.copy_(vh[: customer.width].T.to(customer.basis.dtype))
            customer.center.copy_(center.to(customer.center.dtype))

    def vendor_half(self, customer: PrototypeQuantiser, d: int, sample: torch.Tensor | None = None) -> nn.Linear:
        """``B z + c`` (identity without ``r``): a received code maps back to its prototype exactly."""
        up = nn.Linear(customer.width, d)
        with torch.no_grad():
            if customer.projected:
                up.weight.copy_(customer.basis)
                up.bias.copy_(customer.center)
            else:
                up.weight.copy_(torch.eye(d))
                up.bias.zero_()
        return up
