r"""Adaptive learned inversion: a generic inverter trained from scratch through the bottom *as shipped*.

Threat model (Kerckhoffs). The vendor knows the bottom exactly as the customer runs it — embeddings, ``k`` blocks
and any privatizer folded into it, with its *final* weights (privacy must not rest on a module the vendor trained,
shipped or could reconstruct) — and the mechanism with its parameters. It never sees the customer's text. It makes
(representation, token) pairs from public text — WikiText-2 plus the dataset's public test sentences (in-domain,
disjoint from the customer's train and dev) — through bottom → mechanism with fresh noise at every epoch, and
trains an inverter on them. Nothing here depends on the representation space: any output width ``r`` of the bottom
works, so this is the attack that judges a privatizer.

Inverter. Received ``z`` [T, r] at positions ``p``; features

.. math::  x_p = z_p - \mu_p + g(z)_p,

``g`` a ``layers``-layer pre-norm Transformer encoder over the positions (input LayerNorm + linear r → ``width``,
learned position embeddings; its output map back to ``r`` starts at zero), or (``init_from_vendor``, when r = d)
the vendor's own pretrained blocks ``k .. k+layers-1``. A generic head over the whole vocabulary, one prototype
:math:`a_t \in \mathbb{R}^r` and bias :math:`b_t` per token:
``head="linear"``: :math:`\ell_t = s(2 x\cdot a_t - \lVert a_t\rVert^2) + b_t` (a linear layer, weight
:math:`2 s a_t`); ``head="distance"``: :math:`\ell_t = b_t - s\lVert x - a_t\rVert` (the d_chi likelihood's form).

Initialisation, from the vendor's knowledge only: the bottom's images of every token, :math:`c_{t,p}` =
bottom("[CLS] t t … t [SEP]") at positions ``1 .. L`` (at k = 0 exactly every token's image at every position
through embeddings and privatizer), split additively :math:`c_{t,p} \approx \mu_p + a_t` (``μ_p`` the mean over
tokens, ``a_t`` the mean over positions of the rest); :math:`b_t` = ``prior_weight`` · the public log prior; ``s``
the grid value that best explains a batch of noisy public pairs. Before training the inverter is thus nearest
neighbour (linear head) or MAP under d_chi (distance head) against the privatizer's image of the vocabulary;
training (cross-entropy, sampled softmax over ``n_sampled`` tokens, AdamW with warm-up and linear decay) learns
what context, depth and the noise change. ``head_init="random"`` starts the head from scratch instead.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from splitpriv.attacks.base import AttackerKnowledge, InversionAttack, torch_threads
from splitpriv.attacks.floor import attacker_public_texts, position_prior
from splitpriv.attacks.observe import clean_hidden, tokenize
from splitpriv.attacks.registry import ATTACKS, Attack
from splitpriv.attacks.training import (
    batched_log_probs,
    contextual_top_k,
    sampled_candidates,
    train_loop,
)
from splitpriv.candidates import (
    apply_template,
    eval_mode,
    fixed_positions,
    interior_penalty,
    template_tokens,
    token_log_prior,
)
from splitpriv.privacy import privatize

HEADS = ("linear", "distance")


@torch.no_grad()
def token_images(bottom, tokenizer, vocab_size: int, n_positions: int, allowed: torch.Tensor,
                 budget: int = 4_000_000) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a [V, r], mu [n_positions + 1, r])``: the additive split ``c_{t,p} ≈ mu_p + a_t`` of the bottom's output
    for token ``t`` repeated at positions ``1 .. n_positions`` (row 0 of ``mu``: the prefix position)."""
    prefix, suffix = template_tokens(tokenizer)
    n = len(prefix) + n_positions + len(suffix)
    chunk = max(1, budget // (n * bottom.d_model))
    token_sum, pos_sum, rows = None, None, 0
    with eval_mode(bottom):
        for s in range(0, vocab_size, chunk):
            t = torch.arange(s, min(s + chunk, vocab_size))
            ids = torch.cat([torch.tensor(prefix).expand(len(t), -1), t[:, None].expand(-1, n_positions),
                             torch.tensor(suffix).expand(len(t), -1)], 1).long()
            out = bottom(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids))
            out = out[:, len(prefix):len(prefix) + n_positions].float()
            if token_sum is None:
                token_sum = torch.zeros(vocab_size, out.shape[-1])
                pos_sum = torch.zeros(n_positions, out.shape[-1])
            token_sum[t] = out.mean(1)
            keep = allowed[t]
            pos_sum += out[keep].sum(0)
            rows += int(keep.sum())
    mu = pos_sum / max(rows, 1)
    a = token_sum - mu.mean(0)
    return a, torch.cat([mu[:1], mu])


class VendorBlocks(nn.Module):
    """The vendor's pretrained blocks ``k .. k+layers-1`` (copied, trainable; the last ``layers`` blocks when the
    model has fewer after ``k``) as the inverter's body, reading width ``d``."""

    def __init__(self, model: nn.Module, k: int, layers: int):
        super().__init__()
        from splitpriv.models import num_blocks
        from splitpriv.parts import split_model

        part = split_model(copy.deepcopy(model), min(k + layers, num_blocks(model))).bottom
        self.part = part
        self.paths = part.block_paths[max(0, len(part.block_paths) - layers):]
        self.d = part.d_model

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.part._run_blocks(self.paths, x, self.part._block_inputs(x, mask))


class AdaptiveInverter(nn.Module):
    """Received [B, T, r] (+ mask) → logits over the vocabulary at every position (module docstring)."""

    def __init__(self, prototypes: torch.Tensor, offsets: torch.Tensor, bias: torch.Tensor, *, head: str = "distance",
                 width: int = 384, layers: int = 2, heads: int = 6, dropout: float = 0.1, body: nn.Module = None):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"adaptive head must be one of {HEADS}, got {head!r}")
        r = prototypes.shape[1]
        self.head = head
        self.prototypes = nn.Parameter(prototypes.float().clone())
        self.offsets = nn.Parameter(offsets.float().clone())
        self.bias = nn.Parameter(bias.float().clone())
        self.log_scale = nn.Parameter(torch.tensor(0.0))
        self.vendor = body is not None
        if self.vendor:
            self.body, width = body, body.d
            if r != width:  # a privatizer's r-dim code, lifted into the vendor's width, positions added
                self.inp = nn.Sequential(nn.LayerNorm(r), nn.Linear(r, width))
                self.pos = nn.Embedding(offsets.shape[0], width)
                nn.init.normal_(self.pos.weight, std=0.02)
        else:
            heads = next(h for h in (heads, 8, 4, 2, 1) if width % h == 0)
            self.inp = nn.Sequential(nn.LayerNorm(r), nn.Linear(r, width))
            self.pos = nn.Embedding(offsets.shape[0], width)
            nn.init.normal_(self.pos.weight, std=0.02)
            layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout, batch_first=True, norm_first=True,
                                               activation="gelu")
            self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, r))
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)

    def hidden(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The body's output [B, T, width]: each position in the context of the whole received sentence."""
        t = z.shape[1]
        x = z if self.vendor and not hasattr(self, "inp") else self.inp(z) + self.pos(torch.arange(t, device=z.device))
        return self.body(x, mask) if self.vendor else self.body(x, src_key_padding_mask=~mask.bool())

    def features(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return z - self.offsets[:z.shape[1]] + self.out(self.hidden(z, mask))

    def logits(self, x: torch.Tensor, token_ids: torch.Tensor | None = None, dtype=torch.float32) -> torch.Tensor:
        """[n, V] (or [n, len(token_ids)]) logits for features ``x`` [n, r]."""
        a = self.prototypes if token_ids is None else self.prototypes[token_ids]
        b = self.bias if token_ids is None else self.bias[token_ids]
        dot = (x.to(dtype) @ a.to(dtype).T).float()
        a_sq = a.pow(2).sum(1)
        if self.head == "linear":
            return self.log_scale.exp() * (2 * dot - a_sq) + b
        d2 = (x.pow(2).sum(1, keepdim=True) - 2 * dot + a_sq).clamp(min=0.0)
        return b - self.log_scale.exp() * (d2 + 1e-6).sqrt()


class AdaptiveInversion(InversionAttack):
    """Train an :class:`AdaptiveInverter` on public text through the shipped bottom and the mechanism."""

    name = "adaptive"

    def __init__(self, epochs: int = 3, width: int = 384, layers: int = 2, lr: float = 1e-3, batch_size: int = 32,
                 prior_weight: float = 1.0, head: str = "distance", head_init: str = "images",
                 init_from_vendor: bool = False, n_sampled: int | None = 4096, seed: int = 0,
                 progress: bool = True, threads: int | None = 1, prior_mix: float | None = None):
        if head_init not in ("images", "random"):
            raise ValueError(f"adaptive head_init must be 'images' or 'random', got {head_init!r}")
        self.prior_mix, self.position_prior, self.mix_scores = prior_mix, None, {}
        self.epochs, self.width, self.layers, self.lr, self.batch_size = epochs, width, layers, lr, batch_size
        self.prior_weight, self.head, self.head_init, self.init_from_vendor = prior_weight, head, head_init, \
            init_from_vendor
        self.n_sampled, self.seed, self.progress, self.threads = n_sampled, seed, progress, threads
        self.history: list[float] = []

    def fit(self, knowledge: AttackerKnowledge, texts: list[str] | None = None,
            vendor_model: nn.Module | None = None, position_prior=None,
            holdout: list[str] | None = None) -> AdaptiveInversion:
        """Train on ``texts`` (default: the knowledge's public text); ``vendor_model`` (the vendor's full pretrained
        model) is needed for ``init_from_vendor``. With ``position_prior`` (a fitted
        :class:`~splitpriv.attacks.floor.PriorFloor`) decoding multiplies the posterior by it (:meth:`log_probs`),
        with the exponent ``prior_mix`` or, when that is None, the one that recovers most of ``holdout`` (public
        sentences kept out of training)."""
        super().fit(knowledge)
        texts = list(knowledge.public_texts if texts is None else texts)
        if not texts:
            raise ValueError("the adaptive inversion needs public texts")
        self.train_texts, self.holdout_texts = texts, holdout or texts[-256:]
        with torch_threads(self.threads):
            self._train(knowledge, texts, vendor_model)
            if position_prior is not None:
                self.position_prior = position_prior
                if self.prior_mix is None:
                    self.prior_mix = self._choose_mix(self.holdout_texts)
        return self

    MIXES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)

    @torch.no_grad()
    def _choose_mix(self, texts: list[str]) -> float:
        """The exponent λ of :meth:`log_probs` that recovers most tokens of public ``texts`` through the bottom and
        fresh noise (λ = 0 is the floor itself, so the choice never does worse than the floor on these texts)."""
        tok = self.knowledge.tokenizer
        ids, mask, tt = tokenize(tok, texts, self.knowledge.max_length)
        z = self._noisy(clean_hidden(self.knowledge.bottom, ids, mask, tt), mask,
                        torch.Generator().manual_seed(self.seed + 2))
        fixed, _ = fixed_positions(tok, mask)
        rows, cols = (mask.bool() & ~fixed).nonzero(as_tuple=True)
        lp = self._posterior(z, mask, rows, cols)
        truth = ids[rows, cols]
        hits = dict.fromkeys(self.MIXES, 0)
        for s in range(0, len(rows), 1024):
            sl = slice(s, s + 1024)
            ratio = self.position_prior.log_ratio(mask, rows[sl], cols[sl])
            for mix in self.MIXES:
                hits[mix] += int((self._mixed(lp[sl], ratio, mix).argmax(1) == truth[sl]).sum())
        self.mix_scores = {m: h / max(len(rows), 1) for m, h in hits.items()}
        return max(self.MIXES, key=lambda m: (hits[m], -m))

    def _mixed(self, lp: torch.Tensor, ratio: torch.Tensor, mix: float) -> torch.Tensor:
        """λ·(log posterior − log global prior) + log position prior: the floor at λ = 0, Bayes at λ = 1."""
        floor = ratio + self.position_prior.log_unigram
        return floor if mix == 0 else mix * (lp.clamp(min=-1e4) - self.position_prior.log_unigram) + floor

    def _build(self, knowledge, texts, h, mask, vendor_model):
        tok, bottom = knowledge.tokenizer, knowledge.bottom
        vocab, r, n_pos = len(tok), h.shape[-1], max(knowledge.max_length, h.shape[1])
        self.penalty = interior_penalty(tok, vocab)
        allowed = torch.isfinite(self.penalty)
        prior = token_log_prior(tok, texts, vocab)
        torch.manual_seed(self.seed)
        if self.head_init == "images":
            repeats = n_pos - 2 if bottom.n_layers == 0 else 4
            a, mu = token_images(bottom, tok, vocab, repeats, allowed)
            offsets = torch.cat([mu, mu[-1:].expand(n_pos - mu.shape[0], -1)]) if n_pos > mu.shape[0] else mu[:n_pos]
        else:
            real = mask.bool()
            offsets = torch.zeros(n_pos, r)
            a = torch.randn(vocab, r) * h[real].std() * 0.1
        body = None
        if self.init_from_vendor:
            if vendor_model is None:
                raise ValueError("init_from_vendor needs the vendor's model")
            body = VendorBlocks(vendor_model, bottom.n_layers, self.layers)
        self.model = AdaptiveInverter(a, offsets, self.prior_weight * prior, head=self.head, width=self.width,
                                      layers=self.layers, body=body)
        return prior, allowed

    def _train(self, knowledge, texts, vendor_model) -> None:
        t0 = time.perf_counter()
        tok = knowledge.tokenizer
        ids, mask, tt = tokenize(tok, texts, knowledge.max_length)
        h = clean_hidden(knowledge.bottom, ids, mask, tt, batch_size=64)
        prior, allowed = self._build(knowledge, texts, h, mask, vendor_model)
        gen = torch.Generator().manual_seed(self.seed + 1)
        fixed, _ = fixed_positions(tok, mask)
        target = mask.bool() & ~fixed & allowed[ids]
        allowed_ids = allowed.nonzero(as_tuple=True)[0]
        frequent = allowed_ids[prior[allowed_ids].argsort(descending=True)]
        with torch.no_grad():
            sub = slice(0, min(len(texts), 64))
            x0 = self.model.features(self._noisy(h[sub], mask[sub], gen), mask[sub])[target[sub]]
            self.initial_scale = self._calibrate(x0, ids[sub][target[sub]])
        head = [self.model.prototypes, self.model.bias, self.model.log_scale, self.model.offsets]
        rest = [p for p in self.model.parameters() if all(p is not q for q in head)]
        opt = torch.optim.AdamW([{"params": rest, "weight_decay": 0.01}, {"params": head, "weight_decay": 0.0}],
                                lr=self.lr)

        def step(idx):
            t = int(mask[idx].sum(1).max())
            m, sel = mask[idx, :t], target[idx, :t]
            x = self.model.features(self._noisy(h[idx, :t], m, gen), m)[sel]
            y, cand = ids[idx, :t][sel], None
            if self.n_sampled and self.n_sampled < len(allowed_ids):
                cand, y = sampled_candidates(y, frequent, allowed_ids, self.n_sampled, gen)
            return nn.functional.cross_entropy(self.model.logits(x, cand, torch.bfloat16), y)

        self.history = train_loop(self.model, opt, step, n=len(texts), epochs=self.epochs,
                                  batch_size=self.batch_size, generator=gen,
                                  progress=f"adaptive inverter k={knowledge.n_bottom_layers}" if self.progress else None)
        self.train_seconds = time.perf_counter() - t0
        self.n_train_texts = len(texts)

    @torch.no_grad()
    def _calibrate(self, x: torch.Tensor, y: torch.Tensor, n: int = 512) -> float:
        """Set ``s`` to the log-grid value that maximises the likelihood of (up to ``n``) public targets ``y``."""
        x, y = x[:n], y[:n]
        self.model.log_scale.fill_(0.0)
        unit = self.model.bias - self.model.logits(x)  # s = 1: the distance (or minus the linear score)
        cache: dict[float, float] = {}

        def nll(log_s: float) -> float:
            if log_s not in cache:
                logits = self.model.bias - math.exp(log_s) * unit - self.penalty
                cache[log_s] = nn.functional.cross_entropy(logits, y).item()
            return cache[log_s]

        best = min(range(-8, 7), key=nll)
        best = min((best + 0.25 * i for i in range(-4, 5)), key=nll)
        self.model.log_scale.fill_(best)
        return math.exp(best)

    def _noisy(self, h, mask, gen):
        return privatize(self.knowledge.mechanism, h, mask, generator=gen)

    @torch.no_grad()
    def _posterior(self, hidden: torch.Tensor, attention_mask: torch.Tensor, rows, cols) -> torch.Tensor:
        return batched_log_probs(self.model.features, lambda x, _: self.model.logits(x) - self.penalty, hidden,
                                 attention_mask, rows, cols, self.penalty.numel())

    @torch.no_grad()
    def log_probs(self, hidden: torch.Tensor, attention_mask: torch.Tensor, rows, cols) -> torch.Tensor:
        r"""Log-probabilities [n, V] at (rows, cols), given in row-major order: the inverter's posterior
        :math:`p(t \mid z)`, times (with a position prior) :math:`(\hat P(t \mid i, j) / \hat P(t))` raised to
        the chosen λ, renormalised. The attacker knows every sentence's length, so it may condition on positions."""
        lp = self._posterior(hidden, attention_mask, rows, cols)
        if self.position_prior is None:
            return lp
        for s in range(0, len(rows), 1024):
            sl = slice(s, s + 1024)
            ratio = self.position_prior.log_ratio(attention_mask, rows[sl], cols[sl])
            lp[sl] = torch.log_softmax(self._mixed(lp[sl], ratio, self.prior_mix), dim=1)
        return lp

    def rank(self, hidden: torch.Tensor, attention_mask: torch.Tensor, k: int = 5) -> torch.Tensor:
        """The ``k`` most probable tokens [N, T, k] (template ids at fixed positions)."""
        return contextual_top_k(self.log_probs, hidden, attention_mask, self.knowledge.tokenizer, k)

    def invert(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return apply_template(self.rank(hidden, attention_mask, 1)[..., 0], self.knowledge.tokenizer,
                              attention_mask)


@dataclass(frozen=True)
class AdaptiveOptions:
    n_public: int = field(default=2000, metadata={"help": "WikiText-2 sentences the inverter is trained on"})
    n_in_domain: int = field(default=2000, metadata={
        "help": "public in-domain sentences added (the dataset's test split; 0: none)"})
    n_unused_train: int = field(default=20000, metadata={
        "help": "training rows the customer did not use, added as in-domain public text (0: none)"})
    n_other_public: int = field(default=0, metadata={
        "help": "sentences of the other public datasets (out of domain) added (0: none)"})
    adaptive_epochs: int = field(default=3, metadata={"help": "training epochs of the adaptive inverter (fresh "
                                                              "noise every epoch)"})
    adaptive_width: int = field(default=384, metadata={"help": "width of the adaptive inverter's Transformer"})
    adaptive_layers: int = field(default=2, metadata={"help": "Transformer layers of the adaptive inverter"})
    adaptive_lr: float = field(default=1e-3, metadata={"help": "AdamW peak learning rate of the adaptive inverter"})
    adaptive_batch_size: int = field(default=32, metadata={"help": "adaptive inverter training batch size"})
    prior_weight: float = field(default=1.0, metadata={"help": "weight of the public log prior in the head's bias"})
    adaptive_head: str = field(default="distance", metadata={
        "help": "distance (b_t - s·||x - a_t||) or linear (s·(2x·a_t - ||a_t||²) + b_t) head over the vocabulary"})
    head_init: str = field(default="images", metadata={
        "help": "images (head starts at the shipped bottom's image of every token) or random (from scratch)"})
    init_from_vendor: bool = field(default=True, metadata={
        "help": "the body is the vendor's pretrained blocks k..k+layers-1 (a privatizer's code lifted to width d)"})
    prior_mix: float | None = field(default=None, metadata={
        "help": "exponent of the position prior's evidence in decoding (0: the floor); None: chosen on held-out "
                "public sentences"})
    adaptive_holdout: int = field(default=256, metadata={
        "help": "public in-domain sentences kept out of training to choose prior_mix"})
    adaptive_threads: int = field(default=1, metadata={
        "help": "torch threads while training (1: fastest on cores other jobs share; 0: torch's default)"})


def split_holdout(texts: list[str], n: int, pool: list[str], seed: int) -> tuple[list[str], list[str]]:
    """``(training texts, n held-out texts)``, the held-out drawn from ``pool`` (in-domain public text) when it
    has enough texts among ``texts``, else from all of them."""
    import random

    members = set(pool)
    candidates = [i for i, t in enumerate(texts) if t in members]
    if len(candidates) < 2 * n:
        candidates = list(range(len(texts)))
    held = set(random.Random(seed).sample(candidates, min(n, len(candidates) // 2)))
    return [t for i, t in enumerate(texts) if i not in held], [texts[i] for i in sorted(held)]


def fitted_adaptive(evaluation, options) -> AdaptiveInversion:
    """The adaptive inverter of ``options``, trained once per evaluation (the set-level attack reads it too)."""
    def fit():
        texts = attacker_public_texts(evaluation, options.n_public, options.n_in_domain, seed=evaluation.attacker_seed,
                                      n_unused_train=options.n_unused_train, n_other=options.n_other_public)
        in_domain = evaluation.in_domain_texts + evaluation.unused_train_texts  # held out from in-domain text
        texts, holdout = split_holdout(texts, options.adaptive_holdout, in_domain, evaluation.attacker_seed)
        return AdaptiveInversion(
            epochs=options.adaptive_epochs, width=options.adaptive_width, layers=options.adaptive_layers,
            lr=options.adaptive_lr, batch_size=options.adaptive_batch_size, prior_weight=options.prior_weight,
            head=options.adaptive_head, head_init=options.head_init, init_from_vendor=options.init_from_vendor,
            seed=evaluation.attacker_seed, progress=evaluation.progress, prior_mix=options.prior_mix,
            threads=options.adaptive_threads or None,
        ).fit(evaluation.knowledge(), texts, evaluation.loaded[0] if options.init_from_vendor else None,
              position_prior(evaluation), holdout)

    return evaluation.memo(("adaptive", options), fit)


@ATTACKS.register("adaptive")
class AdaptiveEntry(Attack):
    description = ("a generic inverter trained from scratch on public + in-domain text through the bottom as "
                   "shipped (any privatizer, any width, any k), decoded with the floor's position prior")
    Options = AdaptiveOptions

    @staticmethod
    def run(evaluation, options):
        attack = fitted_adaptive(evaluation, options)
        return evaluation.score("adaptive", attack, {
            "train_seconds": attack.train_seconds, "n_train_texts": attack.n_train_texts,
            "n_train_steps": len(attack.history), "initial_scale": attack.initial_scale, "head": attack.head,
            "init_from_vendor": attack.init_from_vendor, "prior_mix": attack.prior_mix,
            "holdout_recovery_by_mix": attack.mix_scores,
            "final_train_loss": attack.history[-1] if attack.history else None})
