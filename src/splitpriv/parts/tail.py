"""A causal LM's customer-held end: the tail (last ``j`` blocks + final norm + LM head) and its file
``tail.safetensors``.

Threat model: the tail never leaves the customer once shipped; the next-token labels and the V-sized logits are
computed and used at home. What the vendor sees of a causal-LM step is the bottom's privatized hidden states going
up (d floats per token, r through a privatizer) and, during training, the gradient of the loss w.r.t. its middle's
output (d floats per token). That gradient is linear in the one-hot next tokens through the tail, whose initial
weights the vendor holds: it recovers the response tokens from it (:mod:`splitpriv.attacks.response`), which is why
the split exposes :meth:`Tail.stream`, :meth:`Tail.normalize` and :attr:`Tail.head` separately.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from splitpriv.models import CAUSAL_LM, family_of, num_blocks
from splitpriv.parts.base import (
    BOTTOM_CONFIG,
    TAIL_WEIGHTS,
    Part,
    PartCache,
    advance,
    check_mask,
    load_exact,
    present,
    skeleton,
    unique_parameters,
)


class Tail(Part):
    """A causal LM's last ``j`` blocks + final norm + LM head, on the customer's side:
    ``tail(hidden, attention_mask) -> [B, T, V]`` logits.

    ``offset`` renumbers its blocks: a tail rebuilt alone (:func:`load_tail`) holds blocks ``0 .. j - 1`` of a
    ``j``-block skeleton that stand for ``n - j .. n - 1`` of the full model (files keep the full model's names).
    """

    def __init__(self, model: nn.Module, n_tail_layers: int, attn_implementation: str, offset: int = 0):
        family = family_of(model)
        if family.lm_head is None or family.task_of(model) != CAUSAL_LM:
            raise ValueError("a tail needs a causal LM (the model has no LM head)")
        n = num_blocks(model)
        self.block_paths = family.block_paths(n)[n - n_tail_layers:]
        paths = [*present(family.rotary), *self.block_paths, *present(family.final_norm), family.lm_head]
        super().__init__(model, paths, family, attn_implementation)
        self.n_layers = n_tail_layers
        self.offset = offset

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: PartCache | None = None) -> torch.Tensor:
        return self.head(self.normalize(self.stream(hidden, attention_mask, cache)))

    def stream(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
               cache: PartCache | None = None) -> torch.Tensor:
        """The residual stream after the tail's ``j`` blocks, before the final norm (``hidden`` itself at j = 0)."""
        check_mask(hidden, attention_mask, self.d_model)
        inputs = self._block_inputs(hidden, attention_mask, cache=cache)
        return advance(cache, self._run_blocks(self.block_paths, hidden, inputs))

    @property
    def final_norm(self) -> nn.Module | None:
        return None if self.family.final_norm is None else self.get_submodule(self.family.final_norm)

    @property
    def head(self) -> nn.Module:
        """The LM head (logits = head(normalize(stream(hidden))))."""
        return self.get_submodule(self.family.lm_head)

    def normalize(self, hidden: torch.Tensor) -> torch.Tensor:
        """The final norm (identity for a family without one)."""
        return hidden if self.final_norm is None else self.final_norm(hidden)

    def saved_names(self) -> dict[str, str]:
        """Own parameter name -> its name in the full model."""
        return {name: _renumber(name, self.family.blocks, self.offset) for name in unique_parameters(self)}


def _renumber(name: str, blocks: str, offset: int) -> str:
    prefix = f"{blocks}."
    if not offset or not name.startswith(prefix):
        return name
    index, rest = name[len(prefix):].split(".", 1)
    return f"{prefix}{int(index) + offset}.{rest}"


def save_tail(tail: Tail, path: str | Path) -> Path:
    """The tail's weights under their names in the full model (``tail.safetensors``)."""
    from safetensors.torch import save_file

    names = tail.saved_names()
    state = {names[n]: p.detach().contiguous().cpu() for n, p in unique_parameters(tail).items()}
    save_file(state, str(path), metadata={"format": "splitpriv-tail", "n_tail_layers": str(tail.n_layers)})
    return Path(path)


def load_tail(directory: str | Path) -> Tail:
    """The tail shipped beside a bottom (``tail.safetensors``, whose header gives ``n_tail_layers``; ``bottom.json``
    the model's config)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    directory = Path(directory)
    weights_path, meta_path = directory / TAIL_WEIGHTS, directory / BOTTOM_CONFIG
    if not weights_path.is_file():
        raise FileNotFoundError(f"no tail in {directory}: {weights_path.name} is missing")
    meta = json.loads(meta_path.read_text())
    with safe_open(str(weights_path), "pt") as f:
        j = int((f.metadata() or {}).get("n_tail_layers", 0))
    hf = meta["hf_config"]
    n = int(hf.get("num_hidden_layers", hf.get("n_layer", 0)))
    model = skeleton({**meta, "task": CAUSAL_LM}, meta_path, j)
    tail = Tail(model, j, meta.get("attn_implementation", "eager"), offset=n - j)
    full = {v: k for k, v in tail.saved_names().items()}
    state = load_file(str(weights_path))
    load_exact(tail, {full.get(name, name): value for name, value in state.items()}, weights_path)
    return tail.eval()
