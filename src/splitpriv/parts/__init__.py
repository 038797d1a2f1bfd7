"""The split's pieces: the customer's bottom, the vendor's top, the customer-held head (classification) or tail
(causal LM), a learned privatizer's two halves, what the split discloses, and :func:`split_model` that cuts a model
into them. Building blocks: torch and transformers only, no parties, no I/O beyond the parts' own files."""

from splitpriv.parts.base import BOTTOM_CONFIG, BOTTOM_WEIGHTS, HEAD_WEIGHTS, TAIL_WEIGHTS, PartCache, check_mask
from splitpriv.parts.bottom import Bottom, load_bottom, save_bottom
from splitpriv.parts.disclosure import Disclosure
from splitpriv.parts.head import Head, load_head
from splitpriv.parts.split import SplitModel, check_split_fits, split_model
from splitpriv.parts.tail import Tail, load_tail, save_tail
from splitpriv.parts.top import Top

__all__ = ["BOTTOM_CONFIG", "BOTTOM_WEIGHTS", "HEAD_WEIGHTS", "TAIL_WEIGHTS", "Bottom", "Disclosure", "Head",
           "PartCache", "SplitModel", "Tail", "Top", "check_mask", "check_split_fits", "load_bottom", "load_head",
           "load_tail", "save_bottom", "save_tail", "split_model"]
