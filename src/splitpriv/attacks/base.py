"""The common interface of the attacks and their metrics.

An inversion attack maps what the vendor receives (privatized representations and their mask) to token ids; the
evaluator, which alone knows the true ids, scores the guess. Empirical privacy of a setting is
``1 − max(success)`` over the applicable attacks: a figure counts only against the strongest attack we have.
"""

from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass, field

import torch

from splitpriv.candidates import (  # noqa: F401  (re-exported: what the attacks have always imported from here)
    VendorKnowledge,
    apply_template,
    fixed_positions,
    special_ids,
    target_positions,
    template_tokens,
)

AttackerKnowledge = VendorKnowledge

# Function words excluded from content words (:func:`is_content_word`). Sentiment and topic live in the remaining
# words, which is what a privacy figure must cover.
STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below between
    both but by can could did do does doing down during each few for from further had has have having he her here
    hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now of
    off on once only or other our ours ourselves out over own same she should so some such than that the their
    theirs them themselves then there these they this those through to too under until up very was we were what
    when where which while who whom why will with would you your yours yourself yourselves 's 're 've 'd 'll n't
    s t d ll re ve m""".split()
)


@dataclass
class AttackResult:
    """``success`` in [0, 1] is the attack's headline figure; ``metrics`` holds the rest."""

    attack: str
    success: float
    metrics: dict = field(default_factory=dict)

    @property
    def empirical_privacy(self) -> float:
        return 1.0 - self.success

    def to_dict(self) -> dict:
        return {"attack": self.attack, "success": self.success, "empirical_privacy": self.empirical_privacy,
                **self.metrics}


class InversionAttack(abc.ABC):
    """Recovers token ids from privatized token representations."""

    name: str = ""

    def fit(self, knowledge: AttackerKnowledge) -> "InversionAttack":
        """Prepare with the attacker's knowledge (candidates, a trained inverter, ...); returns self."""
        self.knowledge = knowledge
        return self

    @abc.abstractmethod
    def invert(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids [N, T] guessed from representations [N, T, d] (padding positions are ignored)."""


def real_token_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer) -> torch.Tensor:
    """Real tokens: inside the attention mask and not special tokens ([CLS], [SEP], <s>, ...)."""
    return attention_mask.bool() & ~torch.isin(input_ids, special_ids(tokenizer).to(input_ids.dtype))


def content_token_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer) -> torch.Tensor:
    """Real tokens that are content words (:func:`is_content_word`)."""
    real = real_token_mask(input_ids, attention_mask, tokenizer)
    is_content = content_vocabulary(tokenizer)
    return real & is_content[input_ids.clamp(0, len(is_content) - 1)]


def is_content_word(token: str) -> bool:
    """The one definition of a content word, shared by token and set-level recovery: a vocabulary entry that starts
    a word (not a WordPiece ``##`` continuation), is alphabetic, has at least 3 characters and is not a stop word."""
    if token.startswith("##"):
        return False
    word = token.lstrip("Ġ▁").lower()
    return len(word) >= 3 and word.isalpha() and word not in STOPWORDS


def content_vocabulary(tokenizer) -> torch.Tensor:
    """[V] bool: which token ids are content words (:func:`is_content_word`)."""
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return torch.tensor([is_content_word(t) for t in vocab], dtype=torch.bool)


def recovery_metrics(predicted: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer,
                     extra_masks: dict[str, torch.Tensor] | None = None, ranked: torch.Tensor | None = None) -> dict:
    """Token recovery over real tokens, over content tokens (and any ``extra_masks``), and exact sentences.

    ``ranked`` [N, T, K] (an attack's K best guesses per position, best first) adds ``top{K}_recovery`` (the true
    token among them) on the same masks."""
    out = _rates(predicted.to(input_ids.device) == input_ids, input_ids, attention_mask, tokenizer, extra_masks)
    if ranked is not None:
        hit_k = (ranked.to(input_ids.device) == input_ids[..., None]).any(-1)
        top = _rates(hit_k, input_ids, attention_mask, tokenizer, extra_masks)
        out.update({f"top{ranked.shape[-1]}_{k}": v for k, v in top.items() if k.endswith("_recovery")})
    return out


def _rates(hit: torch.Tensor, input_ids, attention_mask, tokenizer, extra_masks) -> dict:
    real = real_token_mask(input_ids, attention_mask, tokenizer)
    content = content_token_mask(input_ids, attention_mask, tokenizer)

    def rate(mask: torch.Tensor) -> float:
        n = int(mask.sum())
        return float((hit & mask).sum()) / n if n else float("nan")

    exact = ((hit | ~real).all(dim=1) & real.any(dim=1)).float()
    out = {
        "token_recovery": rate(real),
        "content_recovery": rate(content),
        "sentence_exact": float(exact.sum() / real.any(dim=1).sum().clamp(min=1)),
        "n_tokens": int(real.sum()),
        "n_content_tokens": int(content.sum()),
    }
    for name, mask in (extra_masks or {}).items():
        out[f"{name}_recovery"] = rate(real & mask)
        out[f"n_{name}_tokens"] = int((real & mask).sum())
    return out


def set_recovery(ranked: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer) -> dict:
    """Set-level recovery of ranked guesses [N, K] (best first): for each sentence with the set S of distinct content
    tokens, the first m = min(|S|, K) guesses are scored against S; ``set_recovery`` = hits / Σ m."""
    content = content_token_mask(input_ids, attention_mask, tokenizer)
    hits = total = 0
    for row, guesses in zip(range(input_ids.shape[0]), ranked.tolist()):
        truth = set(input_ids[row][content[row]].tolist())
        m = min(len(truth), len(guesses))
        hits += len(truth & set(guesses[:m]))
        total += m
    return {"set_recovery": hits / total if total else float("nan"), "n_set_words": total}


@torch.no_grad()
def rank_targets(scores, hidden: torch.Tensor, attention_mask: torch.Tensor, tokenizer, k: int = 5,
                 chunk: int = 512) -> torch.Tensor:
    """The ``k`` best-scored tokens [N, T, k] at every position to guess (``scores(z [n, r], positions [n])`` ->
    [n, V], higher = more likely); the template's ids at its fixed positions."""
    rows, cols = target_positions(tokenizer, attention_mask)
    _, ids = fixed_positions(tokenizer, attention_mask)
    out = ids[..., None].repeat(1, 1, k)
    for s in range(0, rows.numel(), chunk):
        r, c = rows[s:s + chunk], cols[s:s + chunk]
        out[r, c] = scores(hidden[r, c].float(), c).topk(k, dim=1).indices
    return out


def empirical_privacy(results: list[AttackResult]) -> dict:
    """1 − the strongest attack's success, and which attack that was."""
    best = max(results, key=lambda r: r.success)
    return {"empirical_privacy": 1.0 - best.success, "strongest_attack": best.attack, "success": best.success}


def most_frequent_rate(input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer) -> float:
    """Chance level of token recovery: the share of the most frequent real token (an attacker that ignores the
    representations and always guesses the single most common token cannot beat it)."""
    real = real_token_mask(input_ids, attention_mask, tokenizer)
    ids = input_ids[real]
    if ids.numel() == 0:
        return float("nan")
    return float(torch.bincount(ids).max()) / ids.numel()


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run a block with ``n`` intra-op threads (``None``: unchanged), restoring the previous count.

    The attacks' training and optimisation loops run many small operations. On cores shared with other busy
    processes, OpenMP's active waiting between threads makes such loops several times *slower* with 2 threads
    than with 1 (measured 13x for the optimisation attack); ``OMP_WAIT_POLICY=PASSIVE`` is the process-wide fix.
    """
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
