"""Learned privatizers in the three-part causal-LM split (splitpriv.parts.privatizer) on tiny random GPT-2, Llama and
Qwen2 configs: the split equals the explicit composition customer half → vendor half → middle → tail exactly, with
left and right padding; positions follow the mask (a padded row equals its sentence alone, and halves that invert
each other give the unsplit model); cached decoding privatizes token by token; the bottom file and a saved
privatizer folder round-trip and are refused for another split; a privatizer the model cannot serve is one clear
error before anything is fitted."""

import pytest
import torch

from splitpriv import split_model
from splitpriv.models import CAUSAL_LM
from splitpriv.parts import PartCache, check_split_fits, load_bottom, save_bottom
from splitpriv.parts.privatizer import load_privatizer, save_privatizer
from splitpriv.privacy.bottleneck import Bottleneck, BottleneckConfig

FAMILIES = ["gpt2", "llama", "qwen2"]
SPECS = ["bottleneck:r=8", "prototype:K=16,r=8", "pac:budget=2,r=8"]


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("family", FAMILIES)
def test_split_with_a_privatizer_is_the_explicit_composition(family, spec, side, tiny_decoder):
    model = tiny_decoder.model(family, task=CAUSAL_LM)
    ids, mask = tiny_decoder.batch(side)
    parts, plain = split_model(model, 1, 1, privatizer=spec), split_model(model, 1, 1)
    with torch.no_grad():
        u = parts.bottom(input_ids=ids, attention_mask=mask)
        assert u.shape == (4, 9, 8) and parts.top.input_width == 8
        half, up = parts.bottom.privatizer, parts.top.privatizer_up
        explicit_u = half(plain.bottom(input_ids=ids, attention_mask=mask), mask)
        explicit = plain.tail(plain.top(up(explicit_u), mask), mask)
        torch.testing.assert_close(u, explicit_u, atol=0, rtol=0)
        torch.testing.assert_close(parts.tail(parts.top(u, mask), mask), explicit, atol=0, rtol=0)
        torch.testing.assert_close(parts(ids, mask), explicit, atol=0, rtol=0)
        # positions come from the mask: each padded row's real tokens equal the sentence run alone
        for row in range(4):
            real = mask[row].bool()
            alone = parts(ids[row:row + 1, real], torch.ones(1, int(real.sum()), dtype=torch.long))
            torch.testing.assert_close(explicit[row, real], alone[0], atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="width 32, this model expects d = 8"):
            parts.top(torch.zeros(4, 9, 32), mask)


@pytest.mark.parametrize("family", FAMILIES)
def test_halves_that_invert_each_other_give_the_unsplit_model(family, tiny_decoder):
    """PAC over all d directions whitens and the vendor half undoes it: the rotary/positional tables the middle and
    tail rebuild from the mask must be the unsplit model's for the logits to agree."""
    model = tiny_decoder.model(family, task=CAUSAL_LM)
    ids, mask = tiny_decoder.batch("left")
    parts = split_model(model, 1, 1, privatizer="pac:budget=2")
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask, position_ids=tiny_decoder.positions(mask)).logits
        torch.testing.assert_close(parts(ids, mask)[mask.bool()], reference[mask.bool()], atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("family", FAMILIES)
def test_cached_decoding_privatizes_token_by_token(family, spec, tiny_decoder):
    model = tiny_decoder.model(family, task=CAUSAL_LM)
    parts = split_model(model, 1, 1, privatizer=spec)
    ids = torch.randint(1, 100, (1, 8), generator=torch.Generator().manual_seed(3))
    caches = [PartCache() for _ in range(3)]
    with torch.no_grad():
        sent = [parts.bottom(input_ids=s, cache=caches[0]) for s in [ids[:, :5], *ids[:, 5:].split(1, dim=1)]]
        assert [tuple(u.shape) for u in sent] == [(1, 5, 8), (1, 1, 8), (1, 1, 8), (1, 1, 8)]
        logits = [parts.tail(parts.top(u, cache=caches[1]), cache=caches[2]) for u in sent]
        torch.testing.assert_close(torch.cat(logits, 1), parts(ids, torch.ones_like(ids)), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.cat(sent, 1), parts.bottom(input_ids=ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_bottom_file_and_saved_privatizer_round_trip_and_refuse_another_split(family, tiny_decoder, tmp_path):
    model = tiny_decoder.model(family, task=CAUSAL_LM)
    ids, mask = tiny_decoder.batch("right")
    parts = split_model(model, 1, 1, privatizer="bottleneck:r=8")
    with torch.no_grad():
        parts.bottom.privatizer.proj.weight.mul_(1.5)  # "trained": the saved halves, not a fresh fit, must come back
        parts.top.privatizer_up.bias.add_(0.25)
    save_bottom(parts.bottom, tmp_path / "bottom")
    with torch.no_grad():
        torch.testing.assert_close(load_bottom(tmp_path / "bottom")(input_ids=ids, attention_mask=mask),
                                   parts.bottom(input_ids=ids, attention_mask=mask), atol=0, rtol=0)
    save_privatizer(parts, tmp_path / "model")
    again = load_privatizer(split_model(model, 1, 2, privatizer="bottleneck:r=8"), tmp_path / "model")  # j is free
    assert torch.equal(again.bottom.privatizer.proj.weight, parts.bottom.privatizer.proj.weight)
    assert torch.equal(again.top.privatizer_up.bias, parts.top.privatizer_up.bias)
    for other, word in [(split_model(model, 0, 1, privatizer="bottleneck:r=8"), "n_bottom_layers"),
                        (split_model(model, 1, 1, privatizer="bottleneck:r=4"), "privatizer"),
                        (split_model(tiny_decoder.model(family), 1, privatizer="bottleneck:r=8"), "task")]:
        with pytest.raises(ValueError, match=f"trained for another split.*{word}"):
            load_privatizer(other, tmp_path / "model")


class _Mixing(Bottleneck):
    """A privatizer whose customer half would read the whole sentence (never registered)."""

    name = "mixing"
    token_wise = False


@pytest.mark.parametrize("family", FAMILIES)
def test_a_privatizer_the_model_cannot_serve_is_one_clear_error(family, tiny_decoder):
    model = tiny_decoder.model(family, task=CAUSAL_LM)
    for privatizer, words in [("bottleneck:r=64", "above the model width d=32"), ("pac:budget=1,r=33", "above"),
                              ("prototype:K=128", "K=128 is above the 64 tokens"),
                              (_Mixing(BottleneckConfig(r=4)), "mixes a sentence's tokens")]:
        with pytest.raises(ValueError, match=words):
            split_model(model, 1, 1, privatizer=privatizer)
        with pytest.raises(ValueError, match=words):
            check_split_fits(model.config, 1, 1, task=CAUSAL_LM, privatizer=privatizer)
    split_model(tiny_decoder.model(family), 1, privatizer=_Mixing(BottleneckConfig(r=4)))  # a classifier may mix
    with pytest.raises(ValueError, match="leave the vendor no block"):
        check_split_fits(model.config, 2, 1, task=CAUSAL_LM, vendor_blocks=1)
    with pytest.raises(ValueError, match=r"k \+ j at most 3"):
        check_split_fits(model.config, 2, 2, task=CAUSAL_LM)
