"""Full fine-tuning of the top: the baseline. Every session holds a private copy of all the top's weights, so a
vendor pays one top's parameters and two AdamW moments per tenant (for MiniLM at k = 0: about 10.8M parameters,
~130 MB in fp32 with optimizer state)."""

from __future__ import annotations

from dataclasses import dataclass

from splitpriv.parts.top import Top
from splitpriv.tuning.base import TUNING_METHODS, TunedTop, TuningConfig, share_frozen_copy


@TUNING_METHODS.register("full")
@dataclass(frozen=True)
class Full(TuningConfig):
    method = "full"

    def apply(self, top: Top) -> TunedTop:
        return apply_full(top, self)


def apply_full(top: Top, config: Full) -> TunedTop:
    module = share_frozen_copy(top, clone={n for n, _ in top.named_parameters()})
    for p in module.parameters():
        p.requires_grad_(True)
    return TunedTop(module, config)
