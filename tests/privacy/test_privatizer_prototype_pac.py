"""The prototype quantiser and the PAC-calibrated Gaussian (splitpriv.privacy.prototype, .pac) on the real MiniLM:
bad specs, the bottom file round trip, the maths each one claims, a short split training run, the attacks at k = 0.

Tolerances follow from the maths: a keep rate measured on N draws has standard deviation sqrt(p(1-p)/N); a variance
estimated from N Gaussian draws has relative standard deviation sqrt(2/N); both are checked at 4-5 of them."""

from __future__ import annotations

import math

import pytest
import torch

from splitpriv.candidates import eval_mode
from splitpriv.config import PrivacyConfig, TrainConfig
from splitpriv.privacy import build_mechanism, privatize
from splitpriv.privacy.privatizer import parse_privatizer_spec
from splitpriv.parts import load_bottom, save_bottom, split_model
from splitpriv.parts.privatizer import _sample

D = 384
TEXTS = ["a gripping , beautifully shot film", "dull", "the plot makes no sense at all , and the acting is worse"]
NOISE = "prototype:K=16"
PROJECTED = "prototype:K=16,r=15"
RR = "prototype:K=16,mode=rr,epsilon=1"
PAC = "pac:budget=2"
CHEAP_ATTACKS = dict(steps=2, n_public=30, n_in_domain=20, learned_epochs=1, epochs=2, adaptive_epochs=1,
                     adaptive_layers=1, adaptive_width=64, public_splits=["valid"])


@pytest.mark.parametrize("spec, words", [
    ("prototype:K=1", "K must be an integer >= 2"), ("prototype:K=-3", "K must"), ("prototype:K=2.5", "K must be an"),
    ("prototype:K=16,mode=rr", "epsilon"), ("prototype:K=16,mode=rr,epsilon=0", "epsilon"),
    ("prototype:K=16,mode=rr,epsilon=inf", "epsilon"), ("prototype:K=16,epsilon=1", "epsilon=1.0 applies to mode=rr"),
    ("prototype:K=16,mode=lsh", "mode must be one of"), ("prototype:K=16,r=0", "r must be a positive"),
    ("prototype:K=16,k=3", "unknown option"), ("prototype", "missing"),
    ("pac:budget=0", "budget"), ("pac:budget=-1", "budget"), ("pac:budget=inf", "budget"), ("pac", "missing"),
    ("pac:budget=1,beta=2", "unknown option"), ("pac:budget=1,r=0", "r must be a positive"),
])
def test_bad_specs_are_one_clear_error(spec, words):
    with pytest.raises(ValueError, match=words):
        parse_privatizer_spec(spec)


def test_specs_parse_to_canonical_configs(minilm):
    assert parse_privatizer_spec(RR) == {"name": "prototype", "K": 16, "mode": "rr", "epsilon": 1.0, "r": None}
    assert parse_privatizer_spec(PAC) == {"name": "pac", "budget": 2.0, "r": None}
    assert PrivacyConfig("gaussian", sigma=1, privatizer=PAC).privatizer == parse_privatizer_spec(PAC)
    for spec in ("prototype:K=16,r=500", "pac:budget=1,r=500"):
        with pytest.raises(ValueError, match="above the model width d=384"):
            split_model(minilm[0], 0, privatizer=spec)


@pytest.fixture(scope="module")
def parts(minilm):
    """One k = 0 split per privatizer (each fitted once on the attach sample)."""
    return {spec: split_model(minilm[0], 0, privatizer=spec) for spec in (NOISE, PROJECTED, RR, PAC)}


def _encode(tokenizer):
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


@pytest.mark.parametrize("spec", [NOISE, PROJECTED, RR, PAC])
def test_saved_bottom_reproduces_the_outputs_bit_for_bit(minilm, parts, spec, tmp_path):
    ids, mask = _encode(minilm[1])
    bottom = parts[spec].bottom
    save_bottom(bottom, tmp_path, minilm[1])
    loaded = load_bottom(tmp_path)
    assert loaded.privatizer.privatizer_config == parse_privatizer_spec(spec)
    for half in (bottom.privatizer, loaded.privatizer):
        if hasattr(half, "generator"):
            half.generator.manual_seed(3)  # the same randomized response on both sides
    with torch.no_grad(), eval_mode(bottom):
        u, again = bottom(input_ids=ids, attention_mask=mask), loaded(input_ids=ids, attention_mask=mask)
    assert u.shape == (3, ids.shape[1], parts[spec].top.input_width) and torch.equal(u, again)


@pytest.mark.parametrize("spec", [NOISE, PROJECTED])
def test_prototype_sends_exactly_a_prototype_and_the_vendor_maps_it_back(minilm, parts, spec):
    ids, mask = _encode(minilm[1])
    split = parts[spec]
    half = split.bottom.privatizer
    plain = split_model(minilm[0], 0).bottom
    with torch.no_grad(), eval_mode(split.bottom), eval_mode(plain):
        u = split.bottom(input_ids=ids, attention_mask=mask)
        codes = half.codes
        hit = (u.reshape(-1, 1, u.shape[-1]) == codes[None]).all(-1)
        assert bool(hit.any(-1).all())  # every row IS one code, bit for bit
        raw = plain(input_ids=ids, attention_mask=mask).reshape(-1, D)
        dist = torch.cdist(raw.double(), half.prototypes.double())
        chosen = dist.gather(1, hit.float().argmax(-1, keepdim=True))[:, 0]
        assert bool((chosen - dist.min(1).values <= 1e-4 * (1 + dist.min(1).values)).all())  # ... the nearest one
        back = split.top.privatizer_up(codes)
    assert torch.allclose(back, half.prototypes, atol=1e-4)  # r = K - 1 loses nothing
    assert half.sensitivity == pytest.approx(float(torch.cdist(half.prototypes.double(),
                                                               half.prototypes.double()).max()), rel=1e-4)
    assert len(set(dist.argmin(1).tolist())) > 1


def test_randomized_response_keeps_its_own_id_at_the_stated_rate(parts):
    half = parts[RR].bottom.privatizer
    K, eps = 16, 1.0
    p = math.exp(eps) / (math.exp(eps) + K - 1)
    assert half.keep_probability == pytest.approx(p)
    n_each = 1250
    truth = torch.arange(K).repeat(n_each)
    hidden = half.prototypes.detach()[truth][None]  # each row's nearest prototype is its own
    half.generator.manual_seed(0)
    with torch.no_grad():
        out = half(hidden)[0]
    sent = (out[:, None] == half.codes[None]).all(-1).float().argmax(-1)
    n = truth.numel()
    kept = float((sent == truth).float().mean())
    assert abs(kept - p) <= 4 * math.sqrt(p * (1 - p) / n), (kept, p)
    offsets = ((sent - truth) % K)[sent != truth]  # the others: uniform over 1..K-1
    q, m = 1 / (K - 1), offsets.numel()
    freq = torch.bincount(offsets, minlength=K)[1:].double() / m
    assert float((freq - q).abs().max()) <= 4.5 * math.sqrt(q * (1 - q) / m)
    half.randomize = False
    try:
        with torch.no_grad():
            assert torch.equal(half(hidden)[0], half.codes[truth])  # the deterministic image
    finally:
        half.randomize = True


def test_pac_noise_meets_the_formula_and_the_budget(minilm, parts):
    split = parts[PAC]
    half, beta = split.bottom.privatizer, 2.0
    sample = _sample(split_model(minilm[0], 0).bottom, int(minilm[0].config.vocab_size), 0, 16384).double()
    v, sigma, lam = half.basis.double(), half.scale.double(), half.eigenvalues.double()
    centred = sample - sample.mean(0)
    cov = centred.T @ centred / (sample.shape[0] - 1)
    assert torch.allclose(v.T @ cov @ v, torch.diag(lam), atol=1e-5 * float(lam[0]))  # V, lambda: the sample's
    root = lam.sqrt()
    assert torch.allclose(sigma.pow(2), root * root.sum() / (2 * beta), rtol=1e-5)
    mi = 0.5 * float(torch.log1p(lam / sigma.pow(2)).sum())
    assert mi == pytest.approx(half.mi_bound(), rel=1e-9) and mi <= beta
    assert 0.5 * float((lam / sigma.pow(2)).sum()) == pytest.approx(beta, rel=1e-4)  # the budget is spent
    # The mechanism gaussian at sigma = 1 on u, mapped back by the vendor half: h + V diag(sigma) n.
    n_draws = sample.shape[0]  # 16384
    u = half(sample[:n_draws].float()[None])
    mask = torch.ones(1, n_draws, dtype=torch.long)
    z = privatize(build_mechanism({"name": "gaussian", "sigma": 1.0}), u, mask,
                  generator=torch.Generator().manual_seed(0))
    up = split.top.privatizer_up
    with torch.no_grad():
        assert torch.allclose(up.weight.double(), v * sigma, atol=1e-6) and torch.equal(up.bias, half.mean)
        assert torch.allclose(up(u)[0], sample[:n_draws].float(), atol=1e-3)  # r = d: the whitening undone
    n = (z - u)[0].double()  # N(0, I) in u-space ...
    noise = n @ (v * sigma).T  # ... is V diag(sigma) n in h-space
    emp = noise.T @ noise / n_draws
    var = torch.diagonal(v.T @ emp @ v)
    assert float((var / sigma.pow(2) - 1).abs().max()) <= 5 * math.sqrt(2 / n_draws)
    c = half.noise_covariance()  # a sample covariance of N draws: E||C_hat - C||_F^2 = (||C||_F^2 + tr(C)^2) / N
    assert float((emp - c).norm()) <= 4 * math.sqrt((float(c.norm()) ** 2 + float(c.trace()) ** 2) / n_draws)
    assert float(sigma[0]) > float(sigma[-1])  # anisotropic: more noise where the representations differ


@pytest.mark.parametrize("spec, mechanism", [(NOISE, {"mechanism": "dchi", "eta": 8}),
                                             (RR, {"mechanism": "none"}),
                                             (PAC, {"mechanism": "gaussian", "sigma": 1.0})])
def test_split_training_runs_with_the_privatizer(minilm, spec, mechanism, tmp_path):
    from splitpriv.runs.run import RunConfig, run

    config = RunConfig(dataset="sst2-sample", train_limit=32, eval_limit=8, bottom_layers=0,
                       privacy=PrivacyConfig(**mechanism, privatizer=spec),
                       train=TrainConfig(batch_size=16, noise_seed=5, eval_batch_size=8))
    metrics = run(config, tmp_path, progress=False)
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert load_bottom(tmp_path / "customer").privatizer.privatizer_config == parse_privatizer_spec(spec)


@pytest.mark.parametrize("spec, mechanism", [(PROJECTED, {"mechanism": "dchi", "eta": 10.0}),
                                             (RR + ",r=15", {"mechanism": "none"}),
                                             ("pac:budget=2,r=32", {"mechanism": "gaussian", "sigma": 1.0})])
def test_every_attack_runs_on_the_privatizer_at_k0(minilm, data_dir, spec, mechanism):
    # narrow outputs and 8 positions keep the image tables ([V, r] per position) cheap: a smoke run, not a result
    from splitpriv.attacks.runner import run_attack

    out = run_attack("all", n_bottom_layers=0, limit=8, model=minilm, progress=False, privatizer=spec, max_length=8,
                     **mechanism, **CHEAP_ATTACKS)
    assert 0.0 <= out["empirical_privacy"] <= 1.0 and out["strongest_attack"] in out["results"]
    assert {"floor", "nn"} <= set(out["results"])


def test_gradients_pass_the_snap_straight_through_and_the_fitted_state_stays_put(parts):
    from splitpriv.privacy.privatizer import build_privatizer

    for spec in (NOISE, PROJECTED, PAC):
        half = parts[spec].bottom.privatizer
        before = {n: p.detach().clone() for n, p in half.named_parameters()}
        half.requires_grad_(True)  # as a trained bottom does
        try:
            h = half.prototypes.detach()[:3].clone() if hasattr(half, "prototypes") else torch.randn(3, D)
            h = h[None].requires_grad_(True)
            half(h).sum().backward()
            assert h.grad is not None and bool(h.grad.abs().sum() > 0)
            assert all(p.grad is None for p in half.parameters())  # nothing moves the fitted state
        finally:
            half.requires_grad_(False)
        assert all(torch.equal(before[n], p) for n, p in half.named_parameters())
    with pytest.raises(ValueError, match="not fitted"):
        build_privatizer(PAC).customer_half(D)(torch.randn(1, 2, D))
    with pytest.raises(ValueError, match="not fitted"):
        build_privatizer(NOISE).customer_half(D)(torch.randn(1, 2, D))
