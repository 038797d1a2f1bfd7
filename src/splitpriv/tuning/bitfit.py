"""BitFit (Ben Zaken et al. 2022): only the biases of the top's blocks train, plus the head.

``peft`` has no BitFit, and it needs no new layers: each session gets private copies of the biases (a few
thousand numbers per block) and shares every weight matrix with the base model."""

from __future__ import annotations

from dataclasses import dataclass

from splitpriv.parts.top import Top
from splitpriv.tuning.base import TUNING_METHODS, TunedTop, TuningConfig, head_modules, share_frozen_copy


@TUNING_METHODS.register("bitfit")
@dataclass(frozen=True)
class BitFit(TuningConfig):
    method = "bitfit"

    def apply(self, top: Top) -> TunedTop:
        return apply_bitfit(top, self)


def apply_bitfit(top: Top, config: BitFit) -> TunedTop:
    heads = tuple(f"{h}." for h in head_modules(top))
    trained = {n for n, _ in top.named_parameters() if n.endswith(".bias") or n.startswith(heads)}
    module = share_frozen_copy(top, clone=trained)
    for name, p in module.named_parameters():
        p.requires_grad_(name in trained)
    return TunedTop(module, config)
