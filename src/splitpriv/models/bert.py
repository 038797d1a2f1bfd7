"""BERT (and MiniLM, the default model): ``bert.embeddings`` → ``bert.encoder.layer`` → pooler, dropout and
classifier."""

from __future__ import annotations

import torch
from torch import nn

from splitpriv.models.family import FAMILIES, BlockInputs, Family


def embed(part: nn.Module, input_ids, inputs_embeds, token_type_ids, position_ids) -> torch.Tensor:
    """The BERT-style embedding layer (word + position + token type → LayerNorm), numbering positions itself."""
    embeddings = part.get_submodule(part.family.embeddings)
    return embeddings(input_ids=input_ids, token_type_ids=token_type_ids, inputs_embeds=inputs_embeds)


def run_block(block: nn.Module, hidden: torch.Tensor, inputs: BlockInputs) -> torch.Tensor:
    return block(hidden, attention_mask=inputs.mask)[0]


def run_head(part: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    pooled = part.get_submodule("bert.pooler")(hidden)
    return part.get_submodule("classifier")(part.get_submodule("dropout")(pooled))


FAMILY = FAMILIES.register("bert")(Family(
    model_type="bert",
    embeddings="bert.embeddings",
    blocks="bert.encoder.layer",
    head=("bert.pooler", "dropout", "classifier"),
    run_head=run_head,
    run_block=run_block,
    embed=embed,
    lora_targets=("query", "value"),
    uses_token_type_ids=True,
))
