r"""Linear-map inversion (any family, any split depth k, any privatizer): ridge regression from what the vendor
receives back to the embedding layer's rows, then decode by the most probable row.

Threat model. The vendor knows the bottom as shipped (embeddings, the first ``k`` blocks, any privatizer folded
into it, with its final weights), the mechanism with its parameters, and public text — WikiText-2
(:func:`splitpriv.data.public_corpus`) plus the dataset's public test split (:func:`splitpriv.data.public_in_domain`),
never the customer's dev sentences it is scored on. It makes (received vector, token) pairs by passing public text
through the bottom and the mechanism with noise of its own (a seeded ``torch.Generator``).

Fit. Let :math:`x_i` be the received vector at position :math:`p_i` whose true token is :math:`t_i` (``z_i`` in
:math:`\mathbb{R}^r`, ``r`` ≠ ``d`` when a privatizer is folded into the bottom), concatenated with its ``context``
neighbours on each side, and :math:`w_t \in \mathbb{R}^d` row ``t`` of the word-embedding matrix. With
per-position means :math:`\mu_p, \nu_p` of features and targets (shrunk towards the global mean with ``κ``
pseudo-counts, so rare positions borrow strength), the map is

.. math::  \hat w(x, p) = (x - \mu_p)\,W + \nu_p, \qquad
           W = \arg\min_W \sum_i \lVert (x_i - \mu_{p_i}) W - (w_{t_i} - \nu_{p_i}) \rVert^2
               + \lambda \lVert W\rVert_F^2
             = (X^\top X + \lambda I)^{-1} X^\top Y,

solved in closed form through one eigendecomposition of :math:`X^\top X`, with :math:`\lambda` chosen on a tenth of
the public sentences held out (:mod:`.ridge`). Per-position intercepts absorb absolute-position embeddings (BERT,
GPT-2); the first position (a decoder's attention sink) gets a map of its own. Noise drawn through the mechanism
on the public pairs makes the fitted map the linear least-squares denoiser for that noise level.

Decode. With the residual :math:`\hat w - w_t` modelled as isotropic Gaussian of per-coordinate variance
:math:`\sigma^2` (fitted on the held-out pairs) and the public unigram log prior :math:`\log\pi_t`,

.. math::  \hat t = \arg\max_t\; -\frac{\lVert \hat w(x, p) - w_t \rVert^2}{2\sigma^2} + \alpha \log\pi_t,

``decode="nearest"`` is :math:`\alpha = 0`; ``decode="auto"`` keeps whichever of the two recovers more held-out public
tokens. Special tokens never occur inside a sentence and are excluded (the template's positions are fixed).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import torch

from splitpriv.attacks.base import AttackerKnowledge, InversionAttack, rank_targets, torch_threads
from splitpriv.attacks.floor import attacker_public_texts
from splitpriv.attacks.observe import clean_hidden, privatize_hidden, tokenize
from splitpriv.attacks.registry import ATTACKS, Attack
from splitpriv.attacks.ridge import embedding_rows, fit_positional_ridge, window
from splitpriv.candidates import apply_template, fixed_positions, interior_penalty, token_log_prior

DECODES = ("map", "nearest", "auto")


@torch.no_grad()
def public_pairs(knowledge: AttackerKnowledge, texts: list[str], generator: torch.Generator, *, before: int = 1,
                 after: int = 1, draws: int = 1, chunk: int = 256):
    """``(x [n, F], token ids [n], positions [n], sentence index [n], fill [r])``: the windowed features
    (:func:`~splitpriv.attacks.ridge.window`) of every position to guess of ``texts`` through the bottom as shipped
    and the mechanism (``draws`` fresh noise draws each, from ``generator``); ``fill``: the mean received vector of
    the first chunk, standing in for neighbours outside a sentence."""
    tok, bottom = knowledge.tokenizer, knowledge.bottom
    allowed = torch.isfinite(interior_penalty(tok, len(tok)))
    out, fill = ([], [], [], []), None
    for s in range(0, len(texts), chunk):
        ids, mask, tt = tokenize(tok, texts[s:s + chunk], knowledge.max_length)
        h = clean_hidden(bottom, ids, mask, tt)
        fixed, _ = fixed_positions(tok, mask)
        rows, cols = (mask.bool() & ~fixed & allowed[ids.clamp(max=len(allowed) - 1)]).nonzero(as_tuple=True)
        for _ in range(draws):
            z = privatize_hidden(knowledge.mechanism, h, mask, generator=generator)
            if fill is None:
                fill = z[mask.bool()].mean(0)
            x = window(z, mask, fill, before, after)
            for part, v in zip(out, (x[rows, cols], ids[rows, cols], cols, rows + s)):
                part.append(v)
    return (*(torch.cat(part) for part in out), fill)


class LinearMapInversion(InversionAttack):
    """Ridge map from the received vectors to the embedding rows, decoded by the most probable row."""

    name = "linear"

    def __init__(self, draws: int = 1, decode: str = "auto", prior_weight: float = 1.0, holdout: float = 0.1,
                 before: int = 1, after: int = 1, seed: int = 0, threads: int | None = 1):
        if decode not in DECODES:
            raise ValueError(f"linear decode must be one of {DECODES}, got {decode!r}")
        self.draws, self.decode, self.prior_weight, self.holdout = int(draws), decode, float(prior_weight), holdout
        self.before, self.after, self.seed, self.threads = int(before), int(after), seed, threads

    def fit(self, knowledge: AttackerKnowledge, texts: list[str] | None = None) -> LinearMapInversion:
        """Fit on ``texts`` (default: the knowledge's public text)."""
        super().fit(knowledge)
        texts = list(knowledge.public_texts if texts is None else texts)
        if not texts:
            raise ValueError("the linear-map inversion needs public texts")
        t0 = time.perf_counter()
        with torch_threads(self.threads):
            self._fit(knowledge, texts)
        self.fit_seconds = time.perf_counter() - t0
        return self

    def _fit(self, knowledge: AttackerKnowledge, texts: list[str]) -> None:
        tok = knowledge.tokenizer
        self.rows = embedding_rows(knowledge.bottom)
        self.rows_sq = self.rows.pow(2).sum(1)
        vocab = self.rows.shape[0]
        self.penalty = interior_penalty(tok, vocab)
        self.log_prior = token_log_prior(tok, texts, vocab)
        gen = torch.Generator().manual_seed(self.seed)
        x, ids, pos, sent, fill = public_pairs(knowledge, texts, gen, before=self.before, after=self.after,
                                               draws=self.draws)
        order = list(range(len(texts)))
        random.Random(self.seed).shuffle(order)
        held = torch.zeros(len(texts), dtype=torch.bool)
        held[order[:max(1, int(self.holdout * len(texts)))]] = True
        holdout = held[sent]
        self.map, info = fit_positional_ridge(x, self.rows[ids], pos, holdout, fill, self.before, self.after)
        self.sigma2, self.first_position_map = info["sigma2"], info["first_position_map"]
        hz, hy, hp = x[holdout], ids[holdout], pos[holdout]
        self.holdout_recovery = {}
        for mode in ("nearest", "map"):
            self.alpha = 0.0 if mode == "nearest" else self.prior_weight
            hits = [(self.scores(a, b).argmax(1) == c) for a, b, c in
                    zip(hz.split(2048), hp.split(2048), hy.split(2048))]
            self.holdout_recovery[mode] = float(torch.cat(hits).float().mean())
        mode = self.decode if self.decode != "auto" else max(("map", "nearest"), key=self.holdout_recovery.get)
        self.decode_used, self.alpha = mode, (0.0 if mode == "nearest" else self.prior_weight)
        self.ridge_lambda, self.n_pairs = info["ridge_lambda"], int(len(ids))

    @torch.no_grad()
    def scores(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Log-score of every token [n, V] for windowed features ``x`` [n, F] at ``positions`` [n]."""
        w = self.map.rows(x, positions)
        d2 = w.pow(2).sum(1, keepdim=True) - 2 * w @ self.rows.T + self.rows_sq
        return -d2 / (2 * self.sigma2) + self.alpha * self.log_prior - self.penalty

    def rank(self, hidden: torch.Tensor, attention_mask: torch.Tensor, k: int = 5) -> torch.Tensor:
        """The ``k`` most probable tokens [N, T, k] (template ids at fixed positions)."""
        with torch_threads(self.threads):
            x = self.map.features(hidden, attention_mask)
            return rank_targets(self.scores, x, attention_mask, self.knowledge.tokenizer, k)

    def invert(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return apply_template(self.rank(hidden, attention_mask, 1)[..., 0], self.knowledge.tokenizer, attention_mask)


@dataclass(frozen=True)
class LinearOptions:
    n_public: int = field(default=2000, metadata={"help": "WikiText-2 sentences the ridge map is fitted on (0: all)"})
    n_in_domain: int = field(default=2000, metadata={
        "help": "the dataset's public test sentences it is fitted on besides (0: none)"})
    linear_draws: int = field(default=1, metadata={"help": "fresh noise draws per public sentence"})
    linear_context: int = field(default=1, metadata={
        "help": "neighbouring received vectors on each side the map reads besides the position's own"})
    linear_decode: str = field(default="auto", metadata={
        "help": "map (isotropic residual + public log prior), nearest (nearest embedding row), or auto (whichever "
                "recovers more held-out public tokens)"})


@ATTACKS.register("linear")
class LinearEntry(Attack):
    description = "ridge map from the received vectors to the embedding rows, fitted on public text (any k)"
    Options = LinearOptions

    @staticmethod
    def run(evaluation, options):
        texts = attacker_public_texts(evaluation, options.n_public, options.n_in_domain, seed=evaluation.attacker_seed)
        attack = LinearMapInversion(draws=options.linear_draws, decode=options.linear_decode,
                                    before=options.linear_context, after=options.linear_context,
                                    seed=evaluation.attacker_seed).fit(evaluation.knowledge(), texts)
        return evaluation.score("linear", attack, {
            "fit_seconds": attack.fit_seconds, "n_public_texts": len(texts), "n_pairs": attack.n_pairs,
            "ridge_lambda": attack.ridge_lambda, "sigma2": attack.sigma2, "decode": attack.decode_used,
            "holdout_recovery": attack.holdout_recovery, "first_position_map": attack.first_position_map,
            "window": [attack.before, attack.after]})
