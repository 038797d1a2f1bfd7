import pytest
import torch
from safetensors import safe_open
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from splitpriv import split_model
from splitpriv.models import family_of, num_blocks
from splitpriv.parts import BOTTOM_WEIGHTS, load_bottom, save_bottom


def _tiny(family: str, attn: str):
    torch.manual_seed(0)
    if family == "bert":
        cfg = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                         intermediate_size=64, num_labels=3, max_position_embeddings=64)
        cls = BertForSequenceClassification
    elif family == "roberta":
        cfg = RobertaConfig(vocab_size=120, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                            intermediate_size=64, num_labels=3, max_position_embeddings=70, pad_token_id=1)
        cls = RobertaForSequenceClassification
    else:
        cfg = DistilBertConfig(vocab_size=120, dim=32, n_layers=3, n_heads=4, hidden_dim=64, num_labels=3,
                               max_position_embeddings=64)
        cls = DistilBertForSequenceClassification
    cfg._attn_implementation = attn
    return cls(cfg).eval()


def _padded_batch(vocab: int = 120, pad: int = 0):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (4, 11), generator=g)
    mask = torch.ones_like(ids)
    for row, length in enumerate([11, 7, 3, 9]):
        mask[row, length:] = 0
        ids[row, length:] = pad
    return ids, mask


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_split_is_exact_for_every_k(family, attn):
    model = _tiny(family, attn)
    ids, mask = _padded_batch(pad=model.config.pad_token_id or 0)
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask).logits
        for k in range(num_blocks(model) + 1):
            parts = split_model(model, n_bottom_layers=k)
            hidden = parts.bottom(input_ids=ids, attention_mask=mask)
            assert hidden.shape == (4, 11, 32)
            logits = parts.top(hidden, attention_mask=mask)
            torch.testing.assert_close(logits, reference, atol=0, rtol=0)


def test_real_minilm_split_exact_and_disclosure(minilm):
    model, tokenizer = minilm
    batch = tokenizer(["a gorgeous , witty , seductive movie .", "dull"], padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = model(**batch).logits
    shares = []
    for k in range(num_blocks(model) + 1):
        parts = split_model(model, n_bottom_layers=k)
        with torch.no_grad():
            logits = parts.top(parts.bottom(**batch), attention_mask=batch["attention_mask"])
        torch.testing.assert_close(logits, reference, atol=0, rtol=0)
        report = parts.disclosure()
        assert report.total_parameters == sum(p.numel() for p in model.parameters())
        assert all(not n.startswith("classifier") and ".pooler." not in n for n in report.shipped_names)
        assert sum(f"encoder.layer.{i}." in " ".join(report.shipped_names) for i in range(6)) == k
        shares.append(report.shipped_share)
    assert shares == sorted(shares) and 0.5 < shares[0] < shares[-1] < 1.0


def test_parts_share_weights_with_the_model(minilm):
    model, _ = minilm
    parts = split_model(model, 2)
    assert parts.top.get_submodule("bert.encoder.layer.2") is model.bert.encoder.layer[2]
    assert parts.bottom.get_submodule("bert.embeddings") is model.bert.embeddings


def test_bottom_roundtrip_without_top_weights(minilm, tmp_path):
    model, tokenizer = minilm
    parts = split_model(model, 2)
    save_bottom(parts.bottom, tmp_path, tokenizer)
    with safe_open(str(tmp_path / BOTTOM_WEIGHTS), "pt") as f:
        names = set(f.keys())
    assert names == set(parts.disclosure().shipped_names)
    assert not any(n.startswith(("bert.encoder.layer.2", "bert.encoder.layer.5", "bert.pooler", "classifier"))
                   for n in names)
    loaded = load_bottom(tmp_path)
    batch = tokenizer(["an odd , funny film"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch), parts.bottom(**batch), atol=0, rtol=0)
    assert family_of(model).model_type == loaded.family.model_type


@pytest.mark.parametrize("family", ["roberta", "distilbert"])
def test_bottom_roundtrip_other_families(family, tmp_path):
    model = _tiny(family, "eager")
    parts = split_model(model, 1)
    save_bottom(parts.bottom, tmp_path)
    ids, mask = _padded_batch(pad=model.config.pad_token_id or 0)
    with torch.no_grad():
        torch.testing.assert_close(load_bottom(tmp_path)(input_ids=ids, attention_mask=mask),
                                   parts.bottom(input_ids=ids, attention_mask=mask), atol=0, rtol=0)


@pytest.mark.parametrize("k", [-1, 7, 2.0, True])
def test_k_out_of_range(minilm, k):
    with pytest.raises(ValueError, match="n_bottom_layers"):
        split_model(minilm[0], k)


def test_mask_shape_mismatch_is_named(minilm):
    parts = split_model(minilm[0], 1)
    with pytest.raises(ValueError, match="attention_mask shape"):
        parts.top(torch.zeros(2, 5, 384), attention_mask=torch.ones(2, 6))
    with pytest.raises(ValueError, match="width 100"):
        parts.top(torch.zeros(2, 5, 100), attention_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"\[batch, tokens, d\]"):
        parts.top(torch.zeros(5, 384))


def test_load_bottom_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="bottom.json"):
        load_bottom(tmp_path)
