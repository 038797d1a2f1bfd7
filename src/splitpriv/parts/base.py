"""What every part of a split shares: submodules grafted under their original names, shape checks, the per-part
key/value cache, and the file names and skeleton models that saved parts are rebuilt from.

A part keeps each submodule under its dotted path in the original model, so a part's state dict is a slice of the
model's: files, disclosure reports and ``peft`` adapters all speak in the model's own weight names.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from splitpriv.models import FAMILIES, SEQUENCE_CLASSIFICATION, BlockInputs, Family

BOTTOM_WEIGHTS = "bottom.safetensors"
BOTTOM_CONFIG = "bottom.json"
HEAD_WEIGHTS = "head.safetensors"
TAIL_WEIGHTS = "tail.safetensors"
FORMAT_VERSION = 1


def graft(root: nn.Module, model: nn.Module, path: str) -> None:
    """Register ``model``'s submodule at ``path`` under the same dotted path in ``root`` (shared, not copied)."""
    *parents, leaf = path.split(".")
    node = root
    for name in parents:
        if name not in node._modules:
            node.add_module(name, nn.Module())
        node = node._modules[name]
    node.add_module(leaf, model.get_submodule(path))


def check_mask(hidden: torch.Tensor, attention_mask: torch.Tensor | None, d_model: int | None = None) -> None:
    """Reject representations and masks whose shapes disagree, naming the shapes."""
    if hidden.dim() != 3:
        raise ValueError(f"token representations must be [batch, tokens, d], got shape {tuple(hidden.shape)}")
    if d_model is not None and hidden.shape[-1] != d_model:
        raise ValueError(f"token representations have width {hidden.shape[-1]}, this model expects d = {d_model}")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} does not match representations "
            f"[batch, tokens] = {tuple(hidden.shape[:2])}"
        )


class Part(nn.Module):
    """Submodules of one model, under their original names, plus what is needed to run them."""

    def __init__(self, model: nn.Module, paths: list[str], family: Family, attn_implementation: str):
        super().__init__()
        for path in paths:
            graft(self, model, path)
        self.family = family
        self.model_config = model.config
        self.attn_implementation = attn_implementation
        self.d_model = int(getattr(model.config, "hidden_size", 0) or getattr(model.config, "dim"))

    def _run_blocks(self, paths: list[str], hidden: torch.Tensor, inputs: BlockInputs) -> torch.Tensor:
        for path in paths:
            hidden = self.family.run_block(self.get_submodule(path), hidden, inputs)
        return hidden

    def _block_inputs(self, hidden, attention_mask, position_ids=None, cache=None) -> BlockInputs:
        past = cache.length if cache is not None else 0
        return self.family.block_inputs(self, self.model_config, hidden, attention_mask, position_ids,
                                        cache=None if cache is None else cache.cache, past_length=past)


def present(*paths: str | None) -> list[str]:
    return [p for p in paths if p is not None]


def advance(cache, hidden: torch.Tensor) -> torch.Tensor:
    if cache is not None:
        cache.advance(hidden.shape[1])
    return hidden


def unique_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    seen: set[int] = set()
    out = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if id(p) not in seen:
            seen.add(id(p))
            out[name] = p
    return out


def skeleton(meta: dict, meta_path: Path, n_layers: int) -> nn.Module:
    """A randomly initialised model with ``n_layers`` blocks, whose relevant weights the caller overwrites."""
    from transformers import AutoConfig

    if meta.get("model_type") not in FAMILIES:
        raise ValueError(f"{meta_path}: unsupported model_type {meta.get('model_type')!r}")
    family = FAMILIES.get(meta["model_type"])
    hf = dict(meta["hf_config"])
    config = AutoConfig.for_model(hf.pop("model_type", meta["model_type"]), **hf)
    config.num_hidden_layers = n_layers
    config._attn_implementation = meta.get("attn_implementation", "eager")
    return family.auto_class(meta.get("task", SEQUENCE_CLASSIFICATION)).from_config(config).eval()


def load_exact(part: nn.Module, state: dict, path: Path) -> None:
    own = unique_parameters(part)
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{path} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    part.load_state_dict(state, strict=False)


class PartCache:
    """One part's key/value cache for incremental decoding, and how many tokens it has seen (a part may have no
    blocks, so the count is kept here rather than read from the cache)."""

    def __init__(self):
        from transformers import DynamicCache

        self.cache = DynamicCache()
        self.length = 0

    def advance(self, tokens: int) -> None:
        self.length += tokens
