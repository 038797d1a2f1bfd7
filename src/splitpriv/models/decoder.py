"""What decoder families share: the token-embedding lookup, a rotary block call, last-real-token pooling and
the Llama layout (Llama, Qwen2 and their relatives differ only in their blocks, which run the same way)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from splitpriv.models.family import DECODER_TASKS, BlockInputs, Family


def token_embedding(part: nn.Module, input_ids, inputs_embeds, token_type_ids, position_ids) -> torch.Tensor:
    """The word-embedding lookup alone (rotary families add positions inside attention)."""
    if inputs_embeds is not None:
        return inputs_embeds
    return part.get_submodule(part.family.embeddings)(input_ids)


def run_rotary_block(block: nn.Module, hidden: torch.Tensor, inputs: BlockInputs) -> torch.Tensor:
    """A Llama-style decoder layer with the part's own causal mask (by layer type) and rotary cos/sin."""
    mask = inputs.mask[block.attention_type] if isinstance(inputs.mask, dict) else inputs.mask
    out = block(hidden, attention_mask=mask, position_ids=inputs.position_ids,
                position_embeddings=inputs.position_embeddings, past_key_values=inputs.cache,
                use_cache=inputs.cache is not None, cache_position=inputs.cache_position)
    return out[0] if isinstance(out, tuple) else out


def last_token_head(score: str) -> Callable[..., torch.Tensor]:
    """A head that scores every token with ``score`` and keeps the last real token's logits (the last one with
    ``attention_mask`` = 1, whichever side the padding is on; the last position without a mask)."""

    def run_head(part: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = part.get_submodule(score)(hidden)
        batch, length = hidden.shape[:2]
        if attention_mask is None:
            last = torch.full((batch,), length - 1, device=hidden.device)
        else:
            positions = torch.arange(length, device=hidden.device, dtype=torch.int32)
            last = (positions * attention_mask.to(device=hidden.device, dtype=torch.int32)).argmax(-1)
        return logits[torch.arange(batch, device=hidden.device), last]

    return run_head


def rotary_decoder(model_type: str) -> Family:
    """A Llama-layout decoder: ``model.embed_tokens`` → ``model.layers`` (rotary positions from the mask, causal
    masks) → ``model.norm``; ``score`` classifies at the last real token, ``lm_head`` projects every token."""
    return Family(
        model_type=model_type,
        embeddings="model.embed_tokens",
        blocks="model.layers",
        head=("score",),
        run_head=last_token_head("score"),
        run_block=run_rotary_block,
        embed=token_embedding,
        lora_targets=("q_proj", "v_proj"),
        causal=True,
        positions_from_mask=True,
        rotary="model.rotary_emb",
        final_norm="model.norm",
        lm_head="lm_head",
        tasks=DECODER_TASKS,
    )
