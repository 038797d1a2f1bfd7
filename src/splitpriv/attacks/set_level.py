r"""Set-level (bag-of-words) inference: which content words a sentence contains, wherever they sit.

Positional recovery misses a design that spreads a sentence over every position: no single position names a word,
yet the whole sentence may. Threat model as :mod:`.adaptive` (the bottom as shipped with its privatizer's final
weights, the mechanism and its parameters, public text; never the customer's text).

Task and metric. For a sentence whose real tokens hold the set :math:`S` of distinct content tokens
(:func:`~splitpriv.attacks.base.is_content_word`), :math:`m = |S|`, the attack names its :math:`m` best content
tokens :math:`\hat S`; ``set_recovery`` :math:`= \sum_s |\hat S_s \cap S_s| / \sum_s m_s`. ``set_floor`` is the
same for the :math:`m` content tokens found in most public sentences (a guess that never looks at a vector).

Scorers, from the adaptive inverter (token-level supervision through bottom → privatizer → mechanism with fresh
noise, its body the vendor's pretrained blocks):

* ``any``: :math:`P(w \in s) = 1 - \prod_p (1 - p_p(w))` from the per-position posteriors (position prior included);
* ``bag``: a sentence-level head on the inverter's body states (mean and max over positions → one logit per content
  token), trained with binary cross-entropy on public sentences' sets, the body frozen;
* ``mean``: the average of the two probabilities;
* ``floor``: each word's public document frequency, the same for every sentence (the ``set_floor`` guess).

The attacker keeps the scorer that recovers most of held-out public sentences (all four are its own choice), so
on held-out text it is at least the floor: an attack that cannot read the vectors falls back to the blind guess
instead of scoring below it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import nn

from splitpriv.attacks.adaptive import AdaptiveOptions, fitted_adaptive
from splitpriv.attacks.base import content_vocabulary, set_recovery, torch_threads
from splitpriv.attacks.observe import clean_hidden, tokenize
from splitpriv.attacks.registry import ATTACKS, Attack
from splitpriv.attacks.training import train_loop
from splitpriv.candidates import fixed_positions

SCORERS = ("any", "bag", "mean", "floor")


def sentence_sets(ids: torch.Tensor, mask: torch.Tensor, column: torch.Tensor) -> torch.Tensor:
    """[N, |C|] multi-hot of the content tokens present (``column[t]``: token t's index among content tokens, -1
    for others)."""
    out = torch.zeros(ids.shape[0], int(column.max()) + 1)
    rows, cols = mask.bool().nonzero(as_tuple=True)
    idx = column[ids[rows, cols]]
    keep = idx >= 0
    out[rows[keep], idx[keep]] = 1.0
    return out


class BagHead(nn.Module):
    """Pooled body states [B, 2·width] → one logit per content token."""

    def __init__(self, width: int, n_words: int, log_prior: torch.Tensor):
        super().__init__()
        self.linear = nn.Linear(2 * width, n_words)
        nn.init.zeros_(self.linear.weight)
        with torch.no_grad():
            self.linear.bias.copy_(log_prior)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.bool()[..., None]
        mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        top = hidden.masked_fill(~m, float("-inf")).amax(1)
        return self.linear(torch.cat([mean, top], 1))


class SetInference:
    """Rank content tokens per sentence (module docstring); ``rank(z, mask, k)`` -> [N, k] token ids."""

    def __init__(self, adaptive, *, epochs: int = 1, lr: float = 3e-3, batch_size: int = 32, seed: int = 0):
        self.adaptive, self.epochs, self.lr, self.batch_size, self.seed = adaptive, epochs, lr, batch_size, seed
        self.scorer, self.holdout_scores = "any", {}

    def fit(self, texts: list[str], holdout: list[str]) -> SetInference:
        kn = self.adaptive.knowledge
        allowed = torch.isfinite(self.adaptive.penalty)
        self.words = (content_vocabulary(kn.tokenizer) & allowed).nonzero(as_tuple=True)[0]
        self.column = torch.full((allowed.numel(),), -1, dtype=torch.long)
        self.column[self.words] = torch.arange(len(self.words))
        ids, mask, tt = tokenize(kn.tokenizer, texts, kn.max_length)
        sets = sentence_sets(ids, mask, self.column)
        df = (sets.sum(0) + 0.5) / (len(texts) + 1.0)
        self.df, self.by_frequency = df, self.words[df.argsort(descending=True)]
        width = self.adaptive.model.out[0].normalized_shape[0]
        self.bag = BagHead(width, len(self.words), (df / (1 - df)).log())
        h = clean_hidden(kn.bottom, ids, mask, tt)
        gen = torch.Generator().manual_seed(self.seed)
        opt = torch.optim.AdamW(self.bag.parameters(), lr=self.lr, weight_decay=0.0)

        def step(idx):
            t = int(mask[idx].sum(1).max())
            m = mask[idx, :t]
            with torch.no_grad():
                body = self.adaptive.model.hidden(self.adaptive._noisy(h[idx, :t], m, gen), m)
            return nn.functional.binary_cross_entropy_with_logits(self.bag(body, m), sets[idx])

        with torch_threads(self.adaptive.threads):
            train_loop(self.bag, opt, step, n=len(texts), epochs=self.epochs, batch_size=self.batch_size,
                       generator=gen, progress="set-level bag head" if self.adaptive.progress else None)
            self._choose(holdout)
        return self

    @torch.no_grad()
    def _choose(self, texts: list[str]) -> None:
        kn = self.adaptive.knowledge
        ids, mask, tt = tokenize(kn.tokenizer, texts, kn.max_length)
        z = self.adaptive._noisy(clean_hidden(kn.bottom, ids, mask, tt), mask, torch.Generator().manual_seed(
            self.seed + 1))
        probs = self.probabilities(z, mask)
        for name, p in probs.items():
            self.holdout_scores[name] = set_recovery(self.words[p.argsort(1, descending=True)[:, :64]], ids, mask,
                                                     kn.tokenizer)["set_recovery"]
        self.scorer = max(SCORERS, key=lambda s: self.holdout_scores[s])

    @torch.no_grad()
    def probabilities(self, z: torch.Tensor, mask: torch.Tensor, batch: int = 32) -> dict[str, torch.Tensor]:
        """``{scorer: [N, |C|] probability that each content token occurs}``."""
        fixed, _ = fixed_positions(self.adaptive.knowledge.tokenizer, mask)
        anys, bags = [], []
        for s in range(0, z.shape[0], batch):
            t = max(int(mask[s:s + batch].sum(1).max()), 1)
            zs, ms = z[s:s + batch, :t].float(), mask[s:s + batch, :t]
            bags.append(torch.sigmoid(self.bag(self.adaptive.model.hidden(zs, ms), ms)))
            rows, cols = (ms.bool() & ~fixed[s:s + batch, :t]).nonzero(as_tuple=True)
            lp = self.adaptive.log_probs(zs, ms, rows, cols)[:, self.words]
            miss = torch.zeros(zs.shape[0], len(self.words)).index_add_(0, rows, torch.log1p(-lp.exp().clamp(
                max=1 - 1e-6)))
            anys.append(1 - miss.exp())
        a, b = torch.cat(anys), torch.cat(bags)
        return {"any": a, "bag": b, "mean": (a + b) / 2, "floor": self.df.expand(a.shape[0], -1)}

    def rank(self, z: torch.Tensor, mask: torch.Tensor, k: int = 64) -> torch.Tensor:
        p = self.probabilities(z, mask)[self.scorer]
        return self.words[p.topk(min(k, p.shape[1]), dim=1).indices]

    def floor_rank(self, n: int, k: int = 64) -> torch.Tensor:
        return self.by_frequency[:k].expand(n, -1)


@dataclass(frozen=True)
class SetOptions(AdaptiveOptions):
    set_epochs: int = field(default=1, metadata={"help": "epochs of the set-level bag head (body frozen)"})
    set_lr: float = field(default=3e-3, metadata={"help": "AdamW learning rate of the set-level bag head"})


@ATTACKS.register("set")
class SetEntry(Attack):
    description = ("set-level inference: name the m content words a sentence contains from all its received "
                   "vectors (set_recovery vs set_floor, the m most frequent public content words)")
    kind = "set"
    Options = SetOptions

    @staticmethod
    def run(evaluation, options):
        shared = AdaptiveOptions(**{f.name: getattr(options, f.name) for f in fields(AdaptiveOptions)})
        adaptive = fitted_adaptive(evaluation, shared)  # its public text and held-out sentences serve here too
        attack = SetInference(adaptive, epochs=options.set_epochs, lr=options.set_lr,
                              seed=evaluation.attacker_seed).fit(adaptive.train_texts, adaptive.holdout_texts)
        return evaluation.score_sets("set", attack, {"scorer": attack.scorer,
                                                     "holdout_set_recovery": attack.holdout_scores})
