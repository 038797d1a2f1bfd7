"""DistilBERT: ``distilbert.embeddings`` (no token types) → ``distilbert.transformer.layer`` → pre-classifier
head."""

from __future__ import annotations

import torch
from torch import nn

from splitpriv.models.family import FAMILIES, BlockInputs, Family


def embed(part: nn.Module, input_ids, inputs_embeds, token_type_ids, position_ids) -> torch.Tensor:
    return part.get_submodule("distilbert.embeddings")(input_ids, inputs_embeds)


def run_block(block: nn.Module, hidden: torch.Tensor, inputs: BlockInputs) -> torch.Tensor:
    return block(hidden, attn_mask=inputs.mask)[0]


def run_head(part: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    x = torch.relu(part.get_submodule("pre_classifier")(hidden[:, 0]))
    return part.get_submodule("classifier")(part.get_submodule("dropout")(x))


FAMILY = FAMILIES.register("distilbert")(Family(
    model_type="distilbert",
    embeddings="distilbert.embeddings",
    blocks="distilbert.transformer.layer",
    head=("pre_classifier", "dropout", "classifier"),
    run_head=run_head,
    run_block=run_block,
    embed=embed,
    lora_targets=("q_lin", "v_lin"),
    eager_mask_2d=True,
))
