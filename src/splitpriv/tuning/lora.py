"""LoRA on the vendor's top through ``peft`` (Hu et al. 2021): W + (α/r)·B·A on the family's attention projections
of the top's blocks only; the head is trained in full (``modules_to_save``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from splitpriv.parts.top import Top
from splitpriv.tuning.base import TUNING_METHODS, TunedTop, TuningConfig, head_modules, share_frozen_copy


@TUNING_METHODS.register("lora")
@dataclass(frozen=True)
class LoRA(TuningConfig):
    r: int = field(default=8, metadata={"help": "LoRA rank"})
    alpha: float = field(default=16.0, metadata={"help": "LoRA scaling numerator: the update is (alpha / r)·B·A"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA branch"})
    target_modules: tuple[str, ...] | None = field(default=None, metadata={
        "help": "linear layers to adapt (default: the family's attention query and value projections)"})

    method = "lora"

    def apply(self, top: Top) -> TunedTop:
        return apply_lora(top, self)

    def __post_init__(self):
        if isinstance(self.target_modules, list):  # JSON has no tuples
            object.__setattr__(self, "target_modules", tuple(self.target_modules))

    def validate(self) -> None:
        import math

        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"LoRA rank r must be a positive integer, got {self.r!r}")
        for name in ("alpha", "dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
                raise ValueError(f"LoRA {name} must be a finite number, got {value!r}")
        if not 0 < self.alpha <= 1e4:
            raise ValueError(f"LoRA alpha must be in (0, 1e4], got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        targets = self.target_modules
        if targets is not None and (not isinstance(targets, tuple) or not targets
                                    or not all(isinstance(t, str) and t for t in targets)):
            raise ValueError(f"LoRA target_modules must be a non-empty list of module names, got {targets!r}")


def apply_lora(top: Top, config: LoRA) -> TunedTop:
    from peft import LoraConfig, get_peft_model

    layer_ids = [int(p.rsplit(".", 1)[1]) for p in top.block_paths]
    heads = head_modules(top)
    if not layer_ids:  # k = all blocks: the top is the head alone, trained in full
        prefixes = tuple(f"{h}." for h in heads)
        module = share_frozen_copy(top, clone={n for n, _ in top.named_parameters() if n.startswith(prefixes)})
        for name, p in module.named_parameters():
            p.requires_grad_(name.startswith(prefixes))
        return TunedTop(module, config)
    module = share_frozen_copy(top)
    peft_config = LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules or top.family.lora_targets),
        layers_to_transform=layer_ids,
        layers_pattern=top.family.blocks.rsplit(".", 1)[1],
        modules_to_save=[h.rsplit(".", 1)[-1] for h in heads],
    )
    peft_model = get_peft_model(module, peft_config)
    return TunedTop(module, config, peft_model=peft_model)
