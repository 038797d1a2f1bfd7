r"""Decoders over the candidate space: nearest candidate (L2, exact) and MAP under the declared mechanism and a
public-text prior; both fix the template's positions and never guess a special token elsewhere."""

from __future__ import annotations

import torch

from splitpriv.candidates.knowledge import (
    VendorKnowledge,
    apply_template,
    fit_candidates,
    shared_log_prior,
    target_positions,
)
from splitpriv.privacy import Mechanism

CHUNK = 512  # received vectors per [chunk, V] distance block (512 x 30522 floats = 62 MB)


class NearestDecoder:
    """Each received vector ↦ the token whose embedding-layer output at that position is closest (L2, exact)."""

    def __init__(self, knowledge: VendorKnowledge):
        self.knowledge = knowledge
        self.space, self.penalty = fit_candidates(knowledge)

    @torch.no_grad()
    def scores(self, z: torch.Tensor, positions: torch.Tensor, noise_scale: torch.Tensor | None = None):
        """Score of every candidate for vectors ``z`` [n, d] at ``positions`` [n] (higher = more likely) [n, V]."""
        d2 = self.space.sqdist(z, positions)
        d2 += self.penalty
        return d2.neg_()

    @torch.no_grad()
    def decode(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
               noise_scale: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids [N, T] for ``hidden`` [N, T, d]: argmax of :meth:`scores` at every position to guess, the
        template's ids elsewhere. ``noise_scale`` [N, T] is the per-position noise multiplier (CTI) if known."""
        tok = self.knowledge.tokenizer
        rows, cols = target_positions(tok, attention_mask)
        pred = torch.zeros(attention_mask.shape, dtype=torch.long)
        if rows.numel():
            z = hidden[rows, cols].float()
            scale = None if noise_scale is None else noise_scale[rows, cols]
            out = []
            for s in range(0, z.shape[0], CHUNK):
                sc = None if scale is None else scale[s:s + CHUNK]
                out.append(self.scores(z[s:s + CHUNK], cols[s:s + CHUNK], sc).argmax(1))
            pred[rows, cols] = torch.cat(out)
        return apply_template(pred, tok, attention_mask)


class MAPDecoder(NearestDecoder):
    """Each received vector ↦ ``argmax_t log p(z | e_{t,p}) + prior_weight · log prior(t)``.

    The likelihood is ``mechanism``'s (default: the knowledge's; d_chi: ``−η‖z − e‖``), from the candidate
    distances when the mechanism offers ``"l2_loglik"``, else from ``mechanism.log_likelihood`` on explicit
    candidate tables (exact, slow). Without noise it is nearest neighbour (the prior only breaks exact ties).
    """

    def __init__(self, knowledge: VendorKnowledge, mechanism: Mechanism | None = None, prior_weight: float = 1.0):
        super().__init__(knowledge)
        self.mechanism = mechanism if mechanism is not None else knowledge.mechanism
        self.prior_weight = prior_weight
        self.log_prior = shared_log_prior(knowledge, self.space.vocab_size)

    @torch.no_grad()
    def scores(self, z: torch.Tensor, positions: torch.Tensor, noise_scale: torch.Tensor | None = None):
        """Log posterior (up to a per-row constant) of every candidate [n, V]."""
        mech = self.mechanism
        if mech is None or mech.is_noiseless:
            ll = self.space.sqdist(z, positions).neg_()
            ll += self.penalty.neg()
            return ll + 1e-6 * self.log_prior
        if mech.supports("l2_loglik"):
            ll = mech.loglik_from_sqdist(self.space.sqdist(z, positions), noise_scale)
        else:
            ll = self._explicit_loglik(mech, z, positions, noise_scale)
        ll -= self.penalty
        ll += self.prior_weight * self.log_prior
        return ll

    def _explicit_loglik(self, mech: Mechanism, z, positions, noise_scale):
        if noise_scale is not None:
            mech.require("l2_loglik", user="MAP decoding with a per-token noise_scale")
        out = torch.empty(z.shape[0], self.space.vocab_size)
        for p in positions.unique().tolist():
            cand = self.space.candidates(p)
            for i in (positions == p).nonzero(as_tuple=True)[0].tolist():
                out[i] = mech.log_likelihood(z[i][None], cand).float()
        return out
