"""No noise: the split alone, the baseline of every comparison."""

from __future__ import annotations

import math

import torch

from splitpriv.privacy.base import MECHANISMS, Mechanism, check_dim


@MECHANISMS.register("none", aliases=("identity",))
class Identity(Mechanism):
    """No noise: :math:`z = x`. No privacy guarantee at all (the split alone); the baseline for comparisons.

    ``log_likelihood`` is that of a point mass: 0 where ``z == x`` exactly, ``-inf`` elsewhere.
    """

    name = "none"
    is_noiseless = True

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
        check_dim(d)
        return 0.0

    def nll(self, z, x):
        """The L2 distance (smoothed at 0): the point mass has no finite likelihood to descend."""
        return ((z - x).pow(2).sum(-1) + 1e-8).sqrt()

    def coordinate_variance(self, d: int) -> float:
        check_dim(d)
        return 0.0
