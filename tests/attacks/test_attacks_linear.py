"""The linear-map attack (ridge from what the vendor receives to the embedding rows) and the learned inverter that
starts from it, on the real SmolLM2-135M-Instruct and MiniLM with real SST-2 dev sentences.

The vendor's public text here is 200 WikiText-2 sentences plus 600 of SST-2's public test sentences (the defaults
are 2000 of each; fewer keep every test under a minute); the 20 dev sentences attacked are never among them.
"""

import math

import pytest
import torch

from splitpriv.attacks import LearnedInversion
from splitpriv.attacks.evaluation import Evaluation
from splitpriv.attacks.floor import attacker_public_texts
from splitpriv.attacks.linear_map import LinearMapInversion
from splitpriv.attacks.runner import run_attack

N_DEV = 20


@pytest.fixture(scope="module")
def smollm2_k2(smollm2, data_dir):
    """SmolLM2 at k = 2 without noise: the evaluation, the attacker's public texts and the fitted linear attack."""
    ev = Evaluation(model=smollm2, n_bottom_layers=2, limit=N_DEV, progress=False)
    texts = attacker_public_texts(ev, 200, 600, seed=ev.attacker_seed)
    linear = LinearMapInversion(seed=ev.attacker_seed).fit(ev.knowledge(), texts)
    return ev, texts, linear


def test_linear_map_inverts_smollm2_at_k2(smollm2_k2):
    # Without noise two blocks of a 576-wide residual stream keep each token's identity nearly linearly (the outside
    # check: 96.8% with a ridge map on 200 dev sentences), so a ridge map fitted on public pairs must recover at
    # least 90%; the former learned inverter recovered 25.6% here.
    ev, texts, linear = smollm2_k2
    assert not set(ev.data.texts) & set(texts)
    result = ev.score("linear", linear)
    assert result.metrics["token_recovery"] >= 0.90, result.metrics
    assert result.metrics["content_recovery"] >= 0.80, result.metrics
    assert linear.first_position_map  # the attention sink (no BOS: position 0 is the first word) has its own map


def test_learned_starts_from_the_linear_map_and_keeps_its_strength(smollm2_k2):
    # The learned inverter's start is the ridge map into its candidate space (the embedding rows, for a rotary
    # decoder), and its correction's output weights start at zero: before training it decodes like the linear
    # attack. A short training may move single tokens either way, so it must stay within 3 standard errors of the
    # paired per-token difference (each token counts -1, 0 or +1; SE <= sqrt(tokens where either misses) / n).
    ev, texts, linear = smollm2_k2
    learned = LearnedInversion(epochs=1, arch="mlp", seed=ev.attacker_seed, progress=False).fit(ev.knowledge(), texts)
    assert learned.skip_used == "linear"
    lin, lrn = ev.score("linear", linear).metrics, ev.score("learned", learned).metrics
    n = lin["n_tokens"]
    either_misses = n * ((1 - lin["token_recovery"]) + (1 - lrn["token_recovery"]))
    assert lrn["token_recovery"] >= lin["token_recovery"] - 3 * math.sqrt(either_misses) / n, (lin, lrn)
    assert learned.history and all(math.isfinite(x) for x in learned.history)


def test_linear_runs_through_a_privatizer_on_minilm(minilm, data_dir):
    # A bottleneck privatizer folded into the bottom: the vendor receives r = 8 numbers per token, not d = 384. The
    # map is fitted from that width to the 384-wide embedding rows, through the bottom as shipped; a random
    # 8-dimensional projection keeps some token identity, so the attack must beat always guessing the most
    # frequent token.
    out = run_attack("linear", model=minilm, n_bottom_layers=0, privatizer="bottleneck:r=8", limit=N_DEV,
                     progress=False, n_public=200, n_in_domain=600)
    assert out["privatized"] and out["output_width"] == 8
    assert out["n_pairs"] > 1000 and out["window"] == [1, 1]
    assert out["token_recovery"] > out["chance_recovery"], out


def test_linear_map_is_exact_on_a_known_linear_bottom():
    # Sanity of the closed form: targets that are an exact linear function of the features (plus per-position
    # offsets) are reproduced, and the held-out error (σ²) is ~0.
    from splitpriv.attacks.ridge import fit_positional_ridge

    g = torch.Generator().manual_seed(0)
    x, a = torch.randn(3000, 12, generator=g), torch.randn(12, 5, generator=g)
    pos = torch.randint(0, 6, (3000,), generator=g)
    y = x @ a + torch.arange(6).float()[pos, None]
    ridge, info = fit_positional_ridge(x, y, pos, torch.arange(3000) % 10 == 0, torch.zeros(4), 1, 1,
                                       grid=(1e-9,), kappa=0.0, min_rows=100)
    torch.testing.assert_close(ridge.rows(x, pos), y, atol=1e-3, rtol=1e-3)
    assert info["sigma2"] < 1e-6 and info["first_position_map"]
