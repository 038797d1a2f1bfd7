"""The three-part causal-LM split (splitpriv.parts) on tiny random GPT-2, Llama and Qwen2 configs:
``tail(top(bottom(x)))`` is the unsplit model for every k and j with left and right padding, the disclosure counts
the tail (a tied weight once), the tail survives its file, and key/value-cached decoding equals the uncached pass."""

import pytest
import torch

from splitpriv import split_model
from splitpriv.parts import PartCache, load_tail, save_tail
from splitpriv.tasks.causal_lm import local_generate
from splitpriv.models import CAUSAL_LM, num_blocks
from splitpriv.parts import TAIL_WEIGHTS, save_bottom

FAMILIES = ["gpt2", "llama", "qwen2"]


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", FAMILIES)
def test_three_part_split_is_exact_for_every_k_and_j(family, attn, side, tiny_decoder):
    model = tiny_decoder.model(family, attn, CAUSAL_LM)
    ids, mask = tiny_decoder.batch(side)
    n = num_blocks(model)
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask, position_ids=tiny_decoder.positions(mask)).logits
        for k in range(n + 1):
            for j in range(n + 1 - k):
                parts = split_model(model, n_bottom_layers=k, n_tail_layers=j)
                hidden = parts.bottom(input_ids=ids, attention_mask=mask)
                middle = parts.top(hidden, attention_mask=mask)
                assert middle.shape == hidden.shape == (4, 9, 32)
                logits = parts.tail(middle, attention_mask=mask)
                torch.testing.assert_close(logits, reference, atol=0, rtol=0)
                torch.testing.assert_close(parts(ids, mask), reference, atol=0, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_disclosure_counts_the_tail_and_tied_weights_once(family, tiny_decoder):
    model = tiny_decoder.model(family, task=CAUSAL_LM)
    total = sum(p.numel() for p in model.parameters())  # parameters() already counts a tied weight once
    for k, j in [(0, 0), (1, 1), (2, 1), (0, 3)]:
        report = split_model(model, k, j).disclosure()
        assert report.total_parameters == total
        assert report.n_tail_layers == j
        heads = ("lm_head.", "transformer.wte.", "model.embed_tokens.")
        assert any(name.startswith(heads) for name in report.shipped_names)
    everything = split_model(model, 0, 3).disclosure()
    assert everything.kept_parameters == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_tail_file_roundtrip(family, tmp_path, tiny_decoder):
    parts = split_model(tiny_decoder.model(family, task=CAUSAL_LM), 1, 2)
    save_bottom(parts.bottom, tmp_path)
    save_tail(parts.tail, tmp_path / TAIL_WEIGHTS)
    loaded = load_tail(tmp_path)
    assert loaded.n_layers == 2 and loaded.offset == 1
    ids, mask = tiny_decoder.batch("left")
    with torch.no_grad():
        middle = parts.top(parts.bottom(input_ids=ids, attention_mask=mask), attention_mask=mask)
        torch.testing.assert_close(loaded(middle, mask), parts.tail(middle, mask), atol=0, rtol=0)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", FAMILIES)
def test_cached_decoding_equals_the_uncached_pass(family, attn, tiny_decoder):
    model = tiny_decoder.model(family, attn, CAUSAL_LM)
    ids = torch.randint(1, 100, (1, 8), generator=torch.Generator().manual_seed(3))
    parts = split_model(model, 1, 1)
    caches = [PartCache() for _ in range(3)]
    with torch.no_grad():
        reference = model(input_ids=ids).logits
        steps = [ids[:, :5], *ids[:, 5:].split(1, dim=1)]
        logits = [parts.tail(parts.top(parts.bottom(input_ids=s, cache=caches[0]), cache=caches[1]), cache=caches[2])
                  for s in steps]
    torch.testing.assert_close(torch.cat(logits, 1), reference, atol=1e-5, rtol=1e-5)
    assert [c.length for c in caches] == [8, 8, 8]


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_split_generation_equals_transformers_generate(family, tiny_decoder):
    model = tiny_decoder.model(family, "sdpa", CAUSAL_LM)
    prompt = [5, 17, 42, 8]
    with torch.no_grad():
        reference = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 4, dtype=torch.long),
                                   max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    for k, j in [(0, 0), (1, 1), (2, 1)]:
        assert local_generate(split_model(model, k, j), prompt, 6) == reference[0, 4:].tolist()


def test_cached_step_takes_one_token(tiny_decoder):
    parts = split_model(tiny_decoder.model("llama", task=CAUSAL_LM), 1, 1)
    cache = PartCache()
    with torch.no_grad():
        parts.bottom(input_ids=torch.tensor([[3, 4, 5]]), cache=cache)
        with pytest.raises(ValueError, match="one new, unpadded token"):
            parts.bottom(input_ids=torch.tensor([[6, 7]]), cache=cache)


def test_bad_splits_name_the_problem(tiny_decoder):
    causal = tiny_decoder.model("llama", task=CAUSAL_LM)
    with pytest.raises(ValueError, match=r"k \+ j at most 3"):
        split_model(causal, 2, 2)
    with pytest.raises(ValueError, match="n_tail_layers must be an integer >= 0"):
        split_model(causal, 1, -1)
    with pytest.raises(ValueError, match="needs a causal LM"):
        split_model(tiny_decoder.model("llama"), 1, 1)
    with pytest.raises(ValueError, match="no classification head"):
        split_model(causal, 1).top.classify(torch.zeros(1, 2, 32))
