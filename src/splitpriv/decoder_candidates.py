r"""The k = 0 candidate space of a decoder (GPT-2, Llama, Qwen2): no LayerNorm after the embedding sum, so a token's
embedding-layer output is additive,

.. math::
    e_{t,p} = w_t + q_p, \qquad \lVert z - e_{t,p}\rVert^2 = \lVert z\rVert^2 - 2\,z\cdot w_t - 2\,z\cdot q_p
    + \lVert w_t + q_p\rVert^2,

with :math:`q_p` GPT-2's learned position row and :math:`q_p = 0` for rotary families (positions enter only inside
attention, so at k = 0 a Llama sends the raw embedding row plus noise, the same vector at every position). This is
:class:`~splitpriv.candidates.CandidateSpace`'s decomposition with γ = 1, β = 0, no centring and σ = 1, so every
decoder and attack built on it (nearest, MAP, optimisation, learned inversion's candidate head) runs unchanged.
Threat model as there: computed from the vendor's own weights.
"""

from __future__ import annotations

import torch

from splitpriv.candidates import CandidateSpace


class AdditiveCandidateSpace(CandidateSpace):
    """:class:`CandidateSpace` for embedding layers without a LayerNorm (decoder families)."""

    def __init__(self, bottom, tokenizer=None, *, verify: bool = True):
        family = bottom.family
        with torch.no_grad():
            w = bottom.get_submodule(family.embeddings).weight.detach().float()
            self.vocab_size, self.d = w.shape
            position = "transformer.wpe" if "transformer.wpe" in family.embedding_parts else None
            limit = int(getattr(bottom.model_config, "max_position_embeddings", 0)
                        or getattr(bottom.model_config, "n_positions", 0) or 2048)
            self._pos = (bottom.get_submodule(position).weight.detach().float() if position
                         else torch.zeros(limit, self.d))
            self._offset, self._type0 = 0, torch.zeros(self.d)
            self.gamma, self.beta, self.eps = torch.ones(self.d), torch.zeros(self.d), 0.0
            self.word = self.wg = self._wc = w
            self._wc_sq = self._wg_sq = w.pow(2).sum(1)
        self.max_positions = self._pos.shape[0]
        self.inv_sigma = torch.empty(0, self.vocab_size)
        self.sq_table = torch.empty(0, self.vocab_size)
        self.qg = torch.empty(0, self.d)
        self.ensure(64)
        if verify:
            self._verify(bottom, tokenizer)

    @torch.no_grad()
    def ensure(self, n_positions: int) -> None:
        have = self.inv_sigma.shape[0]
        if n_positions <= have:
            return
        if n_positions > self.max_positions:
            raise ValueError(f"position {n_positions - 1} beyond the model's {self.max_positions} positions")
        n_positions = min(max(n_positions, 2 * have), self.max_positions)
        q = self._q(torch.arange(have, n_positions))
        self.inv_sigma = torch.cat([self.inv_sigma, torch.ones(len(q), self.vocab_size)])
        sq = self._wg_sq[None] + 2 * (q @ self.word.T) + q.pow(2).sum(1, keepdim=True)  # ‖w_t + q_p‖²
        self.sq_table = torch.cat([self.sq_table, sq])
        self.qg = torch.cat([self.qg, q])

    @torch.no_grad()
    def candidates(self, position: int, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        w = self.word if token_ids is None else self.word[token_ids]
        return w + self._q(torch.tensor([position]))
