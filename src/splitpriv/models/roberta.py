"""RoBERTa: BERT's embeddings and blocks under ``roberta.``; the classifier pools the first token itself."""

from __future__ import annotations

import torch
from torch import nn

from splitpriv.models import bert
from splitpriv.models.family import FAMILIES, Family


def run_head(part: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    return part.get_submodule("classifier")(hidden)


FAMILY = FAMILIES.register("roberta")(Family(
    model_type="roberta",
    embeddings="roberta.embeddings",
    blocks="roberta.encoder.layer",
    head=("classifier",),
    run_head=run_head,
    run_block=bert.run_block,
    embed=bert.embed,
    lora_targets=("query", "value"),
    uses_token_type_ids=True,
))
