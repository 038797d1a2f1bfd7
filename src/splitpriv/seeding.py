"""Per-step random streams, so that a run is reproducible whatever process each party runs in."""

from __future__ import annotations

import contextlib
import hashlib

import torch


def derive_seed(*parts) -> int:
    """A 63-bit seed from any printable parts, stable across processes and Python versions."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@contextlib.contextmanager
def step_rng(*parts):
    """Run a block (dropout) under the global RNG seeded from ``parts``, restoring the global state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(*parts))
        yield


def generator(seed: int | None) -> torch.Generator:
    """A private generator: seeded for experiments, from OS entropy when ``seed`` is None (real use)."""
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g
