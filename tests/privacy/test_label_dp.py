import math

import pytest
import torch

from splitpriv.config import PrivacyConfig
from splitpriv.privacy.label_dp import keep_probability, randomized_response

N = 200_000


@pytest.mark.parametrize("epsilon", [0.5, 1.0, 2.0, 4.0])
def test_binary_flip_rate_is_one_over_one_plus_e_eps(epsilon):
    labels = torch.randint(0, 2, (N,), generator=torch.Generator().manual_seed(0))
    out = randomized_response(labels, 2, epsilon, generator=torch.Generator().manual_seed(1))
    flip = float((out != labels).float().mean())
    expected = 1 / (1 + math.exp(epsilon))
    # a flip is Bernoulli(expected): 5 standard errors of the mean over N draws (false alarm < 1e-6)
    assert abs(flip - expected) < 5 * math.sqrt(expected * (1 - expected) / N)


def test_multiclass_keeps_with_e_eps_over_e_eps_plus_k_minus_1_and_spreads_uniformly():
    k, epsilon = 3, 1.0
    labels = torch.zeros(N, dtype=torch.long)
    out = randomized_response(labels, k, epsilon, generator=torch.Generator().manual_seed(2))
    p = keep_probability(epsilon, k)
    assert p == pytest.approx(math.e / (math.e + 2))
    counts = torch.bincount(out, minlength=k).double() / N
    se = math.sqrt(p * (1 - p) / N)
    assert abs(float(counts[0]) - p) < 5 * se
    # each other label gets (1 - p) / (k - 1)
    q = (1 - p) / (k - 1)
    for c in (1, 2):
        assert abs(float(counts[c]) - q) < 5 * math.sqrt(q * (1 - q) / N)


def test_dp_ratio_bound_holds_empirically():
    """P(out = 1 | y = 1) / P(out = 1 | y = 0) = e^eps for binary RR."""
    epsilon = 1.0
    g = torch.Generator().manual_seed(3)
    ones = randomized_response(torch.ones(N, dtype=torch.long), 2, epsilon, generator=g).float().mean()
    zeros = randomized_response(torch.zeros(N, dtype=torch.long), 2, epsilon, generator=g).float().mean()
    assert float(ones / zeros) == pytest.approx(math.exp(epsilon), rel=0.03)


def test_infinite_epsilon_is_identity_and_generator_is_private():
    labels = torch.tensor([0, 1, 1, 0, 2])
    state = torch.get_rng_state()
    assert torch.equal(randomized_response(labels, 3, math.inf, generator=torch.Generator().manual_seed(0)), labels)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("epsilon", [0, -1, float("nan")])
def test_bad_epsilon(epsilon):
    with pytest.raises(ValueError, match="epsilon"):
        randomized_response(torch.tensor([0, 1]), 2, epsilon, generator=torch.Generator())
    with pytest.raises(ValueError, match="label_dp_epsilon"):
        PrivacyConfig(label_dp_epsilon=epsilon).validate()


def test_labels_out_of_range():
    with pytest.raises(ValueError, match="labels must lie in 0..1"):
        randomized_response(torch.tensor([0, 2]), 2, 1.0, generator=torch.Generator())
