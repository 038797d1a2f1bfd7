"""Vendor-side denoising of received representations (split at k = 0, frozen bottom).

At k = 0 every received vector is ``z = e_{t,p} + n``, an embedding-layer output plus noise. The vendor can map it
back to the *candidate* embedding ``e_{t̂,p}`` of a token ``t̂`` at its position and run its top on that: the top then
sees inputs from the distribution it was pretrained on instead of off-manifold noisy vectors. ``method="nn"`` takes
the token nearest to ``z``; ``method="map"`` the most probable one, ``argmax_t log p(z | e_{t,p}) + log prior(t)``
under the customer's declared mechanism (d_chi: ``−η‖z − e‖``) and a unigram prior from public text (WikiText-2).

Threat model: the projection is exactly the nearest-neighbour or MAP inversion attack used as pre-processing
(both decode with :mod:`splitpriv.candidates`, the kernel they share), computed only from the vendor's own
weights, public text, the mechanism (which every attack is assumed to know) and what it receives. It gives the
vendor nothing an attacker does not already have, so it costs no privacy (the d_chi guarantee is a property of
what the customer sends, not of what the vendor does with it, and empirical privacy is measured against that same
attack and stronger ones); it can only change utility. It is not differentiable, so it needs a frozen bottom (the
customer gets no gradient to train it with).
"""

from __future__ import annotations

import torch


class TokenProjection:
    """``hidden`` [B, T, d] ↦ the embedding-layer output of each real position's nearest (or MAP) candidate token
    (the template's special tokens at their fixed positions); padding positions are left as they are."""

    def __init__(self, bottom, tokenizer, *, method: str = "nn", declared_noise: dict | None = None):
        from splitpriv.candidates import MAPDecoder, NearestDecoder, VendorKnowledge
        from splitpriv.privacy import Identity, build_mechanism

        if bottom.n_layers != 0:
            raise ValueError(f"token projection needs a split at k = 0, the bottom has {bottom.n_layers} blocks")
        self.bottom = bottom
        if method == "nn":
            self.decoder = NearestDecoder(VendorKnowledge(bottom, tokenizer, Identity()))
        elif method == "map":
            from splitpriv.data import public_corpus

            if not declared_noise:
                raise ValueError("MAP projection needs the customer's declared mechanism")
            mechanism = build_mechanism(declared_noise)
            self.decoder = MAPDecoder(VendorKnowledge(bottom, tokenizer, mechanism, public_texts=public_corpus()))
        else:
            raise ValueError(f"unknown projection {method!r}: choose 'nn' or 'map'")

    @torch.no_grad()
    def __call__(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from splitpriv.candidates import eval_mode

        ids = self.decoder.decode(hidden, attention_mask)
        with eval_mode(self.bottom):
            projected = self.bottom.embed(input_ids=ids, token_type_ids=torch.zeros_like(ids)).to(hidden.dtype)
        return torch.where(attention_mask.bool().unsqueeze(-1), projected, hidden)
