"""A toy mechanism in one file, for tests/test_extension_points.py: z = x + shift·1 (deterministic, no privacy)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from splitpriv.privacy import MECHANISMS, Mechanism


@dataclass(frozen=True)
class ToyShiftConfig:
    shift: float = field(metadata={"help": "toyshift: constant added to every coordinate"})


@MECHANISMS.register("toyshift")
class ToyShift(Mechanism):
    """Adds ``shift`` to every coordinate: a point mass at x + shift, so every attack that knows it inverts it."""

    name = "toyshift"
    Config = ToyShiftConfig

    def __init__(self, shift: float):
        self.shift = float(shift)

    def sample_noise(self, shape, *, generator=None, noise_scale=None, dtype=torch.float32, device="cpu"):
        noise = torch.full(tuple(shape), self.shift, dtype=dtype, device=device)
        scale = self._prepare_scale(noise_scale, tuple(shape), dtype, device)
        return noise if scale is None else noise * scale

    def log_likelihood(self, z, x):
        diff = self._diff(z, x) - self.shift
        return -diff.pow(2).sum(-1)

    def nll(self, z, x):
        return (z - x - self.shift).pow(2).sum(-1)

    def expected_norm(self, d: int) -> float:
        return abs(self.shift) * d ** 0.5

    def coordinate_variance(self, d: int) -> float:
        return 0.0
