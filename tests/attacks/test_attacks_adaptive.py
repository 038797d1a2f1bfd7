"""The prior-only floor, the adaptive inverter and the metrics every attack reports, on the real MiniLM.

Bounds follow from what each attack is: the floor is a count, checked by hand; without noise at k = 0 and k = 1 a
token's image is (nearly) its own, so a generic inverter started at the images reads almost every token back.
"""

import json

import pytest
import torch

from splitpriv.attacks import (
    AdaptiveInversion,
    AttackerKnowledge,
    PriorFloor,
    observe,
    recovery_metrics,
    run_attack,
)
from splitpriv.attacks.floor import guess_index
from splitpriv.candidates import fixed_positions
from splitpriv.privacy import Identity
from splitpriv.parts import split_model

PUBLIC = ["the film is good .", "a film , not good .", "the plot is a mess .", "the cast is the best ."]


def _knowledge(minilm, k=0, public=PUBLIC):
    model, tok = minilm
    return AttackerKnowledge(split_model(model, k).bottom, tok, Identity(), list(public))


def test_floor_is_the_hand_count_of_the_public_text(minilm):
    tok = minilm[1]
    kn = _knowledge(minilm)
    enc = tok(["one two three four five .", "one two ."], padding="longest", return_tensors="pt")
    mask = enc["attention_mask"]
    start = PriorFloor(anchor="start").fit(kn).invert(None, mask)
    # position-wise counts of PUBLIC (first / second / ... word to guess): the, film, is, good|a|the|best, ...
    expect_first = tok.convert_tokens_to_ids("the")  # 3 of 4 sentences start with "the"
    assert start[0, 1] == expect_first and start[1, 1] == expect_first
    assert start[0, 2] == tok.convert_tokens_to_ids("film")  # film 2x, plot 1x, cast 1x
    assert start[0, 3] == tok.convert_tokens_to_ids("is")  # is 3x
    fixed, ids = fixed_positions(tok, mask)
    assert (start[fixed] == ids[fixed]).all()
    both = PriorFloor(anchor="both").fit(kn).invert(None, mask)
    assert both[0, 6] == tok.convert_tokens_to_ids(".") == both[1, 3]  # every public sentence ends with "."
    s, e = guess_index(mask, fixed)
    assert s[0, 1] == 0 and e[0, 6] == 0 and e[1, 1] == 2
    hits = recovery_metrics(start, enc["input_ids"], mask, tok)
    guessed = start[mask.bool() & ~fixed]
    truth = enc["input_ids"][mask.bool() & ~fixed]
    assert hits["token_recovery"] == pytest.approx(float((guessed == truth).float().mean()))


@pytest.mark.parametrize("k", [0, 1])
def test_adaptive_reads_noiseless_tokens_back(minilm, data_dir, k):
    from splitpriv.data import load_dataset

    tok = minilm[1]

    texts = load_dataset("sst2", "dev", limit=8, seed=0).texts
    kn = _knowledge(minilm, k, load_dataset("sst2", "test", limit=200, seed=0).texts)
    z, mask, ids = observe(kn.bottom, tok, Identity(), texts, generator=torch.Generator().manual_seed(0))
    attack = AdaptiveInversion(epochs=1, layers=1, width=128, progress=False).fit(kn)
    m = recovery_metrics(attack.invert(z, mask), ids, mask, tok, None, attack.rank(z, mask, 5))
    assert m["token_recovery"] >= 0.95
    assert m["top5_token_recovery"] >= m["token_recovery"]


def test_all_reports_floor_advantage_content_and_top5(minilm, data_dir):
    out = run_attack("all", n_bottom_layers=1, mechanism="none", limit=4, model=minilm, progress=False, steps=2,
                     n_public=30, n_in_domain=20, learned_epochs=1, epochs=2, adaptive_epochs=1, adaptive_layers=1,
                     adaptive_width=64, public_splits=["valid"])
    json.dumps(out, allow_nan=False)
    assert {"floor", "adaptive", "learned"} <= set(out["results"])
    assert out["floor"] == out["results"]["floor"]["success"]
    tokens = {n: r for n, r in out["results"].items() if n != "set"}  # set recovery is not a token figure
    for r in tokens.values():
        assert r["advantage_over_floor"] == pytest.approx(r["success"] - out["floor"])
    assert 0.0 <= out["content_privacy"] <= 1.0 and out["strongest_content_attack"] in out["results"]
    assert "top5_token_recovery" in out["results"]["adaptive"] and "top5_recovery" in out
    assert out["success"] == max(r["success"] for r in tokens.values())
    assert out["set_recovery"] == out["results"]["set"]["set_recovery"]


def test_option_typo_names_the_attack():
    with pytest.raises(ValueError, match=r"attack 'adaptive': unknown option\(s\) \['adaptive_epoch'\]"):
        run_attack("adaptive", adaptive_epoch=1)
    with pytest.raises(ValueError, match=r"attack 'floor': unknown option\(s\) \['anchor'\]"):
        run_attack("floor", anchor="start")


def test_nearest_neighbour_against_a_privatizers_image(minilm):
    # k = 0, bottleneck r = 32 without noise: the received vector IS the privatizer's image of its token, so the
    # nearest image is the token unless two tokens project to the same point of R^32.
    from splitpriv.attacks import NearestNeighbour
    from splitpriv.attacks.image_space import PrivatizedSpace

    model, tok = minilm
    bottom = split_model(model, 0, privatizer="bottleneck:r=32").bottom
    z, mask, ids = observe(bottom, tok, Identity(), ["a gripping , funny film .", "dull and long ."],
                           generator=torch.Generator().manual_seed(0))
    assert z.shape[-1] == 32
    kn = AttackerKnowledge(bottom, tok, Identity(), [])
    kn._space = PrivatizedSpace(bottom, tok)
    assert recovery_metrics(NearestNeighbour().fit(kn).invert(z, mask), ids, mask, tok)["token_recovery"] >= 0.95
