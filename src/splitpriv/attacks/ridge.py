r"""Ridge regression over a window of received vectors, with per-position intercepts: the linear map the ``linear``
attack decodes with and the ``learned`` inverter starts from (:mod:`.linear_map` states the threat model).

Features of position ``p`` of a sentence: the received vectors of positions ``p − before .. p + after``
concatenated, :math:`x_p = [z_{p-b}; \dots; z_p; \dots; z_{p+a}] \in \mathbb{R}^{(b+1+a) r}` (a neighbour outside the
sentence is the mean received vector ``m``, so it contributes nothing after centring). Then

.. math::  \hat y(x, p) = (x - \mu_p)\,W_{g(p)} + \nu_p, \qquad
           W_g = (X_g^\top X_g + \lambda_g I)^{-1} X_g^\top Y_g,

``X``, ``Y`` the features and targets centred by their per-position means :math:`\mu_p, \nu_p` (shrunk towards the
global mean with ``κ`` pseudo-counts). Two groups: ``g = 0`` the first position of the sequence, ``g = 1`` every
other; the first position of a pre-norm decoder without BOS is its attention sink, whose residual stream is several
times larger than elsewhere and lives in other directions, so it gets its own map (when it has at least
``min_rows`` training rows; else it shares the other's). Each :math:`\lambda_g` is chosen on a grid relative to
:math:`\operatorname{tr}(X_g^\top X_g)/F` by the mean squared error on held-out rows (one eigendecomposition), then
the map is refitted on every row. Why neighbours: a token's block output mixes in its predecessors (a subword piece
carries the word it continues) and, in a causal model, the next position's output copies it (previous-token heads).
"""

from __future__ import annotations

import torch
from torch import nn

RIDGE_GRID = tuple(10.0 ** e for e in range(-6, 2))


def embedding_rows(bottom) -> torch.Tensor:
    """The word-embedding matrix [V, d] of ``bottom``'s family (BERT-like ``word_embeddings``, or a decoder's
    token embedding module itself)."""
    emb = bottom.get_submodule(bottom.family.embeddings)
    table = emb.word_embeddings if hasattr(emb, "word_embeddings") else emb
    return table.weight.detach().float()


def window(z: torch.Tensor, mask: torch.Tensor, fill: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """``[B, T, (before + 1 + after) r]``: each position's received vector with its neighbours (``fill`` [r] where
    a neighbour is outside the sentence)."""
    z = torch.where(mask.bool()[..., None], z.float(), fill)
    pad = fill.expand(z.shape[0], max(before, after), -1)
    ext = torch.cat([pad, z, pad], 1)
    t, off = z.shape[1], pad.shape[1]
    return torch.cat([ext[:, off + s:off + s + t] for s in range(-before, after + 1)], -1)


class PositionalRidge(nn.Module):
    """``ŷ(x, p) = (x − μ_p) W_{g(p)} + ν_p`` over windowed features (module docstring); positions beyond the fitted
    ones use the last row of the means."""

    def __init__(self, x_mean, y_mean, weights, fill, before: int, after: int):
        super().__init__()
        self.before, self.after = before, after
        self.register_buffer("x_mean", x_mean.float())
        self.register_buffer("y_mean", y_mean.float())
        self.register_buffer("weights", weights.float())  # [2, F, d]
        self.register_buffer("fill", fill.float())

    def features(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return window(z, mask, self.fill, self.before, self.after)

    def rows(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``ŷ`` [n, d] for features ``x`` [n, F] at ``positions`` [n]."""
        p = positions.long().clamp(max=self.x_mean.shape[0] - 1)
        xc = x.float() - self.x_mean[p]
        out = torch.where((p == 0)[:, None], xc @ self.weights[0], xc @ self.weights[1]) if (p == 0).any() \
            else xc @ self.weights[1]
        return out + self.y_mean[p]

    def forward(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``ŷ`` [B, T, d] for received ``z`` [B, T, r]."""
        b, t = z.shape[:2]
        x = self.features(z, mask).reshape(b * t, -1)
        return self.rows(x, torch.arange(t, device=z.device).repeat(b)).reshape(b, t, -1)


def _position_means(v: torch.Tensor, positions: torch.Tensor, n_pos: int, kappa: float) -> torch.Tensor:
    """Per-position means of ``v`` [n, c], shrunk towards the global mean with ``kappa`` pseudo-counts [n_pos, c]."""
    sums = torch.zeros(n_pos, v.shape[1], dtype=torch.float64)
    for s in range(0, len(v), 16384):
        sums.index_add_(0, positions[s:s + 16384], v[s:s + 16384].double())
    counts = torch.bincount(positions, minlength=n_pos).double()[:, None]
    return ((sums + kappa * sums.sum(0) / counts.sum()) / (counts + kappa)).float()


def _gram(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(XᵀX, XᵀY)`` in float64, accumulated over chunks of rows."""
    xx = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
    xy = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64)
    for s in range(0, len(x), 8192):
        a = x[s:s + 8192].double()
        xx += a.T @ a
        xy += a.T @ y[s:s + 8192].double()
    return xx, xy


def _fit_group(xc, yc, holdout, grid) -> tuple[torch.Tensor, float, float, int]:
    """``(W, λ, held-out squared error summed, held-out rows)`` of one group's centred rows."""
    xx, xy = _gram(xc[~holdout], yc[~holdout])
    evals, evecs = torch.linalg.eigh(xx)
    evals = evals.clamp(min=0)
    proj = evecs.T @ xy
    xh, yh = xc[holdout].double() @ evecs, yc[holdout].double()
    scale = float(evals.mean()) or 1.0
    sse = {c: float((xh @ (proj / (evals + c * scale)[:, None]) - yh).pow(2).sum()) for c in grid}
    c = min(grid, key=sse.get) if len(yh) else grid[len(grid) // 2]
    hx, hy = _gram(xc[holdout], yc[holdout])
    lam = c * scale
    w = torch.linalg.solve(xx + hx + lam * torch.eye(len(xx), dtype=torch.float64), xy + hy)
    return w, lam, sse.get(c, 0.0), int(holdout.sum())


def fit_positional_ridge(x: torch.Tensor, y: torch.Tensor, positions: torch.Tensor, holdout: torch.Tensor, fill,
                         before: int, after: int, *, grid=RIDGE_GRID, kappa: float = 20.0,
                         min_rows: int = 200) -> tuple[PositionalRidge, dict]:
    """Fit :class:`PositionalRidge` on windowed features ``x`` [n, F] → targets ``y`` [n, d] at ``positions`` [n]
    (module docstring); ``holdout`` [n] (bool) chooses λ. Returns the map and ``{"ridge_lambda"`` (of the group of
    positions ≥ 1), ``"sigma2"`` (held-out squared error per target coordinate), ``"first_position_map"}``."""
    positions = positions.long()
    n_pos = int(positions.max()) + 1
    mx, my = _position_means(x, positions, n_pos, kappa), _position_means(y, positions, n_pos, kappa)
    xc, yc = x - mx[positions], y - my[positions]
    first = positions == 0
    rest = ~first if (~first).any() else first
    w1, lam, sse, n_held = _fit_group(xc[rest], yc[rest], holdout[rest], grid)
    w0, own = w1, bool(int((first & ~holdout).sum()) >= min_rows)
    if own:
        w0, _, sse0, n0 = _fit_group(xc[first], yc[first], holdout[first], grid)
        sse, n_held = sse + sse0, n_held + n0
    sigma2 = sse / n_held / y.shape[1] if n_held else float(yc.pow(2).mean())  # no held-out rows: the targets' spread
    return PositionalRidge(mx, my, torch.stack([w0, w1]), fill, before, after), {
        "ridge_lambda": lam, "sigma2": sigma2, "first_position_map": own}
