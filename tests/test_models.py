import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from splitpriv import load_model
from splitpriv.models import default_model_path, family_of


def test_default_model_is_packaged_minilm(minilm):
    model, tokenizer = minilm
    assert default_model_path().is_dir()
    assert model.config.model_type == "bert"
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    assert model.num_labels == 2
    assert tokenizer("hello")["input_ids"][0] == tokenizer.cls_token_id


def test_local_folder_and_num_labels():
    model, _ = load_model(str(default_model_path()), num_labels=3)
    assert model.classifier.out_features == 3


def test_same_seed_same_head():
    a, _ = load_model(seed=3)
    b, _ = load_model(seed=3)
    torch.testing.assert_close(a.classifier.weight, b.classifier.weight, atol=0, rtol=0)
    state = torch.get_rng_state()
    load_model(seed=4)
    assert torch.equal(state, torch.get_rng_state()), "loading must not disturb the global RNG"


def test_unknown_model_name_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="unknown model 'no-such-org/no-such-model'"):
        load_model("no-such-org/no-such-model")
    with pytest.raises(ValueError, match="does not exist"):
        load_model("/nonexistent/folder/model")


def test_bad_num_labels():
    with pytest.raises(ValueError, match="num_labels"):
        load_model(num_labels=1)


def test_unsupported_family():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    model = GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="unsupported model family 'gpt2'"):
        family_of(model)
    assert family_of(BertForSequenceClassification(BertConfig(num_hidden_layers=1, hidden_size=16,
                                                               num_attention_heads=2, intermediate_size=16)))
