"""GPT-2: ``transformer.wte`` + ``transformer.wpe`` (positions from the mask) → dropout → ``transformer.h`` →
``transformer.ln_f``; the classifier scores the last real token, the causal LM projects every token with ``lm_head``."""

from __future__ import annotations

import torch
from torch import nn

from splitpriv.models import decoder
from splitpriv.models.family import DECODER_TASKS, FAMILIES, BlockInputs, Family


def embed(part: nn.Module, input_ids, inputs_embeds, token_type_ids, position_ids) -> torch.Tensor:
    if inputs_embeds is None:
        inputs_embeds = part.get_submodule("transformer.wte")(input_ids)
    hidden = inputs_embeds + part.get_submodule("transformer.wpe")(position_ids).to(inputs_embeds.device)
    return part.get_submodule("transformer.drop")(hidden)


def run_block(block: nn.Module, hidden: torch.Tensor, inputs: BlockInputs) -> torch.Tensor:
    return block(hidden, attention_mask=inputs.mask, past_key_values=inputs.cache, use_cache=inputs.cache is not None,
                 cache_position=inputs.cache_position)[0]


FAMILY = FAMILIES.register("gpt2")(Family(
    model_type="gpt2",
    embeddings="transformer.wte",
    embedding_parts=("transformer.wpe", "transformer.drop"),
    blocks="transformer.h",
    head=("score",),
    run_head=decoder.last_token_head("score"),
    run_block=run_block,
    embed=embed,
    lora_targets=("c_attn",),
    causal=True,
    positions_from_mask=True,
    final_norm="transformer.ln_f",
    lm_head="lm_head",
    position_table="transformer.wpe",
    tasks=DECODER_TASKS,
))
