"""Qwen2 (and Qwen2.5): the Llama layout of :func:`splitpriv.models.decoder.rotary_decoder`; sliding-window layers,
when the config enables them, get their own causal mask."""

from splitpriv.models.decoder import rotary_decoder
from splitpriv.models.family import FAMILIES

FAMILY = FAMILIES.register("qwen2")(rotary_decoder("qwen2"))
