r"""The candidate space of a split at k = 0: every token's embedding-layer output at every position, as exact
squared distances from received vectors (see :mod:`splitpriv.candidates` for the maths).

The k = 0 candidate space of a decoder (GPT-2, Llama, Qwen2): no LayerNorm after the embedding sum, so a token's
embedding-layer output is additive,

.. math::
    e_{t,p} = w_t + q_p, \qquad \lVert z - e_{t,p}\rVert^2 = \lVert z\rVert^2 - 2\,z\cdot w_t - 2\,z\cdot q_p
    + \lVert w_t + q_p\rVert^2,

with :math:`q_p` GPT-2's learned position row and :math:`q_p = 0` for rotary families (positions enter only inside
attention, so at k = 0 a Llama sends the raw embedding row plus noise, the same vector at every position). This is
:class:`~splitpriv.candidates.CandidateSpace`'s decomposition with γ = 1, β = 0, no centring and σ = 1, so every
decoder and attack built on it (nearest, MAP, optimisation, learned inversion's candidate head) runs unchanged.
"""

from __future__ import annotations

import contextlib

import torch

from splitpriv.parts import Bottom


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """Run ``module`` without dropout, restoring every submodule's own train/eval flag afterwards (a bottom
    grafted from an eval-mode model is itself flagged as training; ``.train(flag)`` would turn dropout on)."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags:
            m.training = flag


class CandidateSpace:
    """Exact squared distances from vectors at known positions to every candidate embedding at that position."""

    def __init__(self, bottom: Bottom, tokenizer=None, *, verify: bool = True):
        family = bottom.family
        self.normalized = not family.causal  # decoders: no LayerNorm after the embedding sum
        with torch.no_grad():
            if self.normalized:
                self._layernorm_tables(bottom)
            else:
                self._additive_tables(bottom)
        self.max_positions = self._pos.shape[0] - self._offset
        self.inv_sigma = torch.empty(0, self.vocab_size)
        self.sq_table = torch.empty(0, self.vocab_size)
        self.qg = torch.empty(0, self.d)
        self.ensure(64)
        if verify:
            self._verify(bottom, tokenizer)

    def _layernorm_tables(self, bottom: Bottom) -> None:
        family = bottom.family
        emb = bottom.get_submodule(family.embeddings)
        for part in ("word_embeddings", "position_embeddings", "LayerNorm"):
            if not hasattr(emb, part):
                raise ValueError(f"{type(emb).__name__} has no {part}: candidate tables need a BERT-like "
                                          "embedding layer (word + position [+ type] -> LayerNorm)")
        w = emb.word_embeddings.weight.detach().float()
        self.vocab_size, self.d = w.shape
        self._pos = emb.position_embeddings.weight.detach().float()
        self._offset = (int(emb.padding_idx) + 1) if family.model_type == "roberta" else 0
        tt = getattr(emb, "token_type_embeddings", None)
        self._type0 = tt.weight[0].detach().float() if tt is not None else torch.zeros(self.d)
        ln = emb.LayerNorm
        self.gamma = ln.weight.detach().float().clone()
        self.beta = ln.bias.detach().float().clone()
        self.eps = float(ln.eps)
        self.word = w  # raw word embeddings (soft-token attacks mix these)
        wc = w - w.mean(1, keepdim=True)
        self.wg = wc * self.gamma  # gamma ⊙ w̃ [V, d]
        self._wc = wc
        self._wc_sq = wc.pow(2).sum(1)
        self._wg_sq = self.wg.pow(2).sum(1)

    def _additive_tables(self, bottom: Bottom) -> None:
        """γ = 1, β = 0, no centring, σ = 1; ``q_p`` the family's learned position table, or 0 (rotary)."""
        family = bottom.family
        w = bottom.get_submodule(family.embeddings).weight.detach().float()
        self.vocab_size, self.d = w.shape
        limit = int(getattr(bottom.model_config, "max_position_embeddings", 0)
                    or getattr(bottom.model_config, "n_positions", 0) or 2048)
        table = family.position_table
        self._pos = bottom.get_submodule(table).weight.detach().float() if table else torch.zeros(limit, self.d)
        self._offset, self._type0 = 0, torch.zeros(self.d)
        self.gamma, self.beta, self.eps = torch.ones(self.d), torch.zeros(self.d), 0.0
        self.word = self.wg = self._wc = w
        self._wc_sq = self._wg_sq = w.pow(2).sum(1)

    # ----------------------------------------------------------------------------------------------- tables
    def _q(self, positions: torch.Tensor) -> torch.Tensor:
        return self._pos[positions + self._offset] + self._type0

    @torch.no_grad()
    def ensure(self, n_positions: int) -> None:
        """Grow the ``[P, V]`` tables (``inv_sigma`` = 1/σ_{t,p}, ``sq_table`` = ‖γ⊙(w̃_t+q̃_p)‖²/σ²_{t,p}; ``qg`` =
        γ⊙q̃_p [P, d]) to cover positions ``0 .. n_positions-1``."""
        have = self.inv_sigma.shape[0]
        if n_positions <= have:
            return
        if n_positions > self.max_positions:
            raise ValueError(f"position {n_positions - 1} beyond the model's {self.max_positions} positions")
        n_positions = min(max(n_positions, 2 * have), self.max_positions)
        if not self.normalized:
            q = self._q(torch.arange(have, n_positions))
            self.inv_sigma = torch.cat([self.inv_sigma, torch.ones(len(q), self.vocab_size)])
            sq = self._wg_sq[None] + 2 * (q @ self.word.T) + q.pow(2).sum(1, keepdim=True)  # ‖w_t + q_p‖²
            self.sq_table = torch.cat([self.sq_table, sq])
            self.qg = torch.cat([self.qg, q])
            return
        pos = torch.arange(have, n_positions)
        q = self._q(pos)
        qc = q - q.mean(1, keepdim=True)
        var = (self._wc_sq[None] + 2 * (qc @ self._wc.T) + qc.pow(2).sum(1, keepdim=True)) / self.d + self.eps
        inv_sigma = var.rsqrt()
        qg = qc * self.gamma
        g = self._wg_sq[None] + 2 * ((qg * self.gamma) @ self._wc.T) + qg.pow(2).sum(1, keepdim=True)
        self.inv_sigma = torch.cat([self.inv_sigma, inv_sigma])
        self.sq_table = torch.cat([self.sq_table, g * inv_sigma.pow(2)])
        self.qg = torch.cat([self.qg, qg])

    @torch.no_grad()
    def candidates(self, position: int, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Explicit candidate embeddings ``e_{t,p}`` [V or len(token_ids), d] at one position."""
        w = self.word if token_ids is None else self.word[token_ids]
        x = w + self._q(torch.tensor([position]))
        if not self.normalized:
            return x
        x = x - x.mean(1, keepdim=True)
        return self.gamma * x * (x.pow(2).mean(1, keepdim=True) + self.eps).rsqrt() + self.beta

    def _verify(self, bottom: Bottom, tokenizer) -> None:
        """Compare the decomposition with the bottom's own embedding layer on a probe sequence."""
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(1000, self.vocab_size, (1, 12), generator=g)
        with torch.no_grad(), eval_mode(bottom):
            ref = bottom.embed(input_ids=ids, token_type_ids=torch.zeros_like(ids)).float()[0]
            for p in (0, 5, 11):
                direct = self.candidates(p, ids[0, p:p + 1])[0]
                if not torch.allclose(direct, ref[p], atol=1e-4, rtol=1e-4):
                    raise ValueError(
                        f"{bottom.family.model_type}: the embedding layer is not LayerNorm(word + position + type) "
                        f"as candidate tables assume (max error {float((direct - ref[p]).abs().max()):.2e})")
            d2 = self.sqdist(ref, torch.arange(12))
            exact = (ref[:, None] - torch.stack([self.candidates(p, ids[0]) for p in range(12)])).pow(2).sum(-1)
            if not torch.allclose(d2.gather(1, ids[0][:, None]).squeeze(1), torch.zeros(12), atol=1e-3):
                raise ValueError("decomposed candidate distances do not vanish at the true token")
            if not torch.allclose(d2[:, ids[0]], exact, atol=1e-2, rtol=1e-4):
                raise ValueError("decomposed candidate distances disagree with direct distances")

    # ------------------------------------------------------------------------------------------- distances
    @torch.no_grad()
    def sqdist(self, z: torch.Tensor, positions: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """``‖z_i − e_{t, p_i}‖²`` for vectors ``z`` [n, d] at ``positions`` [n]: [n, V] (or [n, len(token_ids)])."""
        positions = positions.long()
        if positions.numel():
            self.ensure(int(positions.max()) + 1)
        zb = z.float() - self.beta
        wg = self.wg if token_ids is None else self.wg[token_ids]
        s = zb @ wg.T  # a·w̃_t with a = γ⊙(z−β), as (z−β)·(γ⊙w̃_t)
        s += (zb * (self.qg[positions])).sum(1, keepdim=True)  # a·q̃_p
        inv = self.inv_sigma[positions]
        h = self.sq_table[positions]
        if token_ids is not None:
            inv, h = inv[:, token_ids], h[:, token_ids]
        s *= inv
        s *= -2.0
        s += h
        s += zb.pow(2).sum(1, keepdim=True)
        return s.clamp_(min=0.0)

    def sqdist_autograd(self, z: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype = torch.float32,
                        token_ids: torch.Tensor | None = None):
        """:meth:`sqdist` that gradients flow through (to ``z``); the ``[n, d] x [d, V]`` product in ``dtype``;
        ``token_ids`` restricts the candidates (columns) to those tokens."""
        positions = positions.long()
        if positions.numel():
            self.ensure(int(positions.max()) + 1)
        zb = z.float() - self.beta
        wg = self.wg if token_ids is None else self.wg[token_ids]
        if dtype == torch.float32:
            s = zb @ wg.T
        else:
            wl = self._wg_lowp(dtype) if token_ids is None else wg.to(dtype)
            s = (zb.to(dtype) @ wl.T).float()
        s = s + (zb * self.qg[positions]).sum(1, keepdim=True)
        h, inv = self.sq_table, self.inv_sigma
        if token_ids is not None:
            h, inv = h[:, token_ids], inv[:, token_ids]
        d2 = h[positions] - 2.0 * inv[positions] * s + zb.pow(2).sum(1, keepdim=True)
        return d2.clamp(min=0.0)

    def _wg_lowp(self, dtype):
        cache = getattr(self, "_wg_cache", None)
        if cache is None or cache.dtype != dtype:
            cache = self._wg_cache = self.wg.to(dtype)
        return cache
