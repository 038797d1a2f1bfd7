"""What every tuning method shares: a per-session copy of the top that shares the frozen base weights."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from splitpriv.registry import Registry
from splitpriv.parts.top import Top

TUNING_METHODS: "Registry[type[TuningConfig]]" = Registry("tuning method", "splitpriv.tuning")
TUNING_CONFIG = "tuning.json"
TRAINABLE_WEIGHTS = "trainable.safetensors"
PEFT_WEIGHTS = "adapter_model.safetensors"


def share_frozen_copy(module: nn.Module, clone: set[str] = frozenset()) -> nn.Module:
    """A structural copy of ``module`` whose parameters and buffers are the *same tensors*, except those named in
    ``clone``, which get private copies. Many tenants' tops then cost one base model plus their own deltas."""
    memo = {}
    for name, p in module.named_parameters():
        if name not in clone:
            memo[id(p)] = p
    for b in module.buffers():
        memo[id(b)] = b
    return copy.deepcopy(module, memo)


def share_equal_tensors(model: nn.Module, base: nn.Module) -> int:
    """Point every parameter and buffer of ``model`` that equals ``base``'s of the same name (same shape, dtype and
    values) at ``base``'s tensor, so that the copies are freed; returns how many were shared. Two loads of one
    checkpoint with different heads then hold the pretrained weights once (the vendor's bases per label count)."""
    own = {**dict(base.named_parameters()), **dict(base.named_buffers())}
    shared = 0
    for kind, items in (("param", list(model.named_parameters())), ("buffer", list(model.named_buffers()))):
        for name, tensor in items:
            other = own.get(name)
            if other is None or other.shape != tensor.shape or other.dtype != tensor.dtype:
                continue
            if other is tensor or not torch.equal(other, tensor):
                continue
            path, _, attr = name.rpartition(".")
            module = model.get_submodule(path) if path else model
            if kind == "param":
                setattr(module, attr, other)
            else:
                module._buffers[attr] = other
            shared += 1
    return shared


def head_modules(top: Top) -> list[str]:
    """The head's modules that carry weights, and a privatizer's up-projection (``privatizer_up``): every method
    trains them. A causal LM's middle has no head: its LM head is in the customer's tail."""
    lift = ["privatizer_up"] if getattr(top, "privatizer_up", None) is not None else []
    if top.num_labels is None:
        return lift
    return lift + [p for p in top.family.head if any(True for _ in top.get_submodule(p).parameters())]


@dataclass(frozen=True)
class TuningConfig:
    """Base of the method configs; ``method`` names the method on the wire and on disk. A method is one module of
    :mod:`splitpriv.tuning`: a config dataclass (fields with ``metadata={"help": ...}``) registered with
    ``@TUNING_METHODS.register(name)`` whose :meth:`apply` builds the session's :class:`TunedTop`."""

    method = "none"

    def apply(self, top: Top) -> "TunedTop":
        raise NotImplementedError(f"tuning method {self.method!r} does not implement apply()")

    def to_dict(self) -> dict:
        return {"method": self.method, **asdict(self)}

    def validate(self) -> None:
        pass


class TunedTop:
    """One session's top: ``module`` runs like :class:`~splitpriv.parts.Top`; only ``parameters()`` train."""

    def __init__(self, module: Top, config: TuningConfig, peft_model=None):
        self.module = module
        self.config = config
        self.peft_model = peft_model

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.module.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        own = dict(self.module.named_parameters())
        unknown = sorted(set(state) - {n for n, p in own.items() if p.requires_grad})
        if unknown:
            raise ValueError(f"checkpoint holds weights this session does not train: {unknown[:5]}")
        with torch.no_grad():
            for name, value in state.items():
                own[name].copy_(value)

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save(self, directory: str | Path) -> Path:
        """``peft`` format where the method is a peft method (LoRA); else safetensors of the trained weights."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.peft_model is not None:
            self.peft_model.save_pretrained(str(directory))
        else:
            state = {n: t.contiguous().cpu() for n, t in self.trainable_state().items()}
            save_file(state, str(directory / TRAINABLE_WEIGHTS))
        (directory / TUNING_CONFIG).write_text(json.dumps(self.config.to_dict(), indent=2))
        return directory

    def load(self, directory: str | Path) -> "TunedTop":
        """Load weights written by :meth:`save` into this top (built with the same method and config), in place.

        The saved ``tuning.json`` must match this top's config, and the file must hold every trainable weight
        and nothing else, so a restored session computes exactly what the saved one did."""
        from safetensors.torch import load_file

        directory = Path(directory)
        config_path = directory / TUNING_CONFIG
        if not config_path.is_file():
            raise FileNotFoundError(f"{directory} holds no {TUNING_CONFIG}: not a tuned top written by TunedTop.save")
        saved = json.loads(config_path.read_text())
        expected = json.loads(json.dumps(self.config.to_dict()))
        if saved != expected:
            raise ValueError(f"{config_path} was written for tuning {saved}, this top is tuned with {expected}")
        if self.peft_model is not None:
            from peft.utils import set_peft_model_state_dict

            state = load_file(str(directory / PEFT_WEIGHTS))
            result = set_peft_model_state_dict(self.peft_model, state)
            trainable = {n for n, p in self.peft_model.named_parameters() if p.requires_grad}
            missing = sorted(k for k in result.missing_keys if k in trainable)
            if missing or result.unexpected_keys:
                raise ValueError(
                    f"{directory / PEFT_WEIGHTS} does not match this top: missing {missing[:5]}, "
                    f"unexpected {list(result.unexpected_keys)[:5]}"
                )
        else:
            state = load_file(str(directory / TRAINABLE_WEIGHTS))
            missing = sorted(set(self.trainable_state()) - set(state))
            if missing:
                raise ValueError(f"{directory / TRAINABLE_WEIGHTS} lacks trained weights {missing[:5]}")
            self.load_trainable_state(state)
        return self
