r"""Nearest-neighbour and MAP inversion of embedding-layer outputs (split at k = 0).

At k = 0 the customer sends :math:`z = e_{t,p} + n`, an embedding-layer output plus noise, and the vendor can
compute every candidate :math:`e_{t,p}` itself (:class:`~splitpriv.candidates.CandidateSpace`, exact distances to
all V candidates without a ``[T, V, d]`` table). :class:`NearestNeighbour` takes the closest candidate
(``search="exact"``, brute force, or ``search="ivf"``, an inverted-file index that scores only a few clusters of
candidates per vector — approximate, for throughput); :class:`MAPInversion` the most probable one under the
mechanism's likelihood and a token prior estimated from public text. Both fix the template's positions ([CLS]
first, [SEP] last: the mask is public) and never guess a special token elsewhere. The vendor's denoiser
(:mod:`splitpriv.roles.vendor.denoise`) uses the same decoders (:mod:`splitpriv.candidates`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from splitpriv.attacks.base import AttackerKnowledge, InversionAttack, rank_targets
from splitpriv.attacks.registry import ATTACKS, Attack
from splitpriv.candidates import (  # noqa: F401  (re-exported: the kernel's names as the attacks have used them)
    CHUNK,
    CandidateSpace,
    MAPDecoder,
    NearestDecoder,
    apply_template,
    fit_candidates,
    shared_log_prior,
    target_positions,
    token_log_prior,
)
from splitpriv.privacy import Mechanism



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
        self.decoder = NearestDecoder(knowledge)
        self.space, self.penalty = self.decoder.space, self.decoder.penalty
        return self

    def scores(self, z: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Score of every candidate for vectors ``z`` [n, d] at ``positions`` (higher = more likely) [n, V]."""
        return self.decoder.scores(z, positions)

    def rank(self, hidden: torch.Tensor, attention_mask: torch.Tensor, k: int = 5) -> torch.Tensor:
        """The ``k`` nearest candidates [N, T, k] (exact search)."""
        return rank_targets(self.decoder.scores, hidden, attention_mask, self.knowledge.tokenizer, k)

    @torch.no_grad()
    def invert(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.search == "exact":
            return self.decoder.decode(hidden, attention_mask)
        tok = self.knowledge.tokenizer
        rows, cols = target_positions(tok, attention_mask)
        pred = torch.zeros(attention_mask.shape, dtype=torch.long)
        if rows.numel():
            pred[rows, cols] = self._ivf().search(hidden[rows, cols].float(), cols)
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
        sp.ensure(n_positions)
        n_positions = sp.inv_sigma.shape[0]
        self.clusters = []
        for c in range(self.n_clusters):
            mem = self.members[self.offsets[c]:self.offsets[c + 1]]
            wg_ext = torch.cat([sp.wg[mem].T, torch.ones(1, len(mem))])  # [d+1, S]: last row adds a·q̃_p
            tables = torch.stack([sp.inv_sigma[:, mem].mul(-2.0), sp.sq_table[:, mem]], 1).contiguous()  # [P, 2, S]
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
        zb_ext = torch.cat([zb, (zb * space.qg[positions]).sum(1, keepdim=True)], 1)  # [n, d+1]
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
    """``log p(z | e)`` up to a per-row constant from squared L2 distances [n, V]: the mechanism's own
    :meth:`~splitpriv.privacy.Mechanism.loglik_from_sqdist` (needs its ``"l2_loglik"`` capability)."""
    mechanism.require("l2_loglik", user="loglik_from_sqdist")
    return mechanism.loglik_from_sqdist(d2, noise_scale)


class MAPInversion(InversionAttack):
    """Each received vector ↦ ``argmax_t log p(z | e_{t,p}) + log prior(t)``
    (:class:`~splitpriv.candidates.MAPDecoder`).

    The likelihood is the mechanism's (d_chi: ``−η‖z − e‖``; default: the knowledge's mechanism), the prior a
    unigram model of public text tokenized with the customer's tokenizer (add-one smoothing). Without noise it is
    nearest neighbour.
    """

    name = "map"

    def __init__(self, mechanism: Mechanism | None = None, prior_weight: float = 1.0):
        self.mechanism = mechanism
        self.prior_weight = prior_weight

    def fit(self, knowledge: AttackerKnowledge) -> "MAPInversion":
        super().fit(knowledge)
        self.decoder = MAPDecoder(knowledge, self.mechanism, self.prior_weight)
        self.space, self.penalty, self.log_prior = self.decoder.space, self.decoder.penalty, self.decoder.log_prior
        return self

    def scores(self, z: torch.Tensor, positions: torch.Tensor, noise_scale: torch.Tensor | None = None):
        """Log posterior (up to a per-row constant) of every candidate [n, V]."""
        return self.decoder.scores(z, positions, noise_scale)

    def rank(self, hidden: torch.Tensor, attention_mask: torch.Tensor, k: int = 5) -> torch.Tensor:
        """The ``k`` most probable tokens [N, T, k]."""
        return rank_targets(self.decoder.scores, hidden, attention_mask, self.knowledge.tokenizer, k)

    def invert(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
               noise_scale: torch.Tensor | None = None) -> torch.Tensor:
        """``noise_scale`` [N, T] (optional): the per-position noise multiplier the attacker assumes (CTI)."""
        return self.decoder.decode(hidden, attention_mask, noise_scale)


# --- registry entries ---------------------------------------------------------------------------------------------


def at_embedding_layer(setting) -> str | None:
    """Applicability of the k = 0 attacks: they invert embedding-layer outputs."""
    k = setting.n_bottom_layers
    return None if k == 0 else f"it inverts embedding-layer outputs (k = 0), and this setting has k = {k}"


@dataclass(frozen=True)
class NearestOptions:
    nn_search: str = field(default="exact", metadata={
        "help": "exact (brute force; privacy figures) or ivf (approximate inverted-file index, for throughput)"})


@ATTACKS.register("nn")
class NearestNeighbourEntry(Attack):
    description = "nearest candidate embedding of each received vector (k = 0)"
    Options = NearestOptions
    applies = staticmethod(at_embedding_layer)

    @staticmethod
    def run(evaluation, options):
        attack = NearestNeighbour(search=options.nn_search).fit(evaluation.knowledge())
        return evaluation.score("nn", attack, {"search": options.nn_search})


@ATTACKS.register("map")
class MAPEntry(Attack):
    description = "most probable token under the mechanism's likelihood and a public-text prior (k = 0)"
    applies = staticmethod(at_embedding_layer)

    @staticmethod
    def run(evaluation, options):
        return evaluation.score("map", MAPInversion().fit(evaluation.knowledge()))
