from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from splitpriv import load_model
from splitpriv.models import FAMILIES, Family, default_model_path, family_of


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
    from transformers import ElectraConfig, ElectraForSequenceClassification

    model = ElectraForSequenceClassification(ElectraConfig(num_hidden_layers=1, hidden_size=16, embedding_size=16,
                                                           num_attention_heads=2, intermediate_size=16))
    with pytest.raises(ValueError, match="unsupported model family 'electra'"):
        family_of(model)
    assert family_of(BertForSequenceClassification(BertConfig(num_hidden_layers=1, hidden_size=16,
                                                               num_attention_heads=2, intermediate_size=16)))


def test_families_register_themselves_one_file_each():
    import splitpriv.models as models

    for name in ("bert", "roberta", "distilbert", "gpt2", "llama", "qwen2"):
        assert name in FAMILIES
        family = FAMILIES.get(name)
        assert isinstance(family, Family) and family.model_type == name
        assert Path(models.__file__).with_name(f"{name}.py").is_file()
    assert FAMILIES.get("bert").auto_class() is AutoModelForSequenceClassification
    assert not FAMILIES.get("bert").causal and FAMILIES.get("llama").causal


def test_a_new_family_is_one_registration(monkeypatch):
    from splitpriv.models import bert

    mine = Family(model_type="mine", embeddings="e", blocks="b", head=("h",), run_head=bert.run_head,
                  run_block=bert.run_block, embed=bert.embed, lora_targets=("q",))
    monkeypatch.setitem(FAMILIES._entries, "mine", mine)
    model = torch.nn.Module()
    model.config = type("Config", (), {"model_type": "mine"})()
    assert family_of(model) is mine
