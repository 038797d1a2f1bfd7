"""The set-level attack and the adaptive inverter's position prior, on the real MiniLM and real SST-2 slices.

Bounds come from what the attacks are: on clean k = 2 states a token inverter reads (nearly) every token, so the
words it names for a sentence are (nearly) the sentence's own, far above the m most frequent public words; and an
adaptive inverter whose posterior is multiplied by the floor's position prior, with the exponent chosen on held-out
public text (0 gives the floor itself), cannot fall below the floor by more than sampling error.
"""

import math

import pytest

from splitpriv.attacks import run_attack
from splitpriv.attacks.runner import skipped_specs, summary
from splitpriv.attacks.base import is_content_word

SMALL = dict(limit=32, progress=False, n_public=250, n_in_domain=250, n_unused_train=0,
             adaptive_epochs=1,
             adaptive_holdout=48)


def test_content_words_are_one_definition():
    assert [is_content_word(t) for t in ("film", "Ġfilm", "##ing", "the", "it's", "a1b", "ok", "dull")] == \
        [True, True, False, False, False, False, False, True]


def test_set_attack_reads_clean_states_far_above_its_floor(minilm, data_dir):
    """Clean k = 2: named words occur >= 80% of the time (the goal the issue sets for a set attack that counts),
    against a public-frequency guess below 20%."""
    r = run_attack("set", n_bottom_layers=2, model=minilm, **SMALL)
    assert r["set_recovery"] >= 0.80, r
    assert r["set_floor"] <= 0.20, r
    assert r["n_set_words"] > 100 and r["scorer"] in ("any", "bag", "mean")


def test_skipped_attacks_are_listed_with_their_reason():
    from splitpriv.attacks.registry import Setting

    skipped = skipped_specs(["all"], Setting(n_bottom_layers=2))
    assert {"nn", "map", "cti"} <= set(skipped) and "k = 2" in skipped["nn"] and "CTI" in skipped["cti"]
    assert "set" not in skipped and "adaptive" not in skipped


def test_summary_keeps_set_recovery_out_of_the_token_figure():
    results = {"floor": {"success": 0.08}, "adaptive": {"success": 0.1},
               "set": {"success": 0.3, "set_recovery": 0.3, "set_floor": 0.05}}
    out = summary(results)
    assert (out["set_recovery"], out["set_floor"], out["floor"]) == (0.3, 0.05, 0.08)
    assert "advantage_over_floor" not in results["set"] and results["adaptive"]["advantage_over_floor"] == \
        pytest.approx(0.02)


def test_adaptive_with_the_position_prior_is_not_below_the_floor(minilm, data_dir):
    """A bottleneck privatizer at k = 0 under heavy noise: the inverter learns little, so without the prior it may
    lose to the blind floor. With it, adaptive - floor >= -3 standard errors of the paired per-token difference
    (each token contributes -1, 0 or 1; SE = sqrt(disagreements) / n)."""
    kw = dict(SMALL, n_bottom_layers=0, mechanism="dchi", eta=2.0, privatizer="bottleneck:r=4,clip=1")
    adaptive = run_attack("adaptive", model=minilm, **kw)
    floor = run_attack("floor", model=minilm, **{k: v for k, v in kw.items() if k in ("limit", "progress",
                       "n_bottom_layers", "mechanism", "eta", "privatizer")})
    n = adaptive["n_tokens"]
    disagree = n * (adaptive["success"] + floor["success"])  # an upper bound on tokens where the two differ
    assert adaptive["success"] - floor["success"] >= -3 * math.sqrt(disagree) / n
    assert adaptive["prior_mix"] in (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
    assert adaptive["holdout_recovery_by_mix"]["0.0"] <= max(adaptive["holdout_recovery_by_mix"].values())


def test_prior_mix_zero_is_the_floor_exactly(minilm, data_dir):
    kw = dict(n_bottom_layers=0, mechanism="dchi", eta=1.0, limit=32, progress=False)
    adaptive = run_attack("adaptive", model=minilm, prior_mix=0.0, n_public=100, n_in_domain=100, n_unused_train=0,
                          adaptive_epochs=1, **kw)
    assert adaptive["success"] == pytest.approx(run_attack("floor", model=minilm, **kw)["success"])
