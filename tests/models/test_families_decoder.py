"""Decoder families (GPT-2, Llama, Qwen2) on tiny random configs: the split is exact for every k, with left and
right padding, in eager and sdpa attention; the family describes both tasks."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from splitpriv import split_model
from splitpriv.models import CAUSAL_LM, SEQUENCE_CLASSIFICATION, family_of, num_blocks
from splitpriv.parts import load_bottom, save_bottom

@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_split_is_exact_for_every_k(family, attn, side, tiny_decoder):
    model = tiny_decoder.model(family, attn)
    ids, mask = tiny_decoder.batch(side)
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask, position_ids=tiny_decoder.positions(mask)).logits
        for k in range(num_blocks(model) + 1):
            parts = split_model(model, n_bottom_layers=k)
            hidden = parts.bottom(input_ids=ids, attention_mask=mask)
            assert hidden.shape == (4, 9, 32)
            torch.testing.assert_close(parts.top(hidden, attention_mask=mask), reference, atol=0, rtol=0)


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_without_mask_the_split_equals_the_model(family, tiny_decoder):
    model = tiny_decoder.model(family, "sdpa")
    ids = torch.randint(1, 100, (1, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = model(input_ids=ids).logits
        parts = split_model(model, 1)
        torch.testing.assert_close(parts.top(parts.bottom(input_ids=ids)), reference, atol=0, rtol=0)


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_encode_is_the_base_models_last_hidden_state(family, tiny_decoder):
    model = tiny_decoder.model(family)
    ids, mask = tiny_decoder.batch("right")
    base = getattr(model, model.base_model_prefix)
    parts = split_model(model, 2)
    with torch.no_grad():
        reference = base(input_ids=ids, attention_mask=mask, position_ids=tiny_decoder.positions(mask)).last_hidden_state
        encoded = parts.top.encode(parts.bottom(input_ids=ids, attention_mask=mask), mask)
    torch.testing.assert_close(encoded, reference, atol=0, rtol=0)


def test_sliding_window_layers_get_their_own_mask(tiny_decoder):
    cfg = tiny_decoder.config("qwen2", "eager")
    cfg.use_sliding_window, cfg.sliding_window, cfg.max_window_layers = True, 3, 1
    cfg.layer_types = ["full_attention"] + ["sliding_attention"] * 2
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(cfg).eval()
    ids, mask = tiny_decoder.batch("right")
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask, position_ids=tiny_decoder.positions(mask)).logits
        for k in range(4):
            parts = split_model(model, k)
            logits = parts.top(parts.bottom(input_ids=ids, attention_mask=mask), attention_mask=mask)
            torch.testing.assert_close(logits, reference, atol=0, rtol=0)


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_bottom_roundtrip(family, tmp_path, tiny_decoder):
    parts = split_model(tiny_decoder.model(family), 2)
    save_bottom(parts.bottom, tmp_path)
    ids, mask = tiny_decoder.batch("left")
    loaded = load_bottom(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids, attention_mask=mask),
                                   parts.bottom(input_ids=ids, attention_mask=mask), atol=0, rtol=0)
    assert loaded.task == SEQUENCE_CLASSIFICATION


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_family_describes_the_causal_lm(family, tiny_decoder):
    model = tiny_decoder.model(family, task=CAUSAL_LM)
    described = family_of(model)
    assert described.task_of(model) == CAUSAL_LM
    assert described.auto_class(CAUSAL_LM) is AutoModelForCausalLM
    assert described.task_of(tiny_decoder.model(family)) == SEQUENCE_CLASSIFICATION
    ids, mask = tiny_decoder.batch("left")
    positions = tiny_decoder.positions(mask)
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


def test_unknown_task_names_the_tasks(tiny_decoder):
    with pytest.raises(ValueError, match="causal-lm"):
        family_of(tiny_decoder.model("llama")).auto_class("token-classification")
    with pytest.raises(ValueError, match=r"bert models support the tasks \['sequence-classification'\]"):
        from transformers import BertConfig, BertForSequenceClassification

        family_of(BertForSequenceClassification(BertConfig(num_hidden_layers=1, hidden_size=16,
                                                           num_attention_heads=2, intermediate_size=16))
                  ).auto_class(CAUSAL_LM)
