r"""Optimization-based inversion (any split depth k): search the input text whose bottom output matches ``z``.

Relaxation. Each guessed position holds a distribution over candidate tokens, ``softmax(logits / τ)``; its soft
word embedding is that mixture of word embeddings, fed to the attacker's own copy of the bottom as
``inputs_embeds`` (the bottom adds position and type embeddings, LayerNorm and the k blocks as for real tokens).
The loss is the mechanism's negative log-likelihood of what was received, ``Σ_tokens −log p(z | f(x))`` — for
d_chi ``η Σ ‖z − f(x)‖`` (L2 norm per token, not squared), for Gaussian ``Σ ‖z − f(x)‖² / 2σ²``, without noise
``Σ ‖z − f(x)‖`` — over every real position (the template's [CLS]/[SEP] are known but at k ≥ 1 their outputs
depend on the whole sentence, so they count too). Under noise the objective adds ``−prior_weight · log p(x)``, a
unigram prior of public text (relaxed as the expected log prior of each position's mixture): with weight 1 the
discrete optimum is the MAP sentence under a unigram model. Adam on the logits, ``τ`` annealed geometrically from
``tau_start`` to ``tau_end`` so the mixture hardens into tokens; the guess is the argmax.

Candidate sets (what keeps it cheap). A softmax over all V = 30522 tokens at every position would cost a
[positions, V] × [V, d] product per step. Instead each position gets ``top_k`` candidates: the ``top_k − n_prior``
tokens whose *layer-0* candidate embedding at that position is closest to the received vector (exact at k = 0;
at k ≥ 1 the residual stream keeps token identity so well in MiniLM that the true token is in the top 64 for
~100 % of positions at k ≤ 4 without noise) plus the ``n_prior`` most frequent tokens of public text (a fallback
when noise scrambles the distance ranking). Logits start from the standardized layer-0 scores (``init="nn"``: the
nearest-neighbour / MAP guess at layer 0) or at zero (``init="zeros"``). A final discrete check keeps, per
sentence, whichever of the optimized and the initial guess has the lower objective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from splitpriv.attacks.base import AttackerKnowledge, InversionAttack, torch_threads
from splitpriv.attacks.registry import ATTACKS, Attack, in_model_space
from splitpriv.candidates import apply_template, eval_mode, fit_candidates, fixed_positions, shared_log_prior
from splitpriv.privacy import Identity, Mechanism


def token_nll(mechanism: Mechanism | None, z: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Differentiable ``−log p(z | f)`` per token up to a constant (last axis reduced): the mechanism's own
    :meth:`~splitpriv.privacy.Mechanism.nll` (d_chi ``η‖z − f‖``, Gaussian ``‖z − f‖² / 2σ²``, Laplace
    ``‖z − f‖₁ / b``, no noise: the L2 distance). ``None`` stands for no noise."""
    return (Identity() if mechanism is None else mechanism).nll(z, f)


class OptimizationInversion(InversionAttack):
    """Gradient search over relaxed tokens through the attacker's copy of the bottom (see module docstring)."""

    name = "opt"

    def __init__(self, steps: int = 200, lr: float = 0.1, top_k: int = 256, n_prior: int = 64,
                 tau_start: float = 1.0, tau_end: float = 0.05, init: str = "nn", batch_size: int = 16,
                 prior_weight: float = 1.0, progress: bool = True, threads: int | None = 1):
        if init not in ("nn", "zeros"):
            raise ValueError(f"init must be 'nn' or 'zeros', got {init!r}")
        if not 0 <= n_prior < top_k:
            raise ValueError(f"need 0 <= n_prior < top_k, got n_prior={n_prior}, top_k={top_k}")
        self.steps, self.lr, self.top_k, self.n_prior = steps, lr, top_k, n_prior
        self.tau_start, self.tau_end, self.init = tau_start, tau_end, init
        self.batch_size, self.progress, self.threads = batch_size, progress, threads
        self.prior_weight = prior_weight

    def fit(self, knowledge: AttackerKnowledge) -> "OptimizationInversion":
        super().fit(knowledge)
        self.space, self.penalty = fit_candidates(knowledge)
        prior = shared_log_prior(knowledge, self.space.vocab_size)
        self.frequent = (prior - self.penalty).topk(self.n_prior).indices if self.n_prior else None
        self.log_prior = prior
        noisy = knowledge.mechanism is not None and not knowledge.mechanism.is_noiseless
        self.prior_w = self.prior_weight if noisy else 0.0  # a point-mass likelihood leaves no room for a prior
        return self

    # ------------------------------------------------------------------------------------------------ pieces
    @torch.no_grad()
    def _candidates(self, z: torch.Tensor, cols: torch.Tensor):
        """Candidate ids [n, K] and their layer-0 distances [n, K] for received vectors ``z`` at ``cols``."""
        d2 = self.space.sqdist(z, cols)
        d2 += self.penalty
        k_near = self.top_k - self.n_prior
        if self.frequent is not None:
            freq_d2 = d2[:, self.frequent].clone()
            d2[:, self.frequent] = math.inf
            near_d2, near = d2.topk(k_near, largest=False)
            cand = torch.cat([near, self.frequent.expand(len(z), -1)], 1)
            cd2 = torch.cat([near_d2, freq_d2], 1)
        else:
            cd2, cand = d2.topk(k_near, largest=False)
        return cand, cd2

    def _forward(self, soft: torch.Tensor, rows, cols, base: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = base.clone()
        x[rows, cols] = soft
        return self.knowledge.bottom(inputs_embeds=x, attention_mask=mask)

    def _sentence_loss(self, f, z, mask, rows, prior_term):
        """−log p(z | x) − prior_weight · log p(x) per sentence (``prior_term`` [n] = log prior per guessed token)."""
        loss = (token_nll(self.knowledge.mechanism, z, f) * mask).sum(1)
        if self.prior_w:
            loss = loss - self.prior_w * torch.zeros_like(loss).index_add(0, rows, prior_term)
        return loss

    # ------------------------------------------------------------------------------------------------ invert
    def invert(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tok = self.knowledge.tokenizer
        n = hidden.shape[0]
        lengths = attention_mask.sum(1)
        order = torch.argsort(lengths, descending=True)
        pred = torch.zeros(attention_mask.shape, dtype=torch.long)
        self.final_loss = torch.zeros(n)
        batches = [order[s:s + self.batch_size] for s in range(0, n, self.batch_size)]
        bar = _bar(len(batches) * self.steps, self.progress, f"opt k={self.knowledge.n_bottom_layers}")
        with eval_mode(self.knowledge.bottom), torch_threads(self.threads):
            for idx in batches:
                t = max(int(lengths[idx].max()), 1)
                guess, loss = self._invert_batch(hidden[idx, :t].float(), attention_mask[idx, :t], bar)
                pred[idx, :t] = guess
                self.final_loss[idx] = loss
        if bar is not None:
            bar.close()
        return apply_template(pred, tok, attention_mask)

    def _invert_batch(self, z, mask, bar):
        tok = self.knowledge.tokenizer
        fixed, fixed_ids = fixed_positions(tok, mask)
        todo = mask.bool() & ~fixed
        rows, cols = todo.nonzero(as_tuple=True)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        base_ids = torch.where(fixed, fixed_ids, torch.full_like(fixed_ids, pad))
        base = self.space.word[base_ids]
        maskf = mask.float()
        out = base_ids.clone()
        if rows.numel() == 0:
            return out, torch.zeros(z.shape[0])
        cand, cd2 = self._candidates(z[rows, cols], cols)
        emb = self.space.word[cand]  # [n, K, d]
        cand_prior = self.log_prior[cand]  # [n, K]
        if self.init == "nn":  # layer-0 MAP (NN without noise) scores, standardized per position
            score = -token_nll(self.knowledge.mechanism, cd2.sqrt()[..., None], torch.zeros(1, 1, 1))
            score = score + self.prior_w * cand_prior
            logits0 = (score - score.max(1, keepdim=True).values) / score.std(1, keepdim=True).clamp_min(1e-6)
        else:
            logits0 = torch.zeros_like(cd2)
        logits = logits0.clone().requires_grad_(True)
        opt = torch.optim.Adam([logits], lr=self.lr)
        decay = (self.tau_end / self.tau_start) ** (1.0 / max(self.steps - 1, 1))
        for step in range(self.steps):
            tau = self.tau_start * decay ** step
            probs = torch.softmax(logits / tau, dim=1)
            f = self._forward(torch.einsum("nk,nkd->nd", probs, emb), rows, cols, base, mask)
            loss = self._sentence_loss(f, z, maskf, rows, (probs * cand_prior).sum(1)).sum()
            (grad,) = torch.autograd.grad(loss, logits)  # never touches the bottom's .grad
            logits.grad = grad
            opt.step()
            if bar is not None:
                bar.update(1)
        # discrete check: optimized argmax vs the initial (nearest-neighbour) guess, per sentence
        with torch.no_grad():
            best = None
            for lg in (logits.detach(), logits0):
                ids = cand.gather(1, lg.argmax(1, keepdim=True)).squeeze(1)
                f = self._forward(self.space.word[ids], rows, cols, base, mask)
                sent_loss = self._sentence_loss(f, z, maskf, rows, self.log_prior[ids])
                if best is None:
                    best = (ids, sent_loss)
                else:
                    better = sent_loss < best[1]
                    take = better[rows]
                    best = (torch.where(take, ids, best[0]), torch.minimum(sent_loss, best[1]))
        out[rows, cols] = best[0]
        return out, best[1]


def _bar(total: int, progress: bool, desc: str):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)


@dataclass(frozen=True)
class OptimizationOptions:
    steps: int = field(default=200, metadata={"help": "Adam steps per batch of sentences"})
    top_k: int = field(default=256, metadata={"help": "candidate tokens per position"})
    n_prior: int = field(default=64, metadata={"help": "of the candidates, the most frequent public-text tokens"})
    opt_batch_size: int = field(default=16, metadata={"help": "sentences optimised together"})
    init: str = field(default="nn", metadata={
        "help": "start from the standardized layer-0 nearest-neighbour scores (nn) or from uniform logits (zeros)"})


@ATTACKS.register("opt")
class OptimizationEntry(Attack):
    description = "gradient search over relaxed tokens through the attacker's copy of the bottom (any k)"
    Options = OptimizationOptions

    @staticmethod
    def applies(setting):
        """Any k; with a privatizer only at k = 0 (its shortlist comes from the privatizer's image space)."""
        return in_model_space(setting) if setting.n_bottom_layers else None

    @staticmethod
    def run(evaluation, options):
        attack = OptimizationInversion(steps=options.steps, top_k=options.top_k, n_prior=options.n_prior,
                                       batch_size=options.opt_batch_size, init=options.init,
                                       progress=evaluation.progress).fit(evaluation.knowledge())
        return evaluation.score("opt", attack, {"steps": options.steps, "top_k": options.top_k, "init": options.init})
