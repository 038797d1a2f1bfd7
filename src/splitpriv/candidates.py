r"""The candidate space of a split at k = 0: every token's embedding-layer output at every position, and the
nearest-candidate and MAP decoders over it. Shared by the vendor's denoiser (:mod:`splitpriv.roles.denoise`) and
the inversion attacks (:mod:`splitpriv.attacks.nearest` and the attacks built on it).

At k = 0 the customer sends :math:`z = e_{t,p} + n` where :math:`e_{t,p}` is the embedding layer's output for
token :math:`t` at position :math:`p`. The vendor knows the embedding weights, so it can compute every candidate
itself. With a post-sum LayerNorm (BERT, RoBERTa, DistilBERT)

.. math::
    e_{t,p} = \gamma \odot \frac{\tilde w_t + \tilde q_p}{\sigma_{t,p}} + \beta, \qquad
    \sigma_{t,p}^2 = \tfrac1d \lVert \tilde w_t + \tilde q_p \rVert^2 + \epsilon,

with :math:`\tilde w_t` the centred word embedding and :math:`\tilde q_p` the centred position (+ token type 0)
embedding. Expanding :math:`\lVert z - e_{t,p}\rVert^2` gives

.. math::
    \lVert z-\beta\rVert^2 - \frac{2}{\sigma_{t,p}}\big(a\cdot\tilde w_t + a\cdot\tilde q_p\big)
    + \frac{\lVert \gamma\odot(\tilde w_t+\tilde q_p)\rVert^2}{\sigma_{t,p}^2}, \qquad a = \gamma\odot(z-\beta),

so one matrix product ``a @ W̃ᵀ`` shared by all positions plus two ``[positions, V]`` tables give the exact
squared distance of every received vector to all ``V`` candidates at its position: no ``[T, V, d]`` table
(3 GB at T = 64) is ever built. :class:`CandidateSpace` holds this and verifies it against the bottom's own
``embed`` on a probe sentence, so a family whose embeddings do not have this form fails loudly.

:class:`NearestDecoder` maps each received vector to the closest candidate; :class:`MAPDecoder` to the most
probable one, :math:`\arg\max_t \log p(z \mid e_{t,p}) + w \log \mathrm{prior}(t)`, under the declared mechanism
and a unigram prior of public text. Both fix the positions the tokenizer's template determines ([CLS] first, [SEP]
last: the mask is public) and never guess a special token elsewhere.

Threat model: everything here is computed from what the vendor holds anyway (:class:`VendorKnowledge`: its own
bottom weights as shipped, the tokenizer, the mechanism the customer declared, public text) and what it receives.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from dataclasses import dataclass, field

import torch

from splitpriv.privacy import Mechanism
from splitpriv.split import Bottom

CHUNK = 512  # received vectors per [chunk, V] distance block (512 x 30522 floats = 62 MB)


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


@dataclass
class VendorKnowledge:
    """What the honest-but-curious vendor knows besides the wire: its own bottom weights (as shipped), the
    tokenizer, the mechanism and its parameters, and public text. Never the customer's text, labels, CTI token
    set, noise seed or updated bottom."""

    bottom: Bottom
    tokenizer: object
    mechanism: Mechanism | None
    public_texts: list[str] = field(default_factory=list)
    cti_multiplier: float | None = None
    max_length: int = 64
    _space: "CandidateSpace | None" = field(default=None, init=False, repr=False, compare=False)
    _log_prior: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def n_bottom_layers(self) -> int:
        return self.bottom.n_layers


# --- the tokenizer's template (public: the mask is sent in the clear) ------------------------------------------


def special_ids(tokenizer) -> torch.Tensor:
    """The tokenizer's special token ids ([CLS], [SEP], [PAD], [UNK], [MASK], <s>, ...), sorted."""
    return torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)


def template_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after every single text (BERT: ``[CLS]`` / ``[SEP]``)."""
    sentinel = -7
    ids = list(tokenizer.build_inputs_with_special_tokens([sentinel]))
    i = ids.index(sentinel)
    return ids[:i], ids[i + 1:]


def fixed_positions(tokenizer, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions whose token the vendor knows from the tokenizer's template and the mask alone.

    The first real positions hold the template's prefix ([CLS]) and the last real ones its suffix ([SEP]): the
    mask is sent in the clear, so every attack may fix them. Returns ``(fixed [N, T] bool, ids [N, T] long)``;
    ``ids`` is meaningful where ``fixed``.
    """
    prefix, suffix = template_tokens(tokenizer)
    mask = attention_mask.bool()
    rank = mask.long().cumsum(1) - 1  # index of each real position among the real positions of its row
    length = mask.sum(1, keepdim=True)
    fixed = torch.zeros_like(mask)
    ids = torch.zeros(mask.shape, dtype=torch.long)
    for i, tok in enumerate(prefix):
        hit = mask & (rank == i)
        fixed |= hit
        ids[hit] = tok
    for j, tok in enumerate(suffix):
        hit = mask & (rank == length - len(suffix) + j)
        fixed |= hit
        ids[hit] = tok
    return fixed, ids


def apply_template(predicted: torch.Tensor, tokenizer, attention_mask: torch.Tensor) -> torch.Tensor:
    """``predicted`` with the template's fixed positions set to their known ids and padding set to [PAD]."""
    fixed, ids = fixed_positions(tokenizer, attention_mask)
    out = torch.where(fixed, ids, predicted.cpu())
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return torch.where(attention_mask.bool().cpu(), out, torch.full_like(out, pad))


def target_positions(tokenizer, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Real positions a decoder must guess: (row, column) of real, non-template positions, row-major."""
    fixed, _ = fixed_positions(tokenizer, mask)
    return (mask.bool() & ~fixed).nonzero(as_tuple=True)


# --- the candidates ---------------------------------------------------------------------------------------------


class CandidateSpace:
    """Exact squared distances from vectors at known positions to every candidate embedding at that position."""

    def __init__(self, bottom: Bottom, tokenizer=None, *, verify: bool = True):
        family = bottom.family
        emb = bottom.get_submodule(family.embeddings)
        for part in ("word_embeddings", "position_embeddings", "LayerNorm"):
            if not hasattr(emb, part):
                raise ValueError(f"{type(emb).__name__} has no {part}: candidate tables need a BERT-like "
                                          "embedding layer (word + position [+ type] -> LayerNorm)")
        with torch.no_grad():
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
        self.max_positions = self._pos.shape[0] - self._offset
        self.inv_sigma = torch.empty(0, self.vocab_size)
        self.sq_table = torch.empty(0, self.vocab_size)
        self.qg = torch.empty(0, self.d)
        self.ensure(64)
        if verify:
            self._verify(bottom, tokenizer)

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




def token_log_prior(tokenizer, texts: list[str], vocab_size: int | None = None) -> torch.Tensor:
    """Log unigram prior over the vocabulary from public ``texts`` (same tokenizer, add-one smoothing) [V]."""
    vocab_size = vocab_size or len(tokenizer)
    counts = torch.ones(vocab_size, dtype=torch.float64)
    if texts:
        ids = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=512)["input_ids"]
        c = Counter(t for seq in ids for t in seq)
        idx = torch.tensor(list(c.keys()), dtype=torch.long)
        counts[idx] += torch.tensor(list(c.values()), dtype=torch.float64)
    return (counts / counts.sum()).log().float()


def shared_log_prior(knowledge: VendorKnowledge, vocab_size: int) -> torch.Tensor:
    """The public-text token log-prior, computed once per knowledge and shared by everything using it."""
    if knowledge._log_prior is None:
        knowledge._log_prior = token_log_prior(knowledge.tokenizer, knowledge.public_texts, vocab_size)
    return knowledge._log_prior


def shared_space(knowledge: VendorKnowledge) -> CandidateSpace:
    """One :class:`CandidateSpace` per knowledge (its bottom), built on first use."""
    if knowledge._space is None:
        space = CandidateSpace
        if knowledge.bottom.family.causal:  # decoders: no LayerNorm after the embedding sum
            from splitpriv.decoder_candidates import AdditiveCandidateSpace as space
        knowledge._space = space(knowledge.bottom, knowledge.tokenizer)
    return knowledge._space


def interior_penalty(tokenizer, vocab_size: int) -> torch.Tensor:
    """+inf on special ids: the tokenizer never puts them between the template's [CLS] and [SEP] ([UNK] aside,
    which the evaluator does not count as a real token either)."""
    pen = torch.zeros(vocab_size)
    sp = special_ids(tokenizer)
    pen[sp[sp < vocab_size]] = math.inf
    return pen


def fit_candidates(knowledge: VendorKnowledge) -> tuple[CandidateSpace, torch.Tensor]:
    """What every k = 0 decoder starts from: the shared candidate space and the interior penalty."""
    space = shared_space(knowledge)
    return space, interior_penalty(knowledge.tokenizer, space.vocab_size)


# --- decoding ---------------------------------------------------------------------------------------------------


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
