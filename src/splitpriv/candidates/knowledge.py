"""What the vendor knows besides the wire (:class:`VendorKnowledge`), the template positions the tokenizer fixes,
the public-text prior, and the one shared candidate space per knowledge."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import torch

from splitpriv.candidates.space import CandidateSpace
from splitpriv.parts import Bottom
from splitpriv.privacy import Mechanism


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
        knowledge._space = CandidateSpace(knowledge.bottom, knowledge.tokenizer)
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
