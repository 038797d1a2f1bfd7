"""The causal LM's customer-side pieces: the tail (last ``j`` blocks + final norm + LM head), its file, and the
per-part key/value cache that incremental decoding keeps on each side of the split.

Threat model: the tail never leaves the customer once shipped; the next-token labels and the V-sized logits are
computed and used at home. What the vendor sees of a causal-LM step is the bottom's privatized hidden states going
up and, during training, the gradient of the loss w.r.t. its middle's output (d floats per token each way).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from splitpriv.models import CAUSAL_LM, family_of, num_blocks
from splitpriv.split import BOTTOM_CONFIG, TAIL_WEIGHTS, _advanced, _load_exact, _optional, _Part, _skeleton
from splitpriv.split import _unique_parameters, check_mask


class PartCache:
    """One part's key/value cache for incremental decoding, and how many tokens it has seen (a part may have no
    blocks, so the count is kept here rather than read from the cache)."""

    def __init__(self):
        from transformers import DynamicCache

        self.cache = DynamicCache()
        self.length = 0

    def advance(self, tokens: int) -> None:
        self.length += tokens



class Tail(_Part):
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
        paths = [*_optional(family.rotary), *self.block_paths, *_optional(family.final_norm), family.lm_head]
        super().__init__(model, paths, family, attn_implementation)
        self.n_layers = n_tail_layers
        self.offset = offset

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: PartCache | None = None) -> torch.Tensor:
        check_mask(hidden, attention_mask, self.d_model)
        inputs = self._block_inputs(hidden, attention_mask, cache=cache)
        hidden = _advanced(cache, self._run_blocks(self.block_paths, hidden, inputs))
        if self.family.final_norm is not None:
            hidden = self.get_submodule(self.family.final_norm)(hidden)
        return self.get_submodule(self.family.lm_head)(hidden)

    def saved_names(self) -> dict[str, str]:
        """Own parameter name -> its name in the full model."""
        return {name: _renumber(name, self.family.blocks, self.offset) for name in _unique_parameters(self)}


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
    state = {names[n]: p.detach().contiguous().cpu() for n, p in _unique_parameters(tail).items()}
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
    skeleton = _skeleton({**meta, "task": CAUSAL_LM}, meta_path, j)
    tail = Tail(skeleton, j, meta.get("attn_implementation", "eager"), offset=n - j)
    full = {v: k for k, v in tail.saved_names().items()}
    state = load_file(str(weights_path))
    _load_exact(tail, {full.get(name, name): value for name, value in state.items()}, weights_path)
    return tail.eval()


def collate_lm(examples, index: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``loss_mask`` (1 where a token is a prediction target)
    for the :class:`~splitpriv.data.instructions.LMExample` rows at ``index``."""
    rows = [examples[i] for i in index.tolist()]
    length = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    targets = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r.ids)] = torch.tensor(r.ids, dtype=torch.long)
        mask[i, : len(r.ids)] = 1
        targets[i, : len(r.ids)] = torch.tensor(r.targets, dtype=torch.long)
    return ids, mask, targets


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor, loss_mask: torch.Tensor,
                    reduction: str = "mean") -> torch.Tensor:
    """−(1/N) Σ log p(x_t | x_<t) over the N positions t ≥ 1 with ``loss_mask`` = 1 (``reduction="sum"``: the sum)."""
    weights = loss_mask[:, 1:].to(logits.dtype)
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    total = (nll * weights.flatten()).sum()
    return total if reduction == "sum" else total / weights.sum().clamp_min(1)


@torch.no_grad()
def perplexity(logits_of, examples, pad_id: int, batch_size: int = 128) -> dict:
    """exp of the mean next-token loss over the examples' target tokens; ``logits_of(ids, mask)`` -> [B, T, V]."""
    from splitpriv.batching import eval_batches

    total = count = 0.0
    for index in eval_batches(len(examples), batch_size):
        ids, mask, targets = collate_lm(examples, index, pad_id)
        total += float(next_token_loss(logits_of(ids, mask), ids, targets * mask, reduction="sum"))
        count += float((targets * mask)[:, 1:].sum())
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": float(torch.tensor(loss).exp())}


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> int:
    """Greedy at ``temperature`` 0; else a draw from softmax(logits / T) restricted to the smallest set of tokens
    whose probability reaches ``top_p`` (nucleus sampling)."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, -1)
    if top_p < 1:
        ordered, order = probs.sort(descending=True)
        keep = ordered.cumsum(-1) - ordered < top_p
        probs = torch.zeros_like(probs).scatter(-1, order[keep], ordered[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


def local_generate(parts, prompt_ids: list[int], max_new_tokens: int, stop_ids=(), **sampling) -> list[int]:
    """Decoding through all three parts in one process with their caches (the reference split generation
    reproduces; no wire, no noise)."""
    caches = [PartCache() for _ in range(3)]
    ids, out = torch.tensor([prompt_ids]), []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            hidden = parts.bottom(input_ids=ids, cache=caches[0])
            logits = parts.tail(parts.top(hidden, cache=caches[1]), cache=caches[2])[0, -1]
            token = sample_next(logits, **sampling)
            out.append(token)
            if token in stop_ids:
                break
            ids = torch.tensor([[token]])
    return out


def exact_match(generate, tokenizer, examples, max_new_tokens: int = 8) -> dict:
    """Share of examples whose greedy answer (special tokens dropped, stripped, case-folded) equals the response."""
    hits = [tokenizer.decode(generate(e.prompt_ids, max_new_tokens), skip_special_tokens=True).strip().lower()
            == e.response.strip().lower() for e in examples]
    return {"exact_match": sum(hits) / max(len(hits), 1), "n_scored": len(hits)}
