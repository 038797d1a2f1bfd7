"""Statistical and contract tests of the noise mechanisms.

Tolerances are derived, not tuned: each check compares an estimate with its expectation in units of its standard
error. A single check uses 4 standard errors (two-sided normal tail 6.3e-5); a check repeated over m coordinates
uses the Bonferroni threshold z_m = Phi^{-1}(1 - 1e-3 / (2 m)), so the whole family fails by chance with
probability below 1e-3. Seeds are fixed, so every run draws the same numbers.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from splitpriv.privacy import DChi, Gaussian, Identity, Laplace, Mechanism, build_mechanism

N = 20_000


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def bonferroni_z(m: int, alpha: float = 1e-3) -> float:
    return float(stats.norm.isf(alpha / (2 * m)))


def noise_rows(mech: Mechanism, n: int, d: int, seed: int = 0) -> torch.Tensor:
    return mech.sample_noise((n, d), generator=gen(seed), dtype=torch.float64)


def second_moment(mech: Mechanism, d: int) -> float:
    """E||n||^2: d(d+1)/eta^2 (Gamma(d, 1/eta) radius), d sigma^2 (Gaussian), 2 b^2 d (Laplace)."""
    if isinstance(mech, DChi):
        return d * (d + 1) / mech.eta**2
    if isinstance(mech, Gaussian):
        return d * mech.sigma**2
    return 2 * mech.scale**2 * d


# ---------------------------------------------------------------- d_chi radius and direction


@pytest.mark.parametrize("d,eta", [(2, 1.0), (16, 5.0), (384, 10.0), (384, 20.0)])
def test_dchi_radius_is_gamma(d, eta):
    r = noise_rows(DChi(eta), N, d, seed=d).norm(dim=-1).numpy()
    # KS against Gamma(shape=d, scale=1/eta): under the null the p-value is uniform, P(p <= 0.001) = 0.001.
    assert stats.kstest(r, stats.gamma(a=d, scale=1 / eta).cdf).pvalue > 1e-3
    # Mean radius: E r = d/eta, sd r = sqrt(d)/eta, so the mean of N draws has se sqrt(d)/(eta sqrt N).
    se = math.sqrt(d) / (eta * math.sqrt(N))
    assert abs(r.mean() - d / eta) < 4 * se


@pytest.mark.parametrize("d", [2, 16, 384])
def test_dchi_direction_isotropic(d):
    n = noise_rows(DChi(3.0), N, d, seed=100 + d)
    u = n / n.norm(dim=-1, keepdim=True)
    # Each coordinate of a uniform unit vector has mean 0 and variance 1/d: se of the mean = sqrt(1/(d N)).
    assert (u.mean(0).abs() < bonferroni_z(d) * math.sqrt(1 / (d * N))).all()
    if d <= 16:
        # E[u u^T] = I/d. For the sphere, E u_i^4 = 3/(d(d+2)) and E u_i^2 u_j^2 = 1/(d(d+2)), so the entries of the
        # empirical second-moment matrix have se sqrt((3/(d(d+2)) - 1/d^2)/N) on the diagonal and
        # sqrt(1/(d(d+2)N)) off it; d^2 entries are checked (Bonferroni over d^2).
        m2 = u.T @ u / N
        se_diag = math.sqrt((3 / (d * (d + 2)) - 1 / d**2) / N)
        se_off = math.sqrt(1 / (d * (d + 2) * N))
        z = bonferroni_z(d * d)
        eye = torch.eye(d, dtype=torch.bool)
        assert ((m2.diagonal() - 1 / d).abs() < z * se_diag).all()
        assert ((m2[~eye]).abs() < z * se_off).all()


def test_dchi_density_matches_laplace_in_one_dimension():
    # For d = 1 the d_chi density eta/2 exp(-eta |n|) is Laplace(0, 1/eta): the normalisers must agree exactly.
    z, x = torch.randn(7, 1, generator=gen(1)), torch.randn(7, 1, generator=gen(2))
    torch.testing.assert_close(DChi(4.0).log_likelihood(z, x), Laplace(0.25).log_likelihood(z, x))


# ---------------------------------------------------------------- per-token eta and noise_scale


def _two_level_radii(out: torch.Tensor, h: torch.Tensor, high: torch.Tensor):
    r = (out - h).double().norm(dim=-1)
    return r[~high], r[high]


def test_dchi_per_token_eta():
    B, T, d, eta = 100, 100, 32, 8.0
    high = (torch.arange(B * T).reshape(B, T) % 2).bool()
    eta_tok = torch.where(high, 2 * eta, eta)
    h = torch.randn(B, T, d, generator=gen(3))
    r_lo, r_hi = _two_level_radii(DChi(eta_tok)(h, generator=gen(4)), h, high)
    # Each group has n = 5000 tokens; se of the mean radius = sqrt(d)/(eta_group sqrt n); 4 se per group.
    for r, e in ((r_lo, eta), (r_hi, 2 * eta)):
        assert abs(r.mean().item() - d / e) < 4 * math.sqrt(d) / (e * math.sqrt(r.numel()))


@pytest.mark.parametrize("mech", [DChi(8.0), Gaussian(0.5), Laplace(0.5)], ids=lambda m: m.name)
def test_noise_scale_honoured(mech):
    B, T, d = 100, 100, 32
    half = (torch.arange(B * T).reshape(B, T) % 2).bool()
    scale = torch.where(half, 0.5, 1.0)
    h = torch.zeros(B, T, d, dtype=torch.float64)
    out = mech(h, generator=gen(5), noise_scale=scale)
    r_full, r_half = _two_level_radii(out, h, half)
    # Noise scaled by s has radius s r: mean s E r, sd s sqrt(E r^2 - (E r)^2), with E r^2 in closed form
    # (second_moment). The se of a group mean over n = 5000 tokens is that sd / sqrt(n); 4 se per group.
    mean = mech.expected_norm(d)
    sd = math.sqrt(second_moment(mech, d) - mean**2)
    for r, s in ((r_full, 1.0), (r_half, 0.5)):
        assert abs(r.mean().item() - s * mean) < 4 * s * sd / math.sqrt(r.numel())


def test_dchi_eta_tensor_and_noise_scale_compose():
    B, T, d, eta = 50, 100, 16, 4.0
    eta_tok = torch.full((B, T), eta)
    scale = torch.full((B, T), 0.25)
    h = torch.zeros(B, T, d)
    r = DChi(eta_tok)(h, generator=gen(7), noise_scale=scale).double().norm(dim=-1)
    # Effective eta = eta / 0.25 = 16: E r = d/16, se = sqrt(d)/(16 sqrt(B T)).
    assert abs(r.mean().item() - d / 16) < 4 * math.sqrt(d) / (16 * math.sqrt(B * T))


# ---------------------------------------------------------------- Gaussian and Laplace moments


def test_gaussian_moments():
    sigma, d = 0.7, 8
    n = noise_rows(Gaussian(sigma), N, d, seed=8)
    # Per-coordinate mean: se sigma/sqrt(N), Bonferroni over d coordinates.
    assert (n.mean(0).abs() < bonferroni_z(d) * sigma / math.sqrt(N)).all()
    # Per-coordinate variance: (N-1) s^2 / sigma^2 ~ chi2(N-1), so s^2 has se sigma^2 sqrt(2/(N-1)).
    assert ((n.var(0) - sigma**2).abs() < bonferroni_z(d) * sigma**2 * math.sqrt(2 / (N - 1))).all()
    assert stats.kstest(n[:, 0].numpy(), stats.norm(scale=sigma).cdf).pvalue > 1e-3
    # ||n|| mean vs the chi-distribution formula; sd of ||n|| = sqrt(d sigma^2 - (E||n||)^2), 4 se.
    mean = Gaussian(sigma).expected_norm(d)
    sd = math.sqrt(second_moment(Gaussian(sigma), d) - mean**2)
    assert abs(n.norm(dim=-1).mean().item() - mean) < 4 * sd / math.sqrt(N)


def test_laplace_moments():
    b, d = 0.3, 8
    n = noise_rows(Laplace(b), N, d, seed=9)
    M = n.numel()
    flat = n.flatten()
    # Pooled over all M = N d i.i.d. coordinates: Var n = 2 b^2 -> se of mean b sqrt(2/M);
    # |n| ~ Exp(mean b) -> se of mean b / sqrt(M); Var(n^2) = E n^4 - (2b^2)^2 = 24 b^4 - 4 b^4 = 20 b^4.
    assert abs(flat.mean().item()) < 4 * b * math.sqrt(2 / M)
    assert abs(flat.abs().mean().item() - b) < 4 * b / math.sqrt(M)
    assert abs((flat**2).mean().item() - 2 * b**2) < 4 * b**2 * math.sqrt(20 / M)
    assert stats.kstest(n[:, 0].numpy(), stats.laplace(scale=b).cdf).pvalue > 1e-3


@pytest.mark.parametrize("d", [1, 2, 16, 384])
def test_laplace_expected_norm(d):
    b = 0.5
    if d == 1:
        assert Laplace(b).expected_norm(1) == pytest.approx(b, rel=1e-9)
    r = noise_rows(Laplace(b), N, d, seed=10 + d).norm(dim=-1)
    # sd of ||n|| = sqrt(2 b^2 d - (E||n||)^2); 4 se.
    mean = Laplace(b).expected_norm(d)
    sd = math.sqrt(second_moment(Laplace(b), d) - mean**2)
    assert abs(r.mean().item() - mean) < 4 * sd / math.sqrt(N)


# ---------------------------------------------------------------- masking, dtypes, identity


@pytest.mark.parametrize("mech", [DChi(10.0), Gaussian(0.1), Laplace(0.1)], ids=lambda m: m.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_padding_untouched_real_tokens_changed(mech, dtype):
    h = torch.randn(3, 6, 16, generator=gen(11)).to(dtype)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    out = mech(h, mask, generator=gen(12))
    assert out.dtype == dtype and out.shape == h.shape
    pad = mask == 0
    assert torch.equal(out[pad], h[pad])
    assert (out[~pad] != h[~pad]).any(dim=-1).all()
    assert torch.isfinite(out.float()).all()


def test_bool_mask_and_no_mask():
    h = torch.randn(2, 4, 8, generator=gen(13))
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    a = DChi(5.0)(h, mask, generator=gen(14))
    b = DChi(5.0)(h, mask.long(), generator=gen(14))
    assert torch.equal(a, b)
    full = DChi(5.0)(h, None, generator=gen(15))
    assert (full != h).any(dim=-1).all()


def test_identity():
    h = torch.randn(2, 5, 8, generator=gen(16))
    mask = torch.ones(2, 5, dtype=torch.long)
    assert torch.equal(Identity()(h, mask), h)
    assert torch.equal(Identity()(h, mask, noise_scale=torch.full((2, 5), 0.5)), h)
    assert Identity().expected_norm(384) == 0.0
    ll = Identity().log_likelihood(h, torch.stack([h, h + 1]))
    assert (ll[0] == 0).all() and torch.isinf(ll[1]).all()


def test_gradient_flows_through_noise():
    h = torch.randn(2, 3, 4, generator=gen(17), requires_grad=True)
    DChi(5.0)(h, torch.ones(2, 3), generator=gen(18)).sum().backward()
    assert torch.equal(h.grad, torch.ones_like(h))


# ---------------------------------------------------------------- randomness


@pytest.mark.parametrize("mech", [DChi(10.0), Gaussian(0.5), Laplace(0.5)], ids=lambda m: m.name)
def test_generator_determinism_and_global_rng_untouched(mech):
    h = torch.randn(2, 7, 12, generator=gen(19))
    mask = torch.ones(2, 7)
    state = torch.get_rng_state()
    a = mech(h, mask, generator=gen(1))
    b = mech(h, mask, generator=gen(1))
    c = mech(h, mask, generator=gen(2))
    e = mech(h, mask)
    f = mech(h, mask)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(e, f)


def test_dchi_per_token_eta_uses_generator_only():
    state = torch.get_rng_state()
    eta = torch.full((2, 3), 4.0)
    a = DChi(eta)(torch.zeros(2, 3, 5), generator=gen(3))
    b = DChi(eta)(torch.zeros(2, 3, 5), generator=gen(3))
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state)


# ---------------------------------------------------------------- log-likelihood


def test_dchi_log_likelihood_differences():
    eta, d = 7.0, 16
    z, x1, x2 = (torch.randn(5, d, generator=gen(s), dtype=torch.float64) for s in (20, 21, 22))
    m = DChi(eta)
    torch.testing.assert_close(
        m.log_likelihood(z, x1) - m.log_likelihood(z, x2), -eta * ((z - x1).norm(dim=-1) - (z - x2).norm(dim=-1))
    )


def test_gaussian_laplace_log_likelihood_differences():
    z, x1, x2 = (torch.randn(5, 8, generator=gen(s), dtype=torch.float64) for s in (23, 24, 25))
    g, lap = Gaussian(0.5), Laplace(0.5)
    torch.testing.assert_close(
        g.log_likelihood(z, x1) - g.log_likelihood(z, x2),
        -((z - x1).pow(2).sum(-1) - (z - x2).pow(2).sum(-1)) / (2 * 0.25),
    )
    torch.testing.assert_close(
        lap.log_likelihood(z, x1) - lap.log_likelihood(z, x2),
        -((z - x1).abs().sum(-1) - (z - x2).abs().sum(-1)) / 0.5,
    )


@pytest.mark.parametrize("mech", [DChi(3.0), Gaussian(0.5), Laplace(0.5), Identity()], ids=lambda m: m.name)
def test_log_likelihood_broadcasts_for_map_attacks(mech):
    z = torch.randn(2, 3, 8, generator=gen(26))
    vocab = torch.randn(11, 8, generator=gen(27))
    ll = mech.log_likelihood(z[..., None, :], vocab)
    assert ll.shape == (2, 3, 11)
    with pytest.raises(ValueError, match="feature axis"):
        mech.log_likelihood(z, torch.randn(11, 7))


# ---------------------------------------------------------------- configs


def test_build_mechanism_and_round_trip():
    assert isinstance(build_mechanism(None), Identity)
    assert isinstance(build_mechanism("none"), Identity)
    m = build_mechanism("dchi", eta=10)
    assert isinstance(m, DChi) and m.eta == 10.0 and m.to_config() == {"name": "dchi", "eta": 10.0}
    g = build_mechanism({"name": "gaussian", "sigma": 0.5})
    assert isinstance(g, Gaussian) and g.sigma == 0.5
    for mech in (m, g, Laplace(0.2), Identity()):
        rebuilt = build_mechanism(mech.to_config())
        assert type(rebuilt) is type(mech) and rebuilt.to_config() == mech.to_config()
    assert build_mechanism({"name": "laplace", "scale": 1.0}, scale=2.0).scale == 2.0


def test_expected_norms():
    assert DChi(10.0).expected_norm(384) == pytest.approx(38.4)
    assert Gaussian(1.0).expected_norm(1) == pytest.approx(math.sqrt(2 / math.pi))
    assert DChi(torch.tensor([[2.0, 4.0]])).expected_norm(8) == pytest.approx(8 * (0.5 + 0.25) / 2)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "factory,match",
    [
        (lambda: DChi(0.0), "eta must be > 0"),
        (lambda: DChi(-1.0), "eta must be > 0"),
        (lambda: DChi(float("nan")), "eta must be finite"),
        (lambda: DChi(float("inf")), "eta must be finite"),
        (lambda: DChi(torch.tensor([[1.0, float("nan")]])), "eta contains NaN"),
        (lambda: DChi(torch.tensor([[1.0, float("inf")]])), "eta contains inf"),
        (lambda: DChi(torch.tensor([[1.0, 0.0]])), "eta must be > 0"),
        (lambda: DChi(torch.ones(3)), r"eta must have shape \[batch, tokens\]"),
        (lambda: DChi("ten"), "eta must be a positive finite number"),
        (lambda: Gaussian(0.0), "sigma must be > 0"),
        (lambda: Gaussian(float("nan")), "sigma must be finite"),
        (lambda: Laplace(-0.5), "scale must be > 0"),
        (lambda: Laplace(float("nan")), "scale must be finite"),
        (lambda: build_mechanism("gauss"), "unknown mechanism 'gauss'"),
        (lambda: build_mechanism({"sigma": 1.0}), "needs a 'name'"),
        (lambda: build_mechanism("dchi", sigma=1.0), "bad parameters"),
    ],
)
def test_bad_parameters(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


@pytest.mark.parametrize("mech", [DChi(5.0), Gaussian(0.5), Laplace(0.5), Identity()], ids=lambda m: m.name)
def test_bad_inputs(mech):
    h = torch.randn(2, 3, 4, generator=gen(28))
    with_nan, with_inf = h.clone(), h.clone()
    with_nan[1, 2, 3] = float("nan")
    with_inf[0, 1, 0] = float("-inf")
    cases = [
        ((torch.randn(3, 4),), {}, "3-D"),
        ((h, torch.ones(2, 4)), {}, "attention_mask shape"),
        ((h, torch.full((2, 3), 2)), {}, "only 0"),
        ((h,), {"noise_scale": torch.ones(2, 4)}, "noise_scale has shape"),
        ((h,), {"noise_scale": torch.zeros(2, 3)}, "noise_scale must be > 0"),
        ((h,), {"noise_scale": torch.full((2, 3), float("nan"))}, "noise_scale contains NaN"),
        ((with_nan,), {}, "NaN or inf"),
        ((with_inf,), {}, "NaN or inf"),
        ((torch.ones(2, 3, 4, dtype=torch.long),), {}, "floating-point"),
    ]
    for args, kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            mech(*args, **kwargs)


def test_per_token_eta_shape_mismatch():
    with pytest.raises(ValueError, match=r"per-token eta has shape \(2, 4\)"):
        DChi(torch.ones(2, 4))(torch.zeros(2, 3, 5))
