"""Bottleneck adapters (Houlsby et al. 2019; one adapter after each block as in Pfeiffer et al. 2021):
h ← h + W_up · act(W_down · h), with W_up initialised to zero so that training starts from the pretrained top.

Written here instead of using the ``adapters`` library: that library attaches to a whole ``PreTrainedModel``
(``adapters.init``) and rewrites its config, while the vendor's top is a *part* of a base model shared by many
tenants; a per-session module wrapped around each block does the same job in a few lines."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from splitpriv.parts.top import Top
from splitpriv.tuning.base import TUNING_METHODS, TunedTop, TuningConfig, head_modules, share_frozen_copy


@TUNING_METHODS.register("adapter")
@dataclass(frozen=True)
class Adapter(TuningConfig):
    bottleneck: int = field(default=64, metadata={"help": "width of each bottleneck adapter"})

    method = "adapter"

    def apply(self, top: Top) -> TunedTop:
        return apply_adapter(top, self)

    def validate(self) -> None:
        if isinstance(self.bottleneck, bool) or not isinstance(self.bottleneck, int) or self.bottleneck < 1:
            raise ValueError(f"adapter bottleneck must be a positive integer, got {self.bottleneck!r}")


class Bottleneck(nn.Module):
    def __init__(self, d: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(d, bottleneck)
        self.up = nn.Linear(bottleneck, d)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(nn.functional.gelu(self.down(h)))


class AdaptedBlock(nn.Module):
    """A block followed by its adapter; returns the block's output tuple with the hidden states adapted."""

    def __init__(self, block: nn.Module, d: int, bottleneck: int):
        super().__init__()
        self.block = block
        self.adapter = Bottleneck(d, bottleneck)

    def forward(self, *args, **kwargs):
        out = self.block(*args, **kwargs)
        if isinstance(out, tuple):  # encoder blocks return tuples; Llama/Qwen2 blocks return the hidden state
            return (self.adapter(out[0]), *out[1:])
        return self.adapter(out)


def apply_adapter(top: Top, config: Adapter) -> TunedTop:
    heads = tuple(f"{h}." for h in head_modules(top))
    module = share_frozen_copy(top, clone={n for n, _ in top.named_parameters() if n.startswith(heads)})
    for name, p in module.named_parameters():
        p.requires_grad_(name.startswith(heads))
    for path in top.block_paths:
        parent, leaf = path.rsplit(".", 1)
        block = module.get_submodule(path)
        module.get_submodule(parent).add_module(leaf, AdaptedBlock(block, top.d_model, config.bottleneck))
    return TunedTop(module, config)
