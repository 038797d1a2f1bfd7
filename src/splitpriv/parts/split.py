"""The exact split of a model into a customer-held bottom, a vendor-held top and (causal LM) a customer-held tail.

``bottom`` = embeddings + the first ``k`` blocks; ``top`` = the remaining blocks + the final norm (decoders) + the
classification head, so that ``top(bottom(x))`` is the unsplit model's forward pass. A causal LM is cut in three:
``top`` is the vendor's middle (blocks ``k .. n - j``, hidden states in and out) and ``tail`` the last ``j`` blocks,
the final norm and the LM head, back on the customer's side, so ``tail(top(bottom(x)))`` is the unsplit logits and
neither the next-token labels nor V-sized logits ever reach the vendor. Where the parts live and how they
run is the model's :class:`~splitpriv.models.Family`; only hidden states and the 2-D mask cross the split, and each
part rebuilds positions, block masks and rotary tables from the mask itself. Both parts keep every submodule under
its name in the original model, so their state dicts are slices of the original one: the bottom file, the disclosure
report and a ``peft`` adapter trained on the top all speak in the model's own weight names (an adapter trained on the
top loads onto the full model with ``PeftModel.from_pretrained``).

Threat model of the split alone: the customer receives the bottom's weights (the vendor discloses that share of its
model, reported by :meth:`SplitModel.disclosure`); the vendor receives the bottom's outputs. Without a privacy
mechanism those outputs are close to invertible (see ``splitpriv.attacks``); the split only sets where noise is added.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from splitpriv.models import CAUSAL_LM, Family, family_of, num_blocks
from splitpriv.parts.base import unique_parameters
from splitpriv.parts.bottom import Bottom
from splitpriv.parts.disclosure import Disclosure
from splitpriv.parts.privatizer import attach_privatizer, check_privatizer_fits
from splitpriv.parts.tail import Tail
from splitpriv.parts.top import Top


@dataclass
class SplitModel:
    """A model cut after ``n_bottom_layers`` blocks (and, causal LM, before its last ``n_tail_layers``);
    ``top(bottom(x))`` (``tail(top(bottom(x)))``) equals the unsplit forward pass."""

    bottom: Bottom
    top: Top
    n_bottom_layers: int
    n_layers: int
    config: object  # the Hugging Face config of the full model
    tail: Tail | None = None
    n_tail_layers: int = 0

    @property
    def family(self) -> Family:
        return self.bottom.family

    @property
    def task(self) -> str:
        return self.top.task

    def disclosure(self) -> Disclosure:
        """Shipped = bottom ∪ tail (a weight tied between them, as SmolLM2's embeddings and LM head, counts once)."""
        shipped: dict[int, tuple[str, nn.Parameter]] = {}
        for part in (self.bottom, self.tail):
            for name, p in (unique_parameters(part).items() if part is not None else ()):
                shipped.setdefault(id(p), (name, p))
        kept = [p for p in unique_parameters(self.top).values() if id(p) not in shipped]
        return Disclosure(
            model_type=self.family.model_type,
            n_bottom_layers=self.n_bottom_layers,
            n_layers=self.n_layers,
            shipped_parameters=sum(p.numel() for _, p in shipped.values()),
            kept_parameters=sum(p.numel() for p in kept),
            shipped_names=sorted(name for name, _ in shipped.values()),
            n_tail_layers=self.n_tail_layers,
        )

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        hidden = self.bottom(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        if self.tail is not None:
            return self.tail(self.top(hidden, attention_mask=attention_mask), attention_mask=attention_mask)
        return self.top(hidden, attention_mask=attention_mask)

    __call__ = forward


def split_model(model: nn.Module, n_bottom_layers: int, n_tail_layers: int | None = None, *,
                privatizer=None, privatizer_seed: int = 0) -> SplitModel:
    """Cut ``model`` after ``n_bottom_layers`` blocks (0 = embeddings only, up to the number of blocks); a causal LM
    also before its last ``n_tail_layers`` blocks (default 0: the tail is the final norm and LM head), with
    ``k + j`` at most the number of blocks.

    The parts share the model's parameter tensors (no copy): training the top trains the model. ``privatizer``:
    :func:`~splitpriv.parts.privatizer.attach_privatizer` (a classifier's bottom and top, or a causal LM's bottom and
    middle).
    """
    family = family_of(model)
    n_layers = num_blocks(model)
    causal = family.task_of(model) == CAUSAL_LM
    j = _check_range(family.model_type, n_layers, n_bottom_layers, n_tail_layers, causal)
    attn = getattr(model.config, "_attn_implementation", None) or "eager"
    parts = SplitModel(
        bottom=Bottom(model, n_bottom_layers, attn),
        top=Top(model, n_bottom_layers, attn, j),
        n_bottom_layers=n_bottom_layers,
        n_layers=n_layers,
        config=model.config,
        tail=Tail(model, j, attn) if causal else None,
        n_tail_layers=j,
    )
    if privatizer is not None:
        attach_privatizer(parts, privatizer, seed=privatizer_seed)
    return parts


def check_split_fits(model_config, n_bottom_layers: int, n_tail_layers: int | None = None, *, task: str,
                     privatizer=None, vendor_blocks: int = 0) -> None:
    """What :func:`split_model` would refuse, from a model's config alone (no weights, nothing fitted): the depths
    against its blocks, and a privatizer it cannot serve (:func:`~splitpriv.parts.privatizer.check_privatizer_fits`).
    ``vendor_blocks``: blocks the top must keep (a causal LM's vendor needs a middle of at least one block)."""
    n_layers = int(model_config.num_hidden_layers)
    _check_range(model_config.model_type, n_layers, n_bottom_layers, n_tail_layers, task == CAUSAL_LM)
    j = n_tail_layers or 0
    if n_layers - n_bottom_layers - j < vendor_blocks:
        raise ValueError(f"n_bottom_layers={n_bottom_layers} + n_tail_layers={j} leave the vendor no block of this "
                         f"model's {n_layers}: k + j must be below {n_layers}")
    if privatizer is not None:
        check_privatizer_fits(privatizer, int(model_config.hidden_size), int(model_config.vocab_size), task)


def _check_range(model_type: str, n_layers: int, n_bottom_layers, n_tail_layers, causal: bool) -> int:
    """``n_tail_layers`` as an int once ``k`` and ``j`` fit a model of ``n_layers`` blocks (one ``ValueError``
    naming the problem otherwise)."""
    if isinstance(n_bottom_layers, bool) or not isinstance(n_bottom_layers, int):
        raise ValueError(f"n_bottom_layers must be an integer, got {n_bottom_layers!r}")
    j = n_tail_layers or 0
    if isinstance(j, bool) or not isinstance(j, int) or j < 0:
        raise ValueError(f"n_tail_layers must be an integer >= 0, got {n_tail_layers!r}")
    if j and not causal:
        raise ValueError(f"n_tail_layers={j} needs a causal LM; this {model_type} model is a "
                         "sequence classifier (its head stays with the top)")
    if not 0 <= n_bottom_layers <= n_layers - j:
        tail = f" + n_tail_layers={j}" if j else ""
        raise ValueError(
            f"n_bottom_layers={n_bottom_layers}{tail} is out of range: this {model_type} model has "
            f"{n_layers} blocks, so k must be in 0..{n_layers - j}" + (f" (k + j at most {n_layers})" if j else "")
        )
    return j
