"""The vendor's part: the remaining blocks + final norm + classification head (a causal LM: the middle blocks alone)."""

from __future__ import annotations

import torch
from torch import nn

from splitpriv.models import CAUSAL_LM, SEQUENCE_CLASSIFICATION, BlockInputs, family_of, num_blocks
from splitpriv.parts.base import Part, advance, check_mask, present


class Top(Part):
    """The remaining blocks + final norm + head: ``top(hidden, attention_mask) -> [B, num_labels]`` logits.

    ``encode`` stops after the last block and the final norm (the vendor's output when the customer holds the head)
    and ``classify`` applies the head alone (decoders pool at the last real token of ``attention_mask``). A causal
    LM's top is the middle: blocks ``k .. n - j`` alone, ``top(hidden, attention_mask) -> [B, T, d]``.
    """

    def __init__(self, model: nn.Module, n_bottom_layers: int, attn_implementation: str, n_tail_layers: int = 0):
        family = family_of(model)
        self.task = family.task_of(model)
        n = num_blocks(model)
        self.block_paths = family.block_paths(n)[n_bottom_layers:n - n_tail_layers]
        ends = [*present(family.final_norm), *family.head] if self.task == SEQUENCE_CLASSIFICATION else []
        super().__init__(model, [*present(family.rotary), *self.block_paths, *ends], family, attn_implementation)
        self.num_labels = int(model.config.num_labels) if self.task == SEQUENCE_CLASSIFICATION else None
        self.privatizer_up = None  # a learned privatizer's vendor half r -> d, trained like the head

    @property
    def input_width(self) -> int:
        return self.d_model if self.privatizer_up is None else self.privatizer_up.in_features

    def encode(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
               cache=None, block_inputs: BlockInputs | None = None) -> torch.Tensor:
        """``block_inputs`` replaces the ones built from ``attention_mask`` (a packed batch's block-diagonal mask)."""
        check_mask(hidden, attention_mask, self.input_width)
        hidden = hidden if self.privatizer_up is None else self.privatizer_up(hidden)
        inputs = self._block_inputs(hidden, attention_mask, cache=cache) if block_inputs is None else block_inputs
        hidden = advance(cache, self._run_blocks(self.block_paths, hidden, inputs))
        if self.family.final_norm is not None and self.task == SEQUENCE_CLASSIFICATION:
            hidden = self.get_submodule(self.family.final_norm)(hidden)
        return hidden

    def classify(self, last_hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.task != SEQUENCE_CLASSIFICATION:
            raise ValueError("a causal-LM top has no classification head: it returns hidden states for the tail")
        return self.family.run_head(self, last_hidden, attention_mask)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache=None) -> torch.Tensor:
        if self.task == CAUSAL_LM:
            return self.encode(hidden, attention_mask, cache)
        return self.classify(self.encode(hidden, attention_mask), attention_mask)
