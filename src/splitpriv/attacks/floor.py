r"""The prior-only floor: what an attacker recovers from the mask alone, without looking at a representation.

Threat model: the attacker knows only what the attention mask says (each sentence's length, hence every real
position) and public text; it ignores every received vector. Its best blind guess at a position to guess is the
most probable public token there. With the position counted from the start (:math:`i`) and from the end
(:math:`j`) among the positions to guess (the template's [CLS]/[SEP] are fixed, as in every attack):

* ``anchor="start"``: :math:`\arg\max_t \hat P(t \mid i)`, the position-wise unigram;
* ``anchor="both"``: :math:`\arg\max_t \log\hat P(t \mid i) + \log\hat P(t \mid j) - \log\hat P(t)`, naive Bayes
  over both anchors (the last word before [SEP] is most often "." whatever the length);
* ``anchor="global"``: the single most frequent public token everywhere.

:math:`\hat P` are counts of the public text tokenized with the customer's tokenizer, smoothed towards the global
unigram (``smoothing`` pseudo-counts per position). An attack is worth what it recovers *above* this floor: the
runner reports every attack's ``advantage_over_floor``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from splitpriv.attacks.base import AttackerKnowledge, InversionAttack
from splitpriv.attacks.observe import tokenize
from splitpriv.attacks.registry import ATTACKS, Attack
from splitpriv.candidates import fixed_positions, interior_penalty

ANCHORS = ("start", "both", "global")


def guess_index(attention_mask: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of every position among the positions to guess of its row, from the start and from the end [N, T]."""
    guess = attention_mask.bool() & ~fixed
    start = guess.long().cumsum(1) - 1
    end = guess.long().sum(1, keepdim=True) - 1 - start
    return start.clamp(min=0), end.clamp(min=0)


class PriorFloor(InversionAttack):
    """The most probable public token at each position given only the mask (module docstring)."""

    name = "floor"

    def __init__(self, anchor: str = "both", smoothing: float = 1.0, max_positions: int = 512):
        if anchor not in ANCHORS:
            raise ValueError(f"floor anchor must be one of {ANCHORS}, got {anchor!r}")
        self.anchor, self.smoothing, self.max_positions = anchor, float(smoothing), int(max_positions)

    def fit(self, knowledge: AttackerKnowledge, texts: list[str] | None = None) -> PriorFloor:
        """Count ``texts`` (default: the knowledge's public text) per position."""
        super().fit(knowledge)
        tok = knowledge.tokenizer
        texts = list(knowledge.public_texts if texts is None else texts)
        if not texts:
            raise ValueError("the prior-only floor needs public texts")
        self.n_texts = len(texts)
        vocab = len(tok)
        ids, mask, _ = tokenize(tok, texts, knowledge.max_length)
        fixed, _ = fixed_positions(tok, mask)
        guess = mask.bool() & ~fixed
        start, end = guess_index(mask, fixed)
        p = self.max_positions = min(self.max_positions, knowledge.max_length)
        counts = {}
        for key, index in (("start", start), ("end", end)):
            flat = index[guess].clamp(max=p - 1) * vocab + ids[guess]
            counts[key] = torch.bincount(flat, minlength=p * vocab).view(p, vocab).double()
        unigram = counts["start"].sum(0) + 1.0
        unigram /= unigram.sum()
        self.penalty = interior_penalty(tok, vocab)

        def log_cond(c: torch.Tensor) -> torch.Tensor:
            c = c + self.smoothing * unigram
            return (c / c.sum(1, keepdim=True)).log()

        self.log_unigram = unigram.log().float()
        self.log_start = log_cond(counts["start"]).float()
        self.log_end = log_cond(counts["end"]).float()
        return self

    def scores(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """Log-score of every token [n, V] at guess indices ``i`` from the start and ``j`` from the end [n]."""
        i, j = i.clamp(max=self.max_positions - 1), j.clamp(max=self.max_positions - 1)
        if self.anchor == "global":
            score = self.log_unigram.expand(len(i), -1)
        elif self.anchor == "start":
            score = self.log_start[i]
        else:
            score = self.log_start[i] + self.log_end[j] - self.log_unigram
        return score - self.penalty

    def rank(self, hidden: torch.Tensor | None, attention_mask: torch.Tensor, k: int = 5) -> torch.Tensor:
        """The ``k`` best blind guesses [N, T, k] (``hidden`` is ignored)."""
        fixed, ids = fixed_positions(self.knowledge.tokenizer, attention_mask)
        guess = attention_mask.bool() & ~fixed
        start, end = guess_index(attention_mask, fixed)
        out = ids[..., None].repeat(1, 1, k)
        if guess.any():
            pairs, where = torch.unique(torch.stack([start[guess], end[guess]], 1), dim=0, return_inverse=True)
            best = torch.cat([self.scores(p[:, 0], p[:, 1]).topk(k, dim=1).indices for p in pairs.split(512)])
            out[guess] = best[where]
        pad = self.knowledge.tokenizer.pad_token_id or 0
        return torch.where(attention_mask.bool()[..., None], out, torch.full_like(out, pad))

    def invert(self, hidden: torch.Tensor | None, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.rank(hidden, attention_mask, 1)[..., 0]

    def log_ratio(self, attention_mask: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        r"""[n, V] :math:`\log \hat P(t \mid i, j) - \log \hat P(t)` at (rows, cols): what knowing the position adds
        to a posterior that already holds the global prior (``-inf`` at tokens no attack guesses)."""
        fixed, _ = fixed_positions(self.knowledge.tokenizer, attention_mask)
        start, end = guess_index(attention_mask, fixed)
        return self.scores(start[rows, cols], end[rows, cols]) - self.log_unigram


def attacker_public_texts(evaluation, n_public: int | None = None, n_in_domain: int | None = None,
                          seed: int = 0, n_unused_train: int | None = 0, n_other: int = 0) -> list[str]:
    """The vendor's public text in ``evaluation``'s setting: ``n_other`` sentences of the other public datasets
    (:attr:`~splitpriv.attacks.evaluation.Evaluation.other_public_texts`), WikiText-2 (``n_public`` of its
    sentences, all when None or 0), the evaluation dataset's public in-domain sentences (``n_in_domain``, all when
    None; its test split, disjoint from the customer's train and dev) and (``n_unused_train``, all when None, none
    when 0) the training rows the customer did not use
    (:attr:`~splitpriv.attacks.evaluation.Evaluation.unused_train_texts`)."""
    import random

    rng = random.Random(seed)

    def take(texts: list[str], n: int | None) -> list[str]:
        if n is None or len(texts) <= n:
            return list(texts)
        return rng.sample(list(texts), n) if n > 0 else []

    other = take(evaluation.other_public_texts, n_other) if n_other else []
    wiki = take(evaluation.knowledge().public_texts, n_public or None)
    own = take(evaluation.in_domain_texts, n_in_domain)
    unused = take(evaluation.unused_train_texts, n_unused_train) if n_unused_train != 0 else []
    return other + wiki + own + unused


def position_prior(evaluation) -> PriorFloor:
    """The floor every attack may multiply its posterior by: fitted once per evaluation on all of the attacker's
    public text (WikiText-2, the test split and the customer's unused training rows), anchored at both ends."""
    def fit():
        texts = attacker_public_texts(evaluation, n_in_domain=None, n_unused_train=None)
        return PriorFloor(anchor="both").fit(evaluation.knowledge(), texts)

    return evaluation.memo("position-prior", fit)


@dataclass(frozen=True)
class FloorOptions:
    floor_anchor: str = field(default="both", metadata={
        "help": "start (position-wise unigram), both (positions from the start and from the end), global "
                "(one most frequent token)"})
    floor_in_domain: bool = field(default=True, metadata={
        "help": "count the dataset's public test sentences and the customer's unused training rows besides "
                "WikiText-2"})


@ATTACKS.register("floor")
class FloorEntry(Attack):
    description = "prior-only floor: the most probable public token at each position, from the mask alone"
    Options = FloorOptions

    @staticmethod
    def run(evaluation, options):
        if options.floor_in_domain and options.floor_anchor == "both":
            attack = position_prior(evaluation)
        else:
            texts = attacker_public_texts(evaluation, n_in_domain=None if options.floor_in_domain else 0,
                                          n_unused_train=None if options.floor_in_domain else 0)
            attack = PriorFloor(anchor=options.floor_anchor).fit(evaluation.knowledge(), texts)
        return evaluation.score("floor", attack, {"anchor": options.floor_anchor, "n_public_texts": attack.n_texts})
