"""Parameter-efficient tuning of the vendor's top: one module per method, each a config dataclass registered in
:data:`TUNING_METHODS` (a new method is one new file here).

Every method returns a :class:`TunedTop` built on a copy of the top that *shares* the frozen base weights, so one
base model in memory serves any number of sessions; the classification head is trained by every method.
"""

from __future__ import annotations

from splitpriv.parts.top import Top
from splitpriv.tuning.adapter import Adapter
from splitpriv.tuning.base import TUNING_METHODS, TunedTop, TuningConfig, share_frozen_copy
from splitpriv.tuning.bitfit import BitFit
from splitpriv.tuning.full import Full
from splitpriv.tuning.lora import LoRA


def tuning_config(method: str | dict | TuningConfig, **params) -> TuningConfig:
    """``tuning_config("lora", r=8)`` or ``tuning_config({"method": "lora", "r": 8})``, validated."""
    if isinstance(method, TuningConfig):
        config = method
    else:
        if isinstance(method, dict):
            params = {**{k: v for k, v in method.items() if k != "method"}, **params}
            method = method.get("method")
        cls = TUNING_METHODS.get(method)
        try:
            config = cls(**params)
        except TypeError as exc:
            raise ValueError(f"bad parameters for tuning method {method!r}: {exc}") from exc
    config.validate()
    return config


def apply_tuning(top: Top, config: TuningConfig | str | dict) -> TunedTop:
    config = tuning_config(config)
    return config.apply(top)


__all__ = ["Adapter", "BitFit", "Full", "LoRA", "TUNING_METHODS", "TunedTop", "TuningConfig", "apply_tuning",
           "share_frozen_copy", "tuning_config"]
