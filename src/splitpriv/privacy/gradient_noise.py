"""The customer's defence of the gradient it returns: per-example clipping and Gaussian noise (as in DP-SGD, applied
to the one tensor that leaves the machine).

Why: with a causal LM the customer sends back g = ∂L/∂h, the gradient of its loss w.r.t. the vendor's middle output.
Through the tail, whose initial weights the vendor shipped, g is linear in the one-hot next tokens of the response,
and the vendor reads them back (:mod:`splitpriv.attacks.response`). Defence: before sending, each example's slice
g_b (``[T, d]``, or the ``[C]`` row of a logit gradient) is scaled to L2 norm at most C (``clip``), then every
coordinate of a real token gets N(0, (σC)²) (``sigma`` is the noise multiplier, in units of C). Padding stays zero:
the vendor ignores it, and noise there would only reach its update.

Guarantee, per step: changing one example's response moves only its own slice, by at most 2C, so the release of
that slice is a Gaussian mechanism with sensitivity 2C and noise σC (ε ≈ 2·sqrt(2 ln(1.25/δ))/σ for one step,
before composition over steps and epochs). It does not hide what the *upward* vectors reveal (the prompt and, at training
time, the response tokens as inputs: the inversion attacks measure that).

The noise comes from the customer's own generator, seeded per step from its noise seed
(:func:`splitpriv.seeding.derive_seed`), so a replayed step sends the same noisy gradient, never a second draw.
"""

from __future__ import annotations

import torch


def clip_and_noise(grad: torch.Tensor, mask: torch.Tensor | None, clip: float, sigma: float, *,
                   generator: torch.Generator) -> torch.Tensor:
    """``grad`` ``[B, ...]`` with each example's slice clipped to L2 norm ``clip``, plus N(0, (sigma·clip)²) on the
    real tokens of ``mask`` ``[B, T]`` (every coordinate when ``mask`` is None or ``grad`` has no token axis)."""
    if not clip > 0 or sigma < 0:
        raise ValueError(f"clip must be > 0 and sigma >= 0, got clip={clip!r}, sigma={sigma!r}")
    g = grad.detach().float()
    norms = g.flatten(1).norm(dim=1).clamp_min(1e-12)
    g = g * (clip / norms).clamp(max=1.0).view(-1, *[1] * (g.dim() - 1))
    if sigma > 0:
        noise = torch.randn(g.shape, generator=generator) * (sigma * clip)
        if mask is not None and g.dim() == 3:
            noise = noise * mask[..., None].to(noise.dtype)
        g = g + noise
    return g.to(grad.dtype)
