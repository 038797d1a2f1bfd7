r"""Nearest-neighbour and MAP inversion of embedding-layer outputs (split at k = 0).

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

:class:`NearestNeighbour` takes the closest candidate (``search="exact"``, brute force, or ``search="ivf"``,
an inverted-file index that scores only a few clusters of candidates per vector — approximate, for throughput);
:class:`MAPInversion` adds the mechanism's log-likelihood and a token prior estimated from public text.
Both fix the positions the tokenizer's template determines ([CLS] first, [SEP] last: the mask is public) and
never guess a special token elsewhere.
"""

from __future__ import annotations

import math
from collections import Counter

import torch

from splitpriv.attacks.base import AttackerKnowledge, InversionAttack, apply_template, fixed_positions, special_ids
from splitpriv.privacy.mechanisms import DChi, Gaussian, Identity, Mechanism
from splitpriv.split import Bottom

_CHUNK = 512  # received vectors per [chunk, V] distance block (512 x 30522 floats = 62 MB)


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
        self._inv_sigma = torch.empty(0, self.vocab_size)
        self._h = torch.empty(0, self.vocab_size)
        self._qg = torch.empty(0, self.d)
        self._ensure(64)
        if verify:
            self._verify(bottom, tokenizer)

    # ----------------------------------------------------------------------------------------------- tables
    def _q(self, positions: torch.Tensor) -> torch.Tensor:
        return self._pos[positions + self._offset] + self._type0

    @torch.no_grad()
    def _ensure(self, n_positions: int) -> None:
        """Grow the ``[P, V]`` tables to cover positions ``0 .. n_positions-1``."""
        have = self._inv_sigma.shape[0]
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
        self._inv_sigma = torch.cat([self._inv_sigma, inv_sigma])
        self._h = torch.cat([self._h, g * inv_sigma.pow(2)])
        self._qg = torch.cat([self._qg, qg])

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
        from splitpriv.attacks.observe import eval_mode

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
            self._ensure(int(positions.max()) + 1)
        zb = z.float() - self.beta
        wg = self.wg if token_ids is None else self.wg[token_ids]
        s = zb @ wg.T  # a·w̃_t with a = γ⊙(z−β), as (z−β)·(γ⊙w̃_t)
        s += (zb * (self._qg[positions])).sum(1, keepdim=True)  # a·q̃_p
        inv = self._inv_sigma[positions]
        h = self._h[positions]
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
            self._ensure(int(positions.max()) + 1)
        zb = z.float() - self.beta
        wg = self.wg if token_ids is None else self.wg[token_ids]
        if dtype == torch.float32:
            s = zb @ wg.T
        else:
            wl = self._wg_lowp(dtype) if token_ids is None else wg.to(dtype)
            s = (zb.to(dtype) @ wl.T).float()
        s = s + (zb * self._qg[positions]).sum(1, keepdim=True)
        h, inv = self._h, self._inv_sigma
        if token_ids is not None:
            h, inv = h[:, token_ids], inv[:, token_ids]
        d2 = h[positions] - 2.0 * inv[positions] * s + zb.pow(2).sum(1, keepdim=True)
        return d2.clamp(min=0.0)

    def _wg_lowp(self, dtype):
        cache = getattr(self, "_wg_cache", None)
        if cache is None or cache.dtype != dtype:
            cache = self._wg_cache = self.wg.to(dtype)
        return cache


def shared_log_prior(knowledge: AttackerKnowledge, vocab_size: int) -> torch.Tensor:
    """The public-text token log-prior, computed once per knowledge and shared by the attacks using it."""
    prior = getattr(knowledge, "_token_log_prior", None)
    if prior is None:
        prior = token_log_prior(knowledge.tokenizer, knowledge.public_texts, vocab_size)
        knowledge._token_log_prior = prior
    return prior


def _shared_space(knowledge: AttackerKnowledge) -> CandidateSpace:
    """One :class:`CandidateSpace` per bottom, cached on the knowledge object."""
    space = getattr(knowledge, "_candidate_space", None)
    if space is None:
        space = CandidateSpace(knowledge.bottom, knowledge.tokenizer)
        knowledge._candidate_space = space
    return space


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


def fit_candidates(knowledge: AttackerKnowledge) -> tuple[CandidateSpace, torch.Tensor]:
    """What every k = 0 attack's ``fit`` starts from: the shared candidate space and the interior penalty."""
    space = _shared_space(knowledge)
    return space, _interior_penalty(knowledge.tokenizer, space.vocab_size)


def _interior_penalty(tokenizer, vocab_size: int) -> torch.Tensor:
    """+inf on special ids: the tokenizer never puts them between the template's [CLS] and [SEP] ([UNK] aside,
    which the evaluator does not count as a real token either)."""
    pen = torch.zeros(vocab_size)
    sp = special_ids(tokenizer)
    pen[sp[sp < vocab_size]] = math.inf
    return pen


def _targets(tokenizer, mask: torch.Tensor):
    """Real positions the attack must guess: (row, column) of real, non-template positions."""
    fixed, _ = fixed_positions(tokenizer, mask)
    todo = mask.bool() & ~fixed
    rows, cols = todo.nonzero(as_tuple=True)
    return rows, cols


class NearestNeighbour(InversionAttack):
    """Each received vector ↦ the token whose embedding-layer output at that position is closest (L2).

    ``search="exact"``: brute force over all V candidates (exact; compute-bound, ~23 MFLOP per vector: 3.7k
    vectors/s on 2 cores, where 100k/s would need 2.3 TFLOP/s).
    ``search="ivf"``: candidates are clustered once (k-means, ``n_clusters``, see :class:`IVFIndex`); each vector
    is scored against its position's cluster centroids and exactly against the members of the ``n_probe`` nearest
    clusters only. Approximate: ``benchmarks/attack_cost.py`` measured the default 128 x 2 at 107k vectors/s with
    99.9% agreement with exact search on noiseless SST-2 embeddings, but only 33% under d_chi η = 10 (noise moves
    a vector nearer other clusters' centroids; 1024 x 8 keeps 51% at 60k/s). It is for bulk inversion of
    unperturbed or lightly perturbed traffic; privacy figures use ``exact``.
    """

    name = "nn"

    def __init__(self, search: str = "exact", n_clusters: int = 128, n_probe: int = 2):
        if search not in ("exact", "ivf"):
            raise ValueError(f"search must be 'exact' or 'ivf', got {search!r}")
        self.search, self.n_clusters, self.n_probe = search, n_clusters, n_probe
        self._index = None

    def fit(self, knowledge: AttackerKnowledge) -> "NearestNeighbour":
        super().fit(knowledge)
        self.space, self.penalty = fit_candidates(knowledge)
        return self

    @torch.no_grad()
    def scores(self, z: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Score of every candidate for vectors ``z`` [n, d] at ``positions`` (higher = more likely) [n, V]."""
        d2 = self.space.sqdist(z, positions)
        d2 += self.penalty
        return d2.neg_()

    @torch.no_grad()
    def invert(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tok = self.knowledge.tokenizer
        rows, cols = _targets(tok, attention_mask)
        pred = torch.zeros(attention_mask.shape, dtype=torch.long)
        if rows.numel():
            z = hidden[rows, cols].float()
            if self.search == "ivf":
                pred[rows, cols] = self._ivf().search(z, cols)
            else:
                out = []
                for s in range(0, z.shape[0], _CHUNK):
                    out.append(self.scores(z[s:s + _CHUNK], cols[s:s + _CHUNK]).argmax(1))
                pred[rows, cols] = torch.cat(out)
        return apply_template(pred, tok, attention_mask)

    def _ivf(self):
        if self._index is None:
            self._index = IVFIndex(self.space, self.penalty, self.n_clusters, self.n_probe)
        return self._index


class IVFIndex:
    """Inverted-file index over the candidates for approximate nearest-neighbour search.

    Build (once): k-means (``n_clusters``, on the candidates at one position; a token's candidates at different
    positions differ only by the position embedding, so one clustering serves all positions) and, per position,
    the centroid of each cluster's candidates. Search: score a vector against its position's centroids
    (bfloat16 product), then exactly (via :meth:`CandidateSpace.sqdist`'s decomposition) against the members of
    the ``n_probe`` best clusters, one small product per cluster for all vectors that probe it.
    Special tokens (``penalty`` = inf) are left out.
    """

    def __init__(self, space: CandidateSpace, penalty: torch.Tensor, n_clusters: int = 1024, n_probe: int = 8,
                 iterations: int = 8, seed: int = 0):
        self.space, self.n_probe = space, n_probe
        allowed = torch.isfinite(penalty).nonzero(as_tuple=True)[0]
        x = space.candidates(8 if space.max_positions > 8 else 0)[allowed]
        g = torch.Generator().manual_seed(seed)
        centroids = x[torch.randperm(len(x), generator=g)[:n_clusters]].clone()
        x_sq = x.pow(2).sum(1)
        for _ in range(iterations):
            assign = (x_sq[:, None] - 2 * x @ centroids.T + centroids.pow(2).sum(1)).argmin(1)
            counts = torch.bincount(assign, minlength=len(centroids)).float()
            sums = torch.zeros_like(centroids).index_add_(0, assign, x)
            keep = counts > 0
            centroids[keep] = sums[keep] / counts[keep, None]
        assign = (x_sq[:, None] - 2 * x @ centroids.T + centroids.pow(2).sum(1)).argmin(1)
        used = torch.bincount(assign, minlength=len(centroids)) > 0
        remap = torch.cumsum(used.long(), 0) - 1
        assign = remap[assign]
        self.n_clusters = int(used.sum())
        order = torch.argsort(assign, stable=True)
        self.members = allowed[order]  # token ids grouped by cluster
        self.assign = assign[order]
        counts = torch.bincount(self.assign, minlength=self.n_clusters)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]).tolist()
        self._centroids: dict[int, torch.Tensor] = {}
        self._tables_positions = 0
        self._ensure_tables(64)

    def _ensure_tables(self, n_positions: int) -> None:
        """Per-cluster contiguous copies of the candidates' rows of the distance tables (row gathers only)."""
        if n_positions <= self._tables_positions:
            return
        sp = self.space
        sp._ensure(n_positions)
        n_positions = sp._inv_sigma.shape[0]
        self.clusters = []
        for c in range(self.n_clusters):
            mem = self.members[self.offsets[c]:self.offsets[c + 1]]
            wg_ext = torch.cat([sp.wg[mem].T, torch.ones(1, len(mem))])  # [d+1, S]: last row adds a·q̃_p
            tables = torch.stack([sp._inv_sigma[:, mem].mul(-2.0), sp._h[:, mem]], 1).contiguous()  # [P, 2, S]
            self.clusters.append((mem, wg_ext.contiguous(), tables))
        self._tables_positions = n_positions

    def centroids(self, p: int) -> torch.Tensor:
        """Cluster centroids of the candidates at position ``p`` [C, d] (bfloat16, cached)."""
        c = self._centroids.get(p)
        if c is None:
            e = self.space.candidates(p, self.members)
            sums = torch.zeros(self.n_clusters, e.shape[1]).index_add_(0, self.assign, e)
            c = sums / torch.bincount(self.assign, minlength=self.n_clusters)[:, None].float()
            self._centroids[p] = c = c.to(torch.bfloat16)
        return c

    @torch.no_grad()
    def search(self, z: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Approximate nearest candidate ids [n] for ``z`` [n, d] at ``positions`` [n]."""
        n = z.shape[0]
        z = z.float()
        probe = torch.empty(n, self.n_probe, dtype=torch.long)
        zl = z.to(torch.bfloat16)
        for p in positions.unique().tolist():
            sel = (positions == p).nonzero(as_tuple=True)[0]
            c = self.centroids(p)
            score = (zl[sel] @ c.T).float() * 2 - c.float().pow(2).sum(1)  # −‖z−c‖² + ‖z‖²
            probe[sel] = score.topk(self.n_probe, dim=1).indices
        space = self.space
        self._ensure_tables(int(positions.max()) + 1)
        zb = z - space.beta
        zb_sq = zb.pow(2).sum(1)
        zb_ext = torch.cat([zb, (zb * space._qg[positions]).sum(1, keepdim=True)], 1)  # [n, d+1]
        best_d = torch.full((n,), math.inf)
        best_t = torch.zeros(n, dtype=torch.long)
        flat = probe.reshape(-1)
        order = torch.argsort(flat, stable=True)
        token_of = order // self.n_probe
        bounds = torch.searchsorted(flat[order], torch.arange(self.n_clusters + 1)).tolist()
        for c in range(self.n_clusters):
            lo, hi = bounds[c], bounds[c + 1]
            if lo == hi:
                continue
            idx = token_of[lo:hi]
            mem, wg_ext, tables = self.clusters[c]
            tab = tables.index_select(0, positions.index_select(0, idx))
            s = zb_ext.index_select(0, idx) @ wg_ext
            s *= tab[:, 0]
            s += tab[:, 1]
            dmin, arg = s.min(1)
            dmin += zb_sq[idx]
            better = dmin < best_d[idx]
            best_d[idx] = torch.where(better, dmin, best_d[idx])
            best_t[idx] = torch.where(better, mem[arg], best_t[idx])
        return best_t


def loglik_from_sqdist(mechanism: Mechanism, d2: torch.Tensor, noise_scale: torch.Tensor | None = None) -> torch.Tensor:
    """``log p(z | e)`` up to a per-row constant, from squared L2 distances [n, V], for mechanisms whose
    likelihood depends on the L2 distance only (d_chi, Gaussian). ``noise_scale`` [n] multiplies the noise of
    each row (CTI), i.e. divides d_chi's η / multiplies the Gaussian σ."""
    scale = torch.ones(d2.shape[0]) if noise_scale is None else noise_scale.float().reshape(-1)
    if isinstance(mechanism, DChi):
        if isinstance(mechanism.eta, torch.Tensor):
            raise ValueError("MAP needs a scalar eta (give per-token variation as noise_scale)")
        return d2.sqrt_().mul_(-(mechanism.eta / scale)[:, None])
    if isinstance(mechanism, Gaussian):
        return d2.mul_(-1.0 / (2 * (mechanism.sigma * scale) ** 2)[:, None])
    raise ValueError(f"no L2 log-likelihood for {type(mechanism).__name__}")


class MAPInversion(InversionAttack):
    """Each received vector ↦ ``argmax_t log p(z | e_{t,p}) + log prior(t)``.

    The likelihood is the mechanism's (d_chi: ``−η‖z − e‖``), the prior a unigram model of public text tokenized
    with the customer's tokenizer (add-one smoothing). Without noise (``Identity``) it is nearest neighbour.
    Mechanisms whose likelihood is not a function of the L2 distance (Laplace) fall back to
    ``mechanism.log_likelihood`` on explicit candidate tables (slow).
    """

    name = "map"

    def __init__(self, mechanism: Mechanism | None = None, prior_weight: float = 1.0):
        self.mechanism = mechanism  # None: the knowledge's mechanism
        self.prior_weight = prior_weight

    def fit(self, knowledge: AttackerKnowledge) -> "MAPInversion":
        super().fit(knowledge)
        self.space, self.penalty = fit_candidates(knowledge)
        prior = shared_log_prior(knowledge, self.space.vocab_size)
        self.log_prior = prior
        return self

    @property
    def _mech(self) -> Mechanism:
        return self.mechanism if self.mechanism is not None else self.knowledge.mechanism

    @torch.no_grad()
    def scores(self, z: torch.Tensor, positions: torch.Tensor, noise_scale: torch.Tensor | None = None):
        """Log posterior (up to a per-row constant) of every candidate [n, V]."""
        mech = self._mech
        if mech is None or isinstance(mech, Identity):
            ll = self.space.sqdist(z, positions).neg_()
            ll += self.penalty.neg()
            return ll + 1e-6 * self.log_prior  # prior only breaks exact ties
        if isinstance(mech, (DChi, Gaussian)):
            ll = loglik_from_sqdist(mech, self.space.sqdist(z, positions), noise_scale)
        else:
            ll = self._generic_loglik(mech, z, positions, noise_scale)
        ll -= self.penalty
        ll += self.prior_weight * self.log_prior
        return ll

    def _generic_loglik(self, mech, z, positions, noise_scale):
        if noise_scale is not None:
            raise ValueError(f"per-token noise_scale with {type(mech).__name__} in MAP")
        out = torch.empty(z.shape[0], self.space.vocab_size)
        for p in positions.unique().tolist():
            sel = (positions == p).nonzero(as_tuple=True)[0]
            cand = self.space.candidates(p)
            for i in sel.tolist():
                out[i] = mech.log_likelihood(z[i][None], cand).float()
        return out

    @torch.no_grad()
    def invert(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
               noise_scale: torch.Tensor | None = None) -> torch.Tensor:
        """``noise_scale`` [N, T] (optional): the per-position noise multiplier the attacker assumes (CTI)."""
        tok = self.knowledge.tokenizer
        rows, cols = _targets(tok, attention_mask)
        pred = torch.zeros(attention_mask.shape, dtype=torch.long)
        if rows.numel():
            z = hidden[rows, cols].float()
            scale = None if noise_scale is None else noise_scale[rows, cols]
            out = []
            for s in range(0, z.shape[0], _CHUNK):
                sc = None if scale is None else scale[s:s + _CHUNK]
                out.append(self.scores(z[s:s + _CHUNK], cols[s:s + _CHUNK], sc).argmax(1))
            pred[rows, cols] = torch.cat(out)
        return apply_template(pred, tok, attention_mask)
