"""The customer's first part: embeddings + the first ``k`` blocks (+ a learned privatizer's customer half), and its
file (``bottom.safetensors`` + ``bottom.json``), which holds exactly the bottom's weights and nothing of the top.

Threat model: the vendor ships these weights (its disclosure) and receives the bottom's privatized outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from splitpriv.models import family_of
from splitpriv.parts.base import (
    BOTTOM_CONFIG,
    BOTTOM_WEIGHTS,
    FORMAT_VERSION,
    Part,
    advance,
    check_mask,
    load_exact,
    present,
    skeleton,
    unique_parameters,
)
from splitpriv.parts.privatizer import customer_half


class Bottom(Part):
    """Embeddings + the first ``k`` blocks: ``bottom(input_ids, attention_mask) -> [B, T, d]`` token representations."""

    def __init__(self, model: nn.Module, n_layers: int, attn_implementation: str):
        family = family_of(model)
        self.block_paths = family.block_paths(n_layers)
        paths = [family.embeddings, *family.embedding_parts, *present(family.rotary), *self.block_paths]
        super().__init__(model, paths, family, attn_implementation)
        self.n_layers = n_layers
        self.task = family.task_of(model)
        self.hf_config = model.config.to_dict()
        self.privatizer = None  # a learned privatizer's customer half: the bottom then outputs u [B, T, r]

    def embed(
        self,
        input_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embedding-layer output; ``inputs_embeds`` replaces the word-embedding lookup (soft tokens).

        Families with positions from the mask number the tokens ``0..T-1`` when ``position_ids`` is not given.
        """
        if position_ids is None:
            position_ids = self._positions(input_ids, inputs_embeds, None)
        token_type_ids = token_type_ids if self.family.uses_token_type_ids else None
        return self.family.embed(self, input_ids, inputs_embeds, token_type_ids, position_ids)

    def _positions(self, input_ids, inputs_embeds, attention_mask) -> torch.Tensor | None:
        reference = input_ids if input_ids is not None else inputs_embeds
        return self.family.position_ids(attention_mask, reference.shape[1], reference.device)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache=None,
    ) -> torch.Tensor:
        if input_ids is None and inputs_embeds is None:
            raise ValueError("bottom needs input_ids or inputs_embeds")
        positions = self._positions(input_ids, inputs_embeds, attention_mask)
        if cache is not None and cache.length and positions is not None:
            positions = positions + cache.length
        hidden = self.embed(input_ids, token_type_ids, inputs_embeds, positions)
        check_mask(hidden, attention_mask)
        inputs = self._block_inputs(hidden, attention_mask, positions, cache)
        hidden = advance(cache, self._run_blocks(self.block_paths, hidden, inputs))
        return hidden if self.privatizer is None else self.privatizer(hidden, attention_mask)


def save_bottom(bottom: Bottom, directory: str | Path, tokenizer=None, extra: dict | None = None) -> Path:
    """Write the bottom as ``bottom.safetensors`` + ``bottom.json`` (and the tokenizer files if given).

    The file holds exactly the bottom's weights, under their names in the full model; nothing of the top.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: p.detach().contiguous().cpu() for name, p in unique_parameters(bottom).items()}
    save_file(state, str(directory / BOTTOM_WEIGHTS), metadata={"format": "splitpriv-bottom"})
    meta = {
        "format_version": FORMAT_VERSION,
        "model_type": bottom.family.model_type,
        "n_bottom_layers": bottom.n_layers,
        "task": bottom.task,
        "attn_implementation": bottom.attn_implementation,
        "hf_config": bottom.hf_config,
        **({"privatizer": bottom.privatizer.privatizer_config} if bottom.privatizer is not None else {}),
        **(extra or {}),
    }
    (directory / BOTTOM_CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    return directory


def load_bottom(directory: str | Path) -> Bottom:
    """Rebuild a bottom from :func:`save_bottom` output alone (the machine never has the top's weights)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta_path, weights_path = directory / BOTTOM_CONFIG, directory / BOTTOM_WEIGHTS
    for path in (meta_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"not a saved bottom: {path} is missing")
    meta = json.loads(meta_path.read_text())
    k = int(meta["n_bottom_layers"])
    bottom = Bottom(skeleton(meta, meta_path, k), k, meta.get("attn_implementation", "eager"))
    bottom.hf_config = meta["hf_config"]
    if meta.get("privatizer") is not None:
        bottom.privatizer = customer_half(meta["privatizer"], bottom.d_model)
    load_exact(bottom, load_file(str(weights_path)), weights_path)
    bottom.eval()
    return bottom
