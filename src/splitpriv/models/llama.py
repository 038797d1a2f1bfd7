"""Llama (and SmolLM2): the Llama layout of :func:`splitpriv.models.decoder.rotary_decoder`."""

from splitpriv.models.decoder import rotary_decoder
from splitpriv.models.family import FAMILIES

FAMILY = FAMILIES.register("llama")(rotary_decoder("llama"))
