"""Decoder families (GPT-2, Llama, Qwen2) on tiny random configs: the split is exact for every k, with left and
right padding, in eager and sdpa attention; the family describes both tasks."""

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GPT2Config,
    LlamaConfig,
    Qwen2Config,
)

from splitpriv import split_model
from splitpriv.models import CAUSAL_LM, SEQUENCE_CLASSIFICATION, family_of, num_blocks
from splitpriv.parts import load_bottom, save_bottom

PAD = 0


def _config(family: str, attn: str):
    if family == "gpt2":
        cfg = GPT2Config(n_embd=32, n_layer=3, n_head=4, vocab_size=100, n_positions=64, pad_token_id=PAD)
    elif family == "llama":
        cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=100, pad_token_id=PAD, max_position_embeddings=64)
    else:
        cfg = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=100, pad_token_id=PAD, max_position_embeddings=64)
    cfg.num_labels = 2
    cfg._attn_implementation = attn
    # the split runs its blocks without a KV cache; so must the reference: with one, GPT-2's eager attention
    # multiplies by the cache's concatenated (contiguous) keys instead of a strided view, and on some CPUs (AMD EPYC
    # seen here) that GEMM kernel rounds differently (~1e-8), the unsplit model disagreeing with itself
    cfg.use_cache = False
    return cfg


def _tiny(family: str, attn: str = "eager", task: str = SEQUENCE_CLASSIFICATION):
    torch.manual_seed(0)
    auto = AutoModelForCausalLM if task == CAUSAL_LM else AutoModelForSequenceClassification
    return auto.from_config(_config(family, attn)).eval()


def _batch(side: str):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (4, 9), generator=g)
    mask = torch.ones_like(ids)
    for row, length in enumerate([9, 5, 2, 7]):
        pad = slice(0, 9 - length) if side == "left" else slice(length, 9)
        mask[row, pad] = 0
        ids[row, pad] = PAD
    return ids, mask


def _positions(mask):
    return (mask.cumsum(-1) - 1).clamp_min(0)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_split_is_exact_for_every_k(family, attn, side):
    model = _tiny(family, attn)
    ids, mask = _batch(side)
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask)).logits
        for k in range(num_blocks(model) + 1):
            parts = split_model(model, n_bottom_layers=k)
            hidden = parts.bottom(input_ids=ids, attention_mask=mask)
            assert hidden.shape == (4, 9, 32)
            torch.testing.assert_close(parts.top(hidden, attention_mask=mask), reference, atol=0, rtol=0)


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_without_mask_the_split_equals_the_model(family):
    model = _tiny(family, "sdpa")
    ids = torch.randint(1, 100, (1, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = model(input_ids=ids).logits
        parts = split_model(model, 1)
        torch.testing.assert_close(parts.top(parts.bottom(input_ids=ids)), reference, atol=0, rtol=0)


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_encode_is_the_base_models_last_hidden_state(family):
    model = _tiny(family)
    ids, mask = _batch("right")
    base = getattr(model, model.base_model_prefix)
    parts = split_model(model, 2)
    with torch.no_grad():
        reference = base(input_ids=ids, attention_mask=mask, position_ids=_positions(mask)).last_hidden_state
        encoded = parts.top.encode(parts.bottom(input_ids=ids, attention_mask=mask), mask)
    torch.testing.assert_close(encoded, reference, atol=0, rtol=0)


def test_sliding_window_layers_get_their_own_mask():
    cfg = _config("qwen2", "eager")
    cfg.use_sliding_window, cfg.sliding_window, cfg.max_window_layers = True, 3, 1
    cfg.layer_types = ["full_attention"] + ["sliding_attention"] * 2
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(cfg).eval()
    ids, mask = _batch("right")
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask)).logits
        for k in range(4):
            parts = split_model(model, k)
            logits = parts.top(parts.bottom(input_ids=ids, attention_mask=mask), attention_mask=mask)
            torch.testing.assert_close(logits, reference, atol=0, rtol=0)


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_bottom_roundtrip(family, tmp_path):
    parts = split_model(_tiny(family), 2)
    save_bottom(parts.bottom, tmp_path)
    ids, mask = _batch("left")
    loaded = load_bottom(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids, attention_mask=mask),
                                   parts.bottom(input_ids=ids, attention_mask=mask), atol=0, rtol=0)
    assert loaded.task == SEQUENCE_CLASSIFICATION


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_family_describes_the_causal_lm(family):
    model = _tiny(family, task=CAUSAL_LM)
    described = family_of(model)
    assert described.task_of(model) == CAUSAL_LM
    assert described.auto_class(CAUSAL_LM) is AutoModelForCausalLM
    assert described.task_of(_tiny(family)) == SEQUENCE_CLASSIFICATION
    ids, mask = _batch("left")
    positions = _positions(mask)
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        whole = _Whole(model, described)
        hidden = described.embed(whole, ids, None, None, positions)
        inputs = described.block_inputs(whole, model.config, hidden, mask, positions)
        for block in model.get_submodule(described.blocks):
            hidden = described.run_block(block, hidden, inputs)
        logits = model.get_submodule(described.lm_head)(model.get_submodule(described.final_norm)(hidden))
    torch.testing.assert_close(logits, reference, atol=0, rtol=0)


class _Whole(torch.nn.Module):
    """The whole model seen as a part (the family's callables read ``part.family``)."""

    def __init__(self, model, family):
        super().__init__()
        self.model, self.family = model, family

    def get_submodule(self, target):
        return self.model.get_submodule(target)


def test_unknown_task_names_the_tasks():
    with pytest.raises(ValueError, match="causal-lm"):
        family_of(_tiny("llama")).auto_class("token-classification")
    with pytest.raises(ValueError, match=r"bert models support the tasks \['sequence-classification'\]"):
        from transformers import BertConfig, BertForSequenceClassification

        family_of(BertForSequenceClassification(BertConfig(num_hidden_layers=1, hidden_size=16,
                                                           num_attention_heads=2, intermediate_size=16))
                  ).auto_class(CAUSAL_LM)
