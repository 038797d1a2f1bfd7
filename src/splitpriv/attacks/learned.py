r"""Learned inversion (any split depth k): an inverter trained on public text passed through the known bottom.

The vendor knows the bottom's initial weights and the mechanism with its parameters, so it can make as many
(representation, token) pairs as it likes: public sentences (WikiText-2, and with ``n_in_domain`` the
dataset's public test split, never the customer's train or dev) → tokenizer → bottom →
``privatize(mechanism, ·, generator=attacker's own)`` → inverter → cross-entropy against the real tokens. Noise is
drawn afresh for every batch (every epoch sees new draws), exactly as the customer would draw it.

Inverter. ``u = L(z) + g(z)``: a correction ``g`` added to a start ``L(z)`` in the candidates' space. ``L`` is the
identity at k = 0 (the bottom *is* the embedding layer, so the received vector already lives among the candidates)
and, at k ≥ 1, the ridge map :class:`~splitpriv.attacks.ridge.PositionalRidge` (each position with its two
neighbours) fitted in closed form, then frozen, from noisy public outputs of the bottom to the candidates
``e_{t,p}`` of their true tokens (``skip`` chooses). ``g`` reads ``L(z)`` through (``arch="transformer"``) an input
LayerNorm + linear to ``width`` + learned position embeddings + a ``layers``-layer pre-norm Transformer encoder over
the positions of the sentence (context lets it denoise, like a masked LM learned on public text) +
a linear map back to ``d`` whose weights start at zero; ``arch="mlp"`` is the same per token, without attention.
Output: for position ``p``, ``logit_t = −s·‖u − e_{t,p}‖ + b_t`` where ``e_{t,p}`` is token ``t``'s *embedding-layer*
output at ``p`` (exact distances from :class:`~splitpriv.candidates.CandidateSpace`, no table per position),
``s`` and the per-token bias ``b`` are learned, ``b`` starts at the public log prior and ``s`` at the value that best
explains the public training pairs. So before any training the inverter *is* the MAP attack (for d_chi at k = 0,
``s = η`` exactly) or, at k ≥ 1, the ``linear`` attack's decoding (:mod:`.linear_map`); training only has to learn
what the map misses (context, non-linearity of the blocks, the noise).

Why the start matters at k ≥ 1. The former start ``u = z`` (nearest neighbour of the *raw* block output against
layer-0 candidates) only works where the residual stream stays at the embeddings' scale, as in post-LN MiniLM. In a
pre-norm decoder it does not: SmolLM2's rows have norm ≈ 3.2 while its k = 2 residual stream is an order of
magnitude larger (and the attention-sink position far larger still), so ``g`` had to learn to cancel ``z`` exactly
through an input LayerNorm, the scale calibration saw distances dominated by ``‖z‖``, and the bfloat16 distance
``‖u‖² − 2u·e + ‖e‖²`` lost the token's term to cancellation: the inverter fell back on the prior (frequent
tokens, no content word). Every token of the vocabulary — also
those absent from the public text — keeps a region where it wins.

Cost. Scoring every position against all V tokens dominates (one ``[positions, d] × [d, V]`` product plus a
dozen ``[positions, V]`` element-wise passes, forward and backward), so training uses a sampled softmax over
``n_sampled`` tokens per batch — the batch's targets, the most frequent public tokens (the usual confusers under
noise) and uniformly drawn others — with the product in bfloat16 (``train_dtype``). Inversion scores all V tokens
in float32.

Options used by the other attacks: ``n_average`` trains on the mean of that many noise draws (the noise left after
averaging linked observations), ``cti_mix`` gives that share of training tokens the CTI multiplier's reduced noise
(the vendor knows the multiplier, not which tokens get it).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field, fields

import torch
from torch import nn

from splitpriv.attacks.base import AttackerKnowledge, InversionAttack, torch_threads
from splitpriv.attacks.floor import attacker_public_texts
from splitpriv.attacks.observe import clean_hidden, tokenize
from splitpriv.attacks.registry import ATTACKS, Attack, in_model_space
from splitpriv.attacks.ridge import PositionalRidge, fit_positional_ridge, window
from splitpriv.attacks.training import batched_log_probs, contextual_top_k, sampled_candidates, train_loop
from splitpriv.candidates import CandidateSpace, apply_template, fit_candidates, fixed_positions, shared_log_prior
from splitpriv.privacy import privatize


SKIPS = ("auto", "identity", "linear")


class Inverter(nn.Module):
    """Representations [B, T, d] (+ mask) → logits over the vocabulary at each position (see module docstring)."""

    def __init__(self, space: CandidateSpace, log_prior: torch.Tensor, *, arch: str = "transformer",
                 width: int = 384, layers: int = 2, heads: int = 6, max_positions: int = 512, dropout: float = 0.1,
                 skip: PositionalRidge | None = None):
        super().__init__()
        d = space.d
        self.space = space
        self.arch = arch
        self.skip = skip  # None: the identity
        self.inp = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, width))
        if arch == "transformer":
            self.pos = nn.Embedding(max_positions, width)
            nn.init.normal_(self.pos.weight, std=0.02)
            layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout, batch_first=True, norm_first=True,
                                               activation="gelu")
            self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        elif arch == "mlp":
            self.body = nn.ModuleList(
                nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
                for _ in range(layers)
            )
        else:
            raise ValueError(f"arch must be 'transformer' or 'mlp', got {arch!r}")
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, d))
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)
        self.log_scale = nn.Parameter(torch.tensor(0.0))
        self.bias = nn.Parameter(log_prior.detach().float().clone())

    def features(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``u`` [B, T, d]: the received vector moved to where the inverter believes the token's layer-0 output is."""
        if self.skip is not None:
            z = self.skip(z, mask)
        x = self.inp(z)
        if self.arch == "transformer":
            x = x + self.pos(torch.arange(x.shape[1], device=x.device))
            x = self.body(x, src_key_padding_mask=~mask.bool())
        else:
            for block in self.body:
                x = x + block(x)
        return z + self.out(x)

    def logits(self, u: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype = torch.float32,
               token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """[n, V] logits for features ``u`` [n, d] at ``positions`` [n] (or [n, len(token_ids)])."""
        dist = (self.space.sqdist_autograd(u, positions, dtype, token_ids) + 1e-6).sqrt()
        bias = self.bias if token_ids is None else self.bias[token_ids]
        return bias - self.log_scale.exp() * dist

    @torch.no_grad()
    def calibrate_scale(self, u: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor) -> float:
        """Set ``s`` to the value (on a log grid) that maximises the likelihood of ``targets`` given features ``u``
        (those of the untrained inverter: its start ``L(z)``)."""
        best, _ = calibrated_nll(self.space, self.bias, u, positions, targets)
        self.log_scale.fill_(best)
        return math.exp(best)


@torch.no_grad()
def calibrated_nll(space: CandidateSpace, bias: torch.Tensor, u: torch.Tensor, positions: torch.Tensor,
                   targets: torch.Tensor) -> tuple[float, float]:
    """``(log s, mean NLL)`` of ``targets`` under ``logit_t = b_t − s‖u − e_{t,p}‖`` at the best ``s`` of a log grid."""
    dist = (space.sqdist(u, positions) + 1e-6).sqrt()
    cache: dict[float, float] = {}

    def nll(log_s: float) -> float:
        if log_s not in cache:
            cache[log_s] = nn.functional.cross_entropy(bias - math.exp(log_s) * dist, targets).item()
        return cache[log_s]

    best = min(range(-3, 7), key=nll)  # coarse grid, then refine around the best
    best = min((best + 0.25 * i for i in range(-4, 5)), key=nll)
    return best, nll(best)


class LearnedInversion(InversionAttack):
    """Train an :class:`Inverter` on public text through the known bottom and mechanism; invert with it."""

    name = "learned"

    def __init__(self, n_public: int = 2000, epochs: int = 2, arch: str = "transformer", width: int = 384,
                 layers: int = 2, lr: float = 1e-3, batch_size: int = 32, n_average: int = 1,
                 cti_mix: float = 0.0, train_dtype: torch.dtype = torch.bfloat16, n_sampled: int | None = 4096,
                 skip: str = "auto", seed: int = 0, progress: bool = True, threads: int | None = 1):
        if skip not in SKIPS:
            raise ValueError(f"learned skip must be one of {SKIPS}, got {skip!r}")
        self.n_public, self.epochs, self.arch, self.width, self.layers = n_public, epochs, arch, width, layers
        self.lr, self.batch_size, self.n_average, self.cti_mix = lr, batch_size, n_average, cti_mix
        self.train_dtype, self.seed, self.progress, self.threads = train_dtype, seed, progress, threads
        self.n_sampled, self.skip = n_sampled, skip
        self.history: list[float] = []

    # ---------------------------------------------------------------------------------------------- training
    def fit(self, knowledge: AttackerKnowledge, texts: list[str] | None = None) -> "LearnedInversion":
        """Train on ``texts`` (default: ``n_public`` sentences of the knowledge's public text)."""
        super().fit(knowledge)
        if texts is None:
            texts = list(knowledge.public_texts)
            if self.n_public and len(texts) > self.n_public:
                texts = random.Random(self.seed).sample(texts, self.n_public)
        if not texts:
            raise ValueError("the learned inversion needs public texts (AttackerKnowledge.public_texts)")
        with torch_threads(self.threads):
            self._train(knowledge, list(texts))
        return self

    def _train(self, knowledge: AttackerKnowledge, texts: list[str]) -> None:
        tok, bottom = knowledge.tokenizer, knowledge.bottom
        t0 = time.perf_counter()
        ids, mask, tt = tokenize(tok, texts, knowledge.max_length)
        h = clean_hidden(bottom, ids, mask, tt, batch_size=64)
        space, self.penalty = fit_candidates(knowledge)
        prior = shared_log_prior(knowledge, space.vocab_size)
        gen = torch.Generator().manual_seed(self.seed + 1)  # the attacker's noise, independent of the customer's
        fixed, _ = fixed_positions(tok, mask)
        target_mask = mask.bool() & ~fixed & torch.isfinite(self.penalty)[ids]  # no [UNK] targets
        bias = prior - self.penalty.clamp(max=1e4)
        skip = None
        if self.skip == "linear" or (self.skip == "auto" and knowledge.n_bottom_layers > 0):
            skip = self._fit_skip(space, bias, h, mask, ids, target_mask, gen)
        self.skip_used = "identity" if skip is None else "linear"
        torch.manual_seed(self.seed)  # inverter init (the attacker's own randomness)
        self.model = Inverter(space, bias, arch=self.arch, width=self.width,
                              layers=self.layers, max_positions=max(knowledge.max_length, ids.shape[1]), skip=skip)
        allowed = torch.isfinite(self.penalty).nonzero(as_tuple=True)[0]
        frequent = allowed[prior[allowed].argsort(descending=True)]
        positions = torch.arange(ids.shape[1]).expand_as(ids)
        with torch.no_grad():  # start where the MAP / nearest-neighbour attack is
            sub = slice(0, min(len(texts), 32))
            u0 = self.model.features(self._noisy(h[sub], mask[sub], gen), mask[sub])
            self.initial_scale = self.model.calibrate_scale(u0[target_mask[sub]], positions[sub][target_mask[sub]],
                                                            ids[sub][target_mask[sub]])
        decay = [p for n, p in self.model.named_parameters() if n not in ("bias", "log_scale")]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                 {"params": [self.model.bias, self.model.log_scale], "weight_decay": 0.0}], lr=self.lr)

        def step(idx):
            t = int(mask[idx].sum(1).max())
            m, sel = mask[idx, :t], target_mask[idx, :t]
            u = self.model.features(self._noisy(h[idx, :t], m, gen), m)
            target = ids[idx, :t][sel]
            cand = None
            if self.n_sampled and self.n_sampled < len(allowed):
                cand, target = sampled_candidates(target, frequent, allowed, self.n_sampled, gen)
            logits = self.model.logits(u[sel], positions[idx, :t][sel], self.train_dtype, cand)
            return nn.functional.cross_entropy(logits, target)

        self.history = train_loop(self.model, opt, step, n=len(texts), epochs=self.epochs,
                                  batch_size=self.batch_size, generator=gen,
                                  progress=f"learned inverter k={knowledge.n_bottom_layers}" if self.progress else None)
        self.train_seconds = time.perf_counter() - t0
        self.n_train_tokens = int(target_mask.sum()) * self.epochs
        self.n_train_texts = len(texts)

    @torch.no_grad()
    def _fit_skip(self, space: CandidateSpace, bias, h, mask, ids, target_mask, gen) -> PositionalRidge | None:
        """The ridge start ``L``: noisy public outputs (as :meth:`_noisy` draws them) → the candidates ``e_{t,p}`` of
        their true tokens, λ chosen on a tenth of the sentences held out. Fitted without another tenth of the
        sentences, on which ``skip="auto"`` compares it with the identity (the public NLL at the calibrated scale)
        and returns None when the identity explains them better: where the residual stream stays at the
        embeddings' scale and noise dominates (MiniLM at k = 2 under d_chi η = 10) the received vector is the better
        start."""
        fill, parts = None, []
        for s in range(0, len(ids), 256):
            m = mask[s:s + 256]
            z = self._noisy(h[s:s + 256], m, gen)
            fill = z[m.bool()].mean(0) if fill is None else fill
            rows, cols = target_mask[s:s + 256].nonzero(as_tuple=True)
            parts.append(window(z, m, fill, 1, 1)[rows, cols])
        rows, cols = target_mask.nonzero(as_tuple=True)
        t = ids[rows, cols]
        target = torch.empty(len(t), space.d)
        for p in cols.unique().tolist():
            at = cols == p
            target[at] = space.candidates(p, t[at])
        x = torch.cat(parts)
        held = (torch.rand(len(ids), generator=gen) < 0.1)[rows]  # chooses λ
        check = (torch.rand(len(ids), generator=gen) < 0.1)[rows]  # compares the two starts
        fit = ~check if (~check).sum() > check.sum() else torch.ones_like(check)
        skip, info = fit_positional_ridge(x[fit], target[fit], cols[fit], held[fit], fill, 1, 1)
        self.skip_lambda, self.skip_sigma2 = info["ridge_lambda"], info["sigma2"]
        if self.skip == "auto" and check.any():
            r, p, y = x.shape[1] // 3, cols[check], t[check]
            self.skip_nll = {"linear": calibrated_nll(space, bias, skip.rows(x[check], p), p, y)[1],
                             "identity": calibrated_nll(space, bias, x[check, r:2 * r], p, y)[1]}
            if self.skip_nll["identity"] < self.skip_nll["linear"]:
                return None
        return skip

    def _noisy(self, h: torch.Tensor, mask: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """What the vendor would receive for clean ``h``: privatize (mean of ``n_average`` draws; CTI mix)."""
        mech = self.knowledge.mechanism
        scale = None
        if self.cti_mix > 0 and self.knowledge.cti_multiplier:
            hit = torch.rand(mask.shape, generator=gen) < self.cti_mix
            scale = torch.where(hit, 1.0 / float(self.knowledge.cti_multiplier), 1.0)
        if self.n_average <= 1:
            return privatize(mech, h, mask, generator=gen, noise_scale=scale)
        acc = torch.zeros_like(h)
        for _ in range(self.n_average):
            acc += privatize(mech, h, mask, generator=gen, noise_scale=scale)
        return acc / self.n_average

    # --------------------------------------------------------------------------------------------- inversion
    @torch.no_grad()
    def log_probs(self, hidden: torch.Tensor, attention_mask: torch.Tensor, rows, cols) -> torch.Tensor:
        """Log-probabilities [n, V] of the tokens at (rows, cols) (given in row-major order)."""
        return batched_log_probs(self.model.features, self.model.logits, hidden, attention_mask, rows, cols,
                                 self.penalty.numel())

    def rank(self, hidden: torch.Tensor, attention_mask: torch.Tensor, k: int = 5) -> torch.Tensor:
        """The ``k`` most probable tokens [N, T, k] (template ids at fixed positions)."""
        return contextual_top_k(self.log_probs, hidden, attention_mask, self.knowledge.tokenizer, k)

    def invert(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return apply_template(self.rank(hidden, attention_mask, 1)[..., 0], self.knowledge.tokenizer, attention_mask)


@dataclass(frozen=True)
class LearnedOptions:
    n_public: int = field(default=2000, metadata={"help": "public sentences the inverter is trained on"})
    learned_epochs: int = field(default=2, metadata={"help": "training epochs of the inverter"})
    arch: str = field(default="transformer", metadata={
        "help": "inverter: transformer (reads the sentence's context) or mlp (per token)"})
    learned_batch_size: int = field(default=32, metadata={"help": "inverter training batch size"})
    n_in_domain: int = field(default=2000, metadata={
        "help": "the dataset's public test sentences the inverter is trained on besides n_public WikiText-2 ones "
                "(0: none)"})
    learned_skip: str = field(default="auto", metadata={
        "help": "the inverter's start: identity (the received vector), linear (a ridge map fitted on public pairs), "
                "auto (identity at k = 0, linear at k >= 1)"})

    def inverter_kw(self) -> dict:
        """These options as :class:`LearnedInversion` arguments."""
        return dict(n_public=self.n_public, epochs=self.learned_epochs, arch=self.arch,
                    batch_size=self.learned_batch_size, skip=self.learned_skip)


def shared_inverter(evaluation, options: LearnedOptions, n_average: int = 1) -> LearnedInversion:
    """The inverter for averages of ``n_average`` draws, trained once per evaluation and inverter options (the
    learned and averaging attacks share it)."""
    key = ("learned", n_average, *(getattr(options, f.name) for f in fields(LearnedOptions)))
    texts = None
    if options.n_in_domain:
        texts = attacker_public_texts(evaluation, options.n_public, options.n_in_domain, seed=evaluation.attacker_seed)
    return evaluation.memo(key, lambda: LearnedInversion(
        **options.inverter_kw(), n_average=n_average, seed=evaluation.attacker_seed,
        progress=evaluation.progress).fit(evaluation.knowledge(), texts))


@ATTACKS.register("learned")
class LearnedEntry(Attack):
    description = "an inverter trained on public text through the known bottom and mechanism (any k)"
    Options = LearnedOptions
    applies = staticmethod(in_model_space)

    @staticmethod
    def run(evaluation, options):
        attack = shared_inverter(evaluation, options)
        return evaluation.score("learned", attack, {
            "train_seconds": attack.train_seconds, "arch": attack.arch, "n_public": options.n_public,
            "n_train_texts": attack.n_train_texts,
            "epochs": attack.epochs, "final_train_loss": attack.history[-1] if attack.history else None,
            "skip": attack.skip_used})
