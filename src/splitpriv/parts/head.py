"""The classification head alone, for a customer that keeps it (``--head customer``), and its file
``head.safetensors`` shipped beside the bottom.

Threat model: with the head at home the gradient sent up is ∂L/∂(last hidden states), not softmax − onehot(label).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from splitpriv.models import family_of
from splitpriv.parts.base import BOTTOM_CONFIG, HEAD_WEIGHTS, Part, load_exact, skeleton


class Head(Part):
    """The classification head alone, for a customer that keeps it: ``head(last_hidden, mask) -> logits``."""

    def __init__(self, model: nn.Module, attn_implementation: str = "eager"):
        family = family_of(model)
        super().__init__(model, list(family.head), family, attn_implementation)

    def forward(self, last_hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.family.run_head(self, last_hidden, attention_mask)


def load_head(directory: str | Path) -> Head:
    """The head shipped beside a bottom (``head.safetensors``) when the customer holds it."""
    from safetensors.torch import load_file

    directory = Path(directory)
    weights_path = directory / HEAD_WEIGHTS
    if not weights_path.is_file():
        raise FileNotFoundError(f"no head in {directory}: {weights_path.name} is missing")
    meta = json.loads((directory / BOTTOM_CONFIG).read_text())
    head = Head(skeleton(meta, directory / BOTTOM_CONFIG, 0))
    load_exact(head, load_file(str(weights_path)), weights_path)
    return head
