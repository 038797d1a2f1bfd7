"""The description of a model family (:class:`Family`) and the registry that holds one per ``model_type``.

A family says where each part of its transformers models lives (embeddings, blocks, final norm, heads), how a block
and a head are called, and what each side of a split rebuilds for itself from the attention mask: position ids,
the mask in the form the blocks take it (bidirectional or causal), the rotary cos/sin. Only hidden states and the
2-D mask cross a split, so each part calls :meth:`Family.block_inputs` on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from splitpriv.registry import Registry

SEQUENCE_CLASSIFICATION = "sequence-classification"
CAUSAL_LM = "causal-lm"
ENCODER_TASKS = {SEQUENCE_CLASSIFICATION: "AutoModelForSequenceClassification"}
DECODER_TASKS = {**ENCODER_TASKS, CAUSAL_LM: "AutoModelForCausalLM"}

FAMILIES: Registry[Family] = Registry("model family", "splitpriv.models")


@dataclass(frozen=True)
class BlockInputs:
    """What every block of one part takes beside the hidden states, rebuilt by that part from the 2-D mask."""

    mask: Any  # as the blocks take it; a dict by layer type when a model mixes full and sliding-window attention
    position_ids: torch.Tensor | None = None
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None  # rotary (cos, sin)
    cache: Any = None  # a transformers Cache the blocks extend with this call's keys and values (generation)
    cache_position: torch.Tensor | None = None  # indices of this call's tokens in the cached sequence


@dataclass(frozen=True)
class Family:
    """Where the parts of one family live inside its transformers models, and how each part runs.

    Encoders fill the first fields; a decoder also declares its causal masking, positions from the mask, its rotary
    module, final norm and LM head. Callables receive the part (a module holding the family's submodules under
    their original paths) so that one description serves the whole model and every slice of it.
    """

    model_type: str
    embeddings: str  # the token-embedding module (an encoder's whole embedding layer)
    blocks: str  # the ModuleList of blocks
    head: tuple[str, ...]  # the sequence-classification head's modules
    run_head: Callable[..., torch.Tensor]  # (part, last_hidden, attention_mask=None) -> logits [B, num_labels]
    run_block: Callable[[nn.Module, torch.Tensor, BlockInputs], torch.Tensor]
    embed: Callable[..., torch.Tensor]  # (part, input_ids, inputs_embeds, token_type_ids, position_ids) -> [B, T, d]
    lora_targets: tuple[str, ...]  # the block's linear layers LoRA adapts by default (attention query and value)
    uses_token_type_ids: bool = False
    eager_mask_2d: bool = False  # a bidirectional 2-D mask reaches an eager block as is (DistilBERT), else additive 4-D
    embedding_parts: tuple[str, ...] = ()  # further modules the embedding step uses (GPT-2: position table, dropout)
    causal: bool = False
    positions_from_mask: bool = False  # position ids = running sum of the mask - 1, rebuilt by every part
    rotary: str | None = None  # rotary-embedding module; every part computes its cos/sin from the position ids
    final_norm: str | None = None  # applied after the last block (part of the vendor's last hidden states)
    lm_head: str | None = None  # the causal LM's output projection
    position_table: str | None = None  # a learned position table added to the word embeddings (GPT-2), read by the
    # k = 0 candidate space of families without a LayerNorm after the embedding sum
    tasks: Mapping[str, str] = field(default_factory=lambda: dict(ENCODER_TASKS), hash=False)  # task -> auto class

    def block_paths(self, n_blocks: int) -> list[str]:
        return [f"{self.blocks}.{i}" for i in range(n_blocks)]

    def auto_class(self, task: str = SEQUENCE_CLASSIFICATION):
        """The transformers auto class that builds this family's model for ``task``."""
        if task not in self.tasks:
            raise ValueError(f"{self.model_type} models support the tasks {sorted(self.tasks)}, not {task!r}")
        import transformers

        return getattr(transformers, self.tasks[task])

    def task_of(self, model: nn.Module) -> str:
        """The task ``model`` was built for, read from the head it carries."""
        if self.lm_head is not None and _has_module(model, self.lm_head):
            return CAUSAL_LM
        return SEQUENCE_CLASSIFICATION

    def position_ids(self, attention_mask: torch.Tensor | None, length: int, device=None) -> torch.Tensor | None:
        """Position ids from the mask (``None`` for families whose embedding layer numbers positions itself)."""
        if not self.positions_from_mask:
            return None
        if attention_mask is None:
            return torch.arange(length, device=device)[None]
        return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)

    def block_inputs(
        self,
        part: nn.Module,
        config,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None = None,
        cache=None,
        past_length: int = 0,
    ) -> BlockInputs:
        """Mask, positions and rotary tables for ``part``'s blocks, as the unsplit model builds them.

        With a ``cache`` (incremental decoding of one unpadded sequence) the tokens sit at ``past_length ..``: the
        first call builds the causal mask over its own tokens, a later call brings one token, which attends to
        everything cached (no mask needed).
        """
        length = hidden.shape[1]
        if cache is not None and past_length > 0:
            if length != 1 or attention_mask is not None and not bool(attention_mask.all()):
                raise ValueError("a cached decoding step takes one new, unpadded token per call")
            positions = torch.arange(past_length, past_length + 1, device=hidden.device)
            rotary = part.get_submodule(self.rotary)(hidden, positions[None]) if self.rotary else None
            return BlockInputs(None, positions[None], rotary, cache, positions)
        if position_ids is None:
            position_ids = self.position_ids(attention_mask, length, hidden.device)
        build = _causal_mask if self.causal else self._bidirectional_mask
        rotary = part.get_submodule(self.rotary)(hidden, position_ids) if self.rotary else None
        positions = torch.arange(length, device=hidden.device) if cache is not None else None
        return BlockInputs(build(config, hidden, attention_mask, position_ids), position_ids, rotary, cache, positions)

    def _bidirectional_mask(self, config, hidden, attention_mask, position_ids):
        if attention_mask is None:
            return None
        dtype = hidden.dtype
        if self.eager_mask_2d:
            if _attn_implementation(config) == "sdpa":
                from transformers.modeling_attn_mask_utils import _prepare_4d_attention_mask_for_sdpa

                return _prepare_4d_attention_mask_for_sdpa(attention_mask, dtype, tgt_len=hidden.shape[1])
            return attention_mask
        return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def _attn_implementation(config) -> str:
    return getattr(config, "_attn_implementation", None) or "eager"


def _causal_mask(config, hidden, attention_mask, position_ids):
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    arguments = dict(config=config, input_embeds=hidden, attention_mask=attention_mask, past_key_values=None,
                     cache_position=torch.arange(hidden.shape[1], device=hidden.device), position_ids=position_ids)
    full = create_causal_mask(**arguments)
    if "sliding_attention" not in (getattr(config, "layer_types", None) or ()):
        return full
    return {"full_attention": full, "sliding_attention": create_sliding_window_causal_mask(**arguments)}


def _has_module(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def family_of(model: nn.Module) -> Family:
    """The :class:`Family` of a transformers model; a clear error for unsupported ones."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if not isinstance(model_type, str) or model_type not in FAMILIES:
        raise ValueError(
            f"unsupported model family {model_type!r}: splitpriv supports {FAMILIES.names()} "
            "(add a module to splitpriv/models/ that registers a Family to support another one)"
        )
    return FAMILIES.get(model_type)


def num_blocks(model: nn.Module) -> int:
    return len(model.get_submodule(family_of(model).blocks))
