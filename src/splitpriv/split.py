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

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from splitpriv.disclosure import Disclosure
from splitpriv.models import CAUSAL_LM, FAMILIES, SEQUENCE_CLASSIFICATION, BlockInputs, Family, family_of, num_blocks
from splitpriv.split_privatizer import attach_privatizer, customer_half

BOTTOM_WEIGHTS = "bottom.safetensors"
BOTTOM_CONFIG = "bottom.json"
HEAD_WEIGHTS = "head.safetensors"
TAIL_WEIGHTS = "tail.safetensors"
FORMAT_VERSION = 1


def _graft(root: nn.Module, model: nn.Module, path: str) -> None:
    """Register ``model``'s submodule at ``path`` under the same dotted path in ``root`` (shared, not copied)."""
    *parents, leaf = path.split(".")
    node = root
    for name in parents:
        if name not in node._modules:
            node.add_module(name, nn.Module())
        node = node._modules[name]
    node.add_module(leaf, model.get_submodule(path))


def check_mask(hidden: torch.Tensor, attention_mask: torch.Tensor | None, d_model: int | None = None) -> None:
    """Reject representations and masks whose shapes disagree, naming the shapes."""
    if hidden.dim() != 3:
        raise ValueError(f"token representations must be [batch, tokens, d], got shape {tuple(hidden.shape)}")
    if d_model is not None and hidden.shape[-1] != d_model:
        raise ValueError(f"token representations have width {hidden.shape[-1]}, this model expects d = {d_model}")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} does not match representations "
            f"[batch, tokens] = {tuple(hidden.shape[:2])}"
        )


class _Part(nn.Module):
    """Submodules of one model, under their original names, plus what is needed to run them."""

    def __init__(self, model: nn.Module, paths: list[str], family: Family, attn_implementation: str):
        super().__init__()
        for path in paths:
            _graft(self, model, path)
        self.family = family
        self.model_config = model.config
        self.attn_implementation = attn_implementation
        self.d_model = int(getattr(model.config, "hidden_size", 0) or getattr(model.config, "dim"))

    def _run_blocks(self, paths: list[str], hidden: torch.Tensor, inputs: BlockInputs) -> torch.Tensor:
        for path in paths:
            hidden = self.family.run_block(self.get_submodule(path), hidden, inputs)
        return hidden

    def _block_inputs(self, hidden, attention_mask, position_ids=None, cache=None) -> BlockInputs:
        past = cache.length if cache is not None else 0
        return self.family.block_inputs(self, self.model_config, hidden, attention_mask, position_ids,
                                        cache=None if cache is None else cache.cache, past_length=past)


def _optional(*paths: str | None) -> list[str]:
    return [p for p in paths if p is not None]


class Bottom(_Part):
    """Embeddings + the first ``k`` blocks: ``bottom(input_ids, attention_mask) -> [B, T, d]`` token representations."""

    def __init__(self, model: nn.Module, n_layers: int, attn_implementation: str):
        family = family_of(model)
        self.block_paths = family.block_paths(n_layers)
        paths = [family.embeddings, *family.embedding_parts, *_optional(family.rotary), *self.block_paths]
        super().__init__(model, paths, family, attn_implementation)
        self.n_layers = n_layers
        self.task = family.task_of(model)
        self.hf_config = model.config.to_dict()
        self.privatizer = None  # a learned privatizer's customer half: the bottom then outputs u [B, T, r]

    def embed(
        self,
        input_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embedding-layer output; ``inputs_embeds`` replaces the word-embedding lookup (soft tokens).

        Families with positions from the mask number the tokens ``0..T-1`` when ``position_ids`` is not given.
        """
        if position_ids is None:
            position_ids = self._positions(input_ids, inputs_embeds, None)
        token_type_ids = token_type_ids if self.family.uses_token_type_ids else None
        return self.family.embed(self, input_ids, inputs_embeds, token_type_ids, position_ids)

    def _positions(self, input_ids, inputs_embeds, attention_mask) -> torch.Tensor | None:
        reference = input_ids if input_ids is not None else inputs_embeds
        return self.family.position_ids(attention_mask, reference.shape[1], reference.device)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache=None,
    ) -> torch.Tensor:
        if input_ids is None and inputs_embeds is None:
            raise ValueError("bottom needs input_ids or inputs_embeds")
        positions = self._positions(input_ids, inputs_embeds, attention_mask)
        if cache is not None and cache.length and positions is not None:
            positions = positions + cache.length
        hidden = self.embed(input_ids, token_type_ids, inputs_embeds, positions)
        check_mask(hidden, attention_mask)
        inputs = self._block_inputs(hidden, attention_mask, positions, cache)
        hidden = _advanced(cache, self._run_blocks(self.block_paths, hidden, inputs))
        return hidden if self.privatizer is None else self.privatizer(hidden, attention_mask)


def _advanced(cache, hidden: torch.Tensor) -> torch.Tensor:
    if cache is not None:
        cache.advance(hidden.shape[1])
    return hidden


class Top(_Part):
    """The remaining blocks + final norm + head: ``top(hidden, attention_mask) -> [B, num_labels]`` logits.

    ``encode`` stops after the last block and the final norm (the vendor's output when the customer holds the head)
    and ``classify`` applies the head alone (decoders pool at the last real token of ``attention_mask``). A causal
    LM's top is the middle: blocks ``k .. n - j`` alone, ``top(hidden, attention_mask) -> [B, T, d]``.
    """

    def __init__(self, model: nn.Module, n_bottom_layers: int, attn_implementation: str, n_tail_layers: int = 0):
        family = family_of(model)
        self.task = family.task_of(model)
        n = num_blocks(model)
        self.block_paths = family.block_paths(n)[n_bottom_layers:n - n_tail_layers]
        ends = [*_optional(family.final_norm), *family.head] if self.task == SEQUENCE_CLASSIFICATION else []
        super().__init__(model, [*_optional(family.rotary), *self.block_paths, *ends], family, attn_implementation)
        self.num_labels = int(model.config.num_labels) if self.task == SEQUENCE_CLASSIFICATION else None
        self.privatizer_up = None  # a learned privatizer's vendor half r -> d, trained like the head

    @property
    def input_width(self) -> int:
        return self.d_model if self.privatizer_up is None else self.privatizer_up.in_features

    def encode(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
               cache=None, block_inputs: BlockInputs | None = None) -> torch.Tensor:
        """``block_inputs`` replaces the ones built from ``attention_mask`` (a packed batch's block-diagonal mask)."""
        check_mask(hidden, attention_mask, self.input_width)
        hidden = hidden if self.privatizer_up is None else self.privatizer_up(hidden)
        inputs = self._block_inputs(hidden, attention_mask, cache=cache) if block_inputs is None else block_inputs
        hidden = _advanced(cache, self._run_blocks(self.block_paths, hidden, inputs))
        if self.family.final_norm is not None and self.task == SEQUENCE_CLASSIFICATION:
            hidden = self.get_submodule(self.family.final_norm)(hidden)
        return hidden

    def classify(self, last_hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.task != SEQUENCE_CLASSIFICATION:
            raise ValueError("a causal-LM top has no classification head: it returns hidden states for the tail")
        return self.family.run_head(self, last_hidden, attention_mask)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache=None) -> torch.Tensor:
        if self.task == CAUSAL_LM:
            return self.encode(hidden, attention_mask, cache)
        return self.classify(self.encode(hidden, attention_mask), attention_mask)


class Head(_Part):
    """The classification head alone, for a customer that keeps it: ``head(last_hidden, mask) -> logits``."""

    def __init__(self, model: nn.Module, attn_implementation: str = "eager"):
        family = family_of(model)
        super().__init__(model, list(family.head), family, attn_implementation)

    def forward(self, last_hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.family.run_head(self, last_hidden, attention_mask)


def _unique_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    seen: set[int] = set()
    out = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if id(p) not in seen:
            seen.add(id(p))
            out[name] = p
    return out


@dataclass
class SplitModel:
    """A model cut after ``n_bottom_layers`` blocks (and, causal LM, before its last ``n_tail_layers``);
    ``top(bottom(x))`` (``tail(top(bottom(x)))``) equals the unsplit forward pass."""

    bottom: Bottom
    top: Top
    n_bottom_layers: int
    n_layers: int
    config: object  # the Hugging Face config of the full model
    tail: nn.Module | None = None  # splitpriv.causal.Tail
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
            for name, p in (_unique_parameters(part).items() if part is not None else ()):
                shipped.setdefault(id(p), (name, p))
        kept = [p for p in _unique_parameters(self.top).values() if id(p) not in shipped]
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
    :func:`~splitpriv.split_privatizer.attach_privatizer`.
    """
    family = family_of(model)
    n_layers = num_blocks(model)
    causal = family.task_of(model) == CAUSAL_LM
    if isinstance(n_bottom_layers, bool) or not isinstance(n_bottom_layers, int):
        raise ValueError(f"n_bottom_layers must be an integer, got {n_bottom_layers!r}")
    j = n_tail_layers or 0
    if isinstance(j, bool) or not isinstance(j, int) or j < 0:
        raise ValueError(f"n_tail_layers must be an integer >= 0, got {n_tail_layers!r}")
    if j and not causal:
        raise ValueError(f"n_tail_layers={j} needs a causal LM; this {family.model_type} model is a "
                         "sequence classifier (its head stays with the top)")
    if not 0 <= n_bottom_layers <= n_layers - j:
        tail = f" + n_tail_layers={j}" if j else ""
        raise ValueError(
            f"n_bottom_layers={n_bottom_layers}{tail} is out of range: this {family.model_type} model has "
            f"{n_layers} blocks, so k must be in 0..{n_layers - j}" + (f" (k + j at most {n_layers})" if j else "")
        )
    attn = getattr(model.config, "_attn_implementation", None) or "eager"
    parts = SplitModel(
        bottom=Bottom(model, n_bottom_layers, attn),
        top=Top(model, n_bottom_layers, attn, j),
        n_bottom_layers=n_bottom_layers,
        n_layers=n_layers,
        config=model.config,
        tail=_tail(model, j, attn) if causal else None,
        n_tail_layers=j,
    )
    if privatizer is not None:
        attach_privatizer(parts, privatizer, seed=privatizer_seed)
    return parts


def _tail(model: nn.Module, n_tail_layers: int, attn: str):
    from splitpriv.causal import Tail

    return Tail(model, n_tail_layers, attn)


def save_bottom(bottom: Bottom, directory: str | Path, tokenizer=None, extra: dict | None = None) -> Path:
    """Write the bottom as ``bottom.safetensors`` + ``bottom.json`` (and the tokenizer files if given).

    The file holds exactly the bottom's weights, under their names in the full model; nothing of the top.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: p.detach().contiguous().cpu() for name, p in _unique_parameters(bottom).items()}
    save_file(state, str(directory / BOTTOM_WEIGHTS), metadata={"format": "splitpriv-bottom"})
    meta = {
        "format_version": FORMAT_VERSION,
        "model_type": bottom.family.model_type,
        "n_bottom_layers": bottom.n_layers,
        "task": bottom.task,
        "attn_implementation": bottom.attn_implementation,
        "hf_config": bottom.hf_config,
        **({"privatizer": bottom.privatizer.privatizer_config} if bottom.privatizer is not None else {}),
        **(extra or {}),
    }
    (directory / BOTTOM_CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    return directory


def load_bottom(directory: str | Path) -> Bottom:
    """Rebuild a bottom from :func:`save_bottom` output alone (the machine never has the top's weights)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta_path, weights_path = directory / BOTTOM_CONFIG, directory / BOTTOM_WEIGHTS
    for path in (meta_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"not a saved bottom: {path} is missing")
    meta = json.loads(meta_path.read_text())
    k = int(meta["n_bottom_layers"])
    bottom = Bottom(_skeleton(meta, meta_path, k), k, meta.get("attn_implementation", "eager"))
    bottom.hf_config = meta["hf_config"]
    if meta.get("privatizer") is not None:
        bottom.privatizer = customer_half(meta["privatizer"], bottom.d_model)
    _load_exact(bottom, load_file(str(weights_path)), weights_path)
    bottom.eval()
    return bottom


def load_head(directory: str | Path) -> Head:
    """The head shipped beside a bottom (``head.safetensors``) when the customer holds it."""
    from safetensors.torch import load_file

    directory = Path(directory)
    weights_path = directory / HEAD_WEIGHTS
    if not weights_path.is_file():
        raise FileNotFoundError(f"no head in {directory}: {weights_path.name} is missing")
    meta = json.loads((directory / BOTTOM_CONFIG).read_text())
    head = Head(_skeleton(meta, directory / BOTTOM_CONFIG, 0))
    _load_exact(head, load_file(str(weights_path)), weights_path)
    return head


def _skeleton(meta: dict, meta_path: Path, n_layers: int) -> nn.Module:
    """A randomly initialised model with ``n_layers`` blocks, whose relevant weights the caller overwrites."""
    from transformers import AutoConfig

    if meta.get("model_type") not in FAMILIES:
        raise ValueError(f"{meta_path}: unsupported model_type {meta.get('model_type')!r}")
    family = FAMILIES.get(meta["model_type"])
    hf = dict(meta["hf_config"])
    config = AutoConfig.for_model(hf.pop("model_type", meta["model_type"]), **hf)
    config.num_hidden_layers = n_layers
    config._attn_implementation = meta.get("attn_implementation", "eager")
    return family.auto_class(meta.get("task", SEQUENCE_CLASSIFICATION)).from_config(config).eval()


def _load_exact(part: nn.Module, state: dict, path: Path) -> None:
    own = _unique_parameters(part)
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{path} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    part.load_state_dict(state, strict=False)
