r"""The candidate space of a privatized split at k = 0: the privatizer's image of every token at every position.

With a privatizer folded into the bottom at k = 0 the customer sends :math:`z = P(e_{t,p}) + n`, where
:math:`e_{t,p}` is token ``t``'s embedding-layer output at position ``p`` and :math:`P` the privatizer's customer
half (e.g. clip ∘ projection d → r) with the final weights the vendor knows. The vendor computes every candidate
:math:`c_{t,p} = P(e_{t,p})` itself, so nearest neighbour and MAP (:mod:`splitpriv.attacks.nearest`, on the shared
decoders of :mod:`splitpriv.candidates`) apply unchanged against these images: :class:`PrivatizedSpace` has the
interface of :class:`~splitpriv.candidates.CandidateSpace` they use (``sqdist``, ``vocab_size``, ``d``, ``word``,
``candidates``) but builds an explicit ``[V, r]`` table per position (``V·d·r`` operations; cached up to a budget),
which the LayerNorm decomposition of the plain space avoids and a generic privatizer does not allow.

Threat model: the vendor's own knowledge (bottom as shipped, privatizer weights included); nothing of the customer.
"""

from __future__ import annotations

import torch

from splitpriv.candidates import CandidateSpace, eval_mode


def privatizer_of(bottom):
    """The customer half of a privatizer folded into ``bottom``, or None."""
    return getattr(bottom, "privatizer", None)


class PrivatizedSpace:
    """Exact squared distances from received vectors [n, r] to the privatizer's image of every token."""

    def __init__(self, bottom, tokenizer=None, *, cache_floats: int = 64_000_000):
        self.plain = CandidateSpace(bottom, tokenizer)
        self.privatizer = privatizer_of(bottom)
        if self.privatizer is None:
            raise ValueError("PrivatizedSpace needs a bottom with a privatizer (bottom.privatizer)")
        self.vocab_size, self.word = self.plain.vocab_size, self.plain.word
        self.max_positions = self.plain.max_positions
        self.d = int(self.images(0).shape[1])
        self.cache_floats = int(cache_floats)
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def images(self, position: int, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """``P(e_{t,p})`` [V or len(token_ids), r] at one position."""
        e = self.plain.candidates(position, token_ids)
        # a randomizing privatizer (prototype rr) is imaged without its randomization: the attacker's table holds
        # each token's own, deterministic image
        randomize = getattr(self.privatizer, "randomize", None)
        if randomize is not None:
            self.privatizer.randomize = False
        try:
            with eval_mode(self.privatizer):
                return self.privatizer(e[None], torch.ones(1, e.shape[0], dtype=torch.long))[0].float()
        finally:
            if randomize is not None:
                self.privatizer.randomize = randomize

    candidates = images

    def _table(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        hit = self._cache.get(position)
        if hit is None:
            c = self.images(position)
            hit = (c, c.pow(2).sum(1))
            if (len(self._cache) + 1) * c.numel() <= getattr(self, "cache_floats", 0):
                self._cache[position] = hit
        return hit

    @torch.no_grad()
    def sqdist(self, z: torch.Tensor, positions: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """``‖z_i − c_{t, p_i}‖²`` [n, V] (or [n, len(token_ids)])."""
        z = z.float()
        out = torch.empty(z.shape[0], self.vocab_size if token_ids is None else len(token_ids))
        z_sq = z.pow(2).sum(1, keepdim=True)
        for p in positions.unique().tolist():
            sel = (positions == p).nonzero(as_tuple=True)[0]
            c, c_sq = self._table(int(p))
            if token_ids is not None:
                c, c_sq = c[token_ids], c_sq[token_ids]
            out[sel] = (z_sq[sel] - 2 * z[sel] @ c.T + c_sq).clamp_(min=0.0)
        return out

    def sqdist_autograd(self, *args, **kwargs):
        raise ValueError("a privatized bottom has no differentiable layer-0 candidate space; use the adaptive attack")
