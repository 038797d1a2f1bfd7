"""Attribute inference and label inference, on real slices and real in-process split training runs (kept short:
the whole file trains three tiny sessions of all-MiniLM-L6-v2 at k = 0: 32 + 32 + 128 samples)."""

import math

import pytest
import torch
import torch.nn.functional as F

from splitpriv.attacks.attribute import (
    advantage,
    attribute_inference,
    majority_accuracy,
    pool_representations,
)
from splitpriv.attacks.base import AttackerKnowledge
from splitpriv.attacks.label import (
    cluster_attack,
    cosine_attack,
    exact_label_attack,
    label_inference,
    norm_attack,
    oracle_cluster_accuracy,
    read_transcript,
)
from splitpriv.attacks.runner import run_label_attack
from splitpriv.config import PrivacyConfig
from splitpriv.privacy import build_mechanism
from splitpriv.simulation import simulate_training


@pytest.fixture(scope="module")
def vendor():
    from splitpriv.roles.vendor import Vendor

    return Vendor()


@pytest.fixture(scope="module")
def sst2(data_dir):
    from splitpriv.data import load_dataset

    return load_dataset("sst2", "train", limit=128, seed=0)


# -- unit checks ----------------------------------------------------------------------------------------------------


def test_advantage_formula_by_hand():
    assert majority_accuracy(["m", "f", "m", "m"]) == 0.75
    assert advantage(0.7, 0.6) == pytest.approx(0.25)  # (0.7 - 0.6) / (1 - 0.6)
    assert advantage(0.6, 0.6) == 0.0
    assert advantage(0.5, 0.6) == 0.0  # worse than the constant guess: clipped, nothing leaked
    assert advantage(1.0, 0.5) == 1.0
    assert advantage(0.9, 1.0) == 0.0
    with pytest.raises(ValueError):
        advantage(0.5, 1.5)


def test_pooling_uses_real_tokens_only():
    z = torch.tensor([[[1.0, -2.0], [3.0, 4.0], [0.0, 0.0]]])  # third position is padding (zeroed on the wire)
    mask = torch.tensor([[1, 1, 0]])
    pooled = pool_representations(z, mask)
    assert pooled.tolist() == [[2.0, 1.0, 3.0, 4.0]]


def test_gradient_attacks_on_synthetic_logit_gradients():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 3, generator=g, requires_grad=True)
    y = torch.randint(0, 3, (40,), generator=g)
    F.cross_entropy(logits, y).backward()
    assert torch.equal(exact_label_attack(logits.grad), y)
    with pytest.raises(ValueError, match="head='customer'"):
        exact_label_attack(torch.zeros(2, 5, 8))
    # binary: the sign of the cosine to any pivot splits the classes; the prior names the groups
    logits2 = torch.randn(50, 2, generator=g, requires_grad=True)
    y2 = (torch.rand(50, generator=g) < 0.3).long()
    F.cross_entropy(logits2, y2).backward()
    prior = [0.7, 0.3]
    pred, score1 = cosine_attack(logits2.grad, prior)
    assert torch.equal(pred, y2)
    pred, _, ids = cluster_attack(logits2.grad, 2, prior)
    assert torch.equal(pred, y2) and oracle_cluster_accuracy(ids, y2) == 1.0
    pred, scores, minority = norm_attack(logits2.grad, prior)
    assert minority == 1 and int((pred == 1).sum()) == 15


# -- label inference from real training runs ------------------------------------------------------------------------


def test_exact_label_attack_recovers_every_label_vendor_head(vendor, data_dir):
    result = run_label_attack(dataset="sst2", head="vendor", limit=32, public_limit=200, batch_size=32, seed=0,
                              progress=False, vendor=vendor)
    m = result.metrics
    assert m["n_samples"] == 32 and m["n_steps"] == 1
    assert m["exact_accuracy"] == 1.0 and result.success == 1.0
    assert m["exact_auc"] == 1.0
    assert m["exact_rows_one_negative"] == 1.0
    assert m["logits_crossed"] is True
    assert "outputs.outputs:rank2" in m["wire"] and "backward.grad_outputs:rank2" in m["wire"]
    assert 0.0 <= m["floor_accuracy"] <= 1.0
    assert m["leakage_above_floor"] == pytest.approx(1.0 - m["floor_accuracy"])
    assert result.to_dict()["empirical_privacy"] == 0.0


def test_customer_head_no_logits_cross_and_gradient_attacks_report(vendor, data_dir):
    result = run_label_attack(dataset="sst2", head="customer", limit=32, public_limit=200, batch_size=32, seed=0,
                              progress=False, vendor=vendor)
    m = result.metrics
    # what crosses: [B, T, d] hidden states and their gradients, never [B, C] logits
    assert m["logits_crossed"] is False
    assert m["exact_applicable"] is False and m["exact_accuracy"] is None
    assert "outputs.outputs:rank3" in m["wire"] and "backward.grad_outputs:rank3" in m["wire"]
    assert not any(w.endswith("rank2") for w in m["wire"] if w.startswith(("outputs.", "backward.")))
    assert m["gradient_shape"][-1] == 384
    for attack in ("norm", "cosine", "cluster", "whitebox_head"):
        assert 0.0 <= m[f"{attack}_accuracy"] <= 1.0
        assert 0.0 <= m[f"{attack}_auc"] <= 1.0
    assert 0.0 <= m["cluster_oracle_accuracy"] <= 1.0
    assert result.success == max(m[f"{a}_accuracy"] for a in ("norm", "cosine", "cluster", "whitebox_head"))
    # the BERT head reads [CLS] only, so that is where the hidden-state gradient lives
    assert m["grad_energy_at_first_token"] > 0.99


def test_label_dp_bounds_the_exact_attack(vendor, sst2):
    eps = 1.0
    privacy = PrivacyConfig(label_dp_epsilon=eps)
    run = simulate_training(sst2.texts, sst2.labels, num_labels=2, head="vendor", privacy=privacy, batch_size=64,
                            seed=0, vendor=vendor)
    observed, per_step, customer = read_transcript(run.messages).observed(), run.labels_per_step, run.customer
    result = label_inference(observed, per_step, head="vendor", num_labels=2)
    n = result.metrics["n_samples"]
    assert n == 128
    p = math.exp(eps) / (1 + math.exp(eps))  # 0.731; 3 standard errors at n = 128: ±0.118
    stderr = math.sqrt(p * (1 - p) / n)
    assert abs(result.metrics["exact_accuracy"] - p) <= 3 * stderr
    # and what the attack does recover exactly is the randomized labels the loss used
    from splitpriv.batching import training_order

    randomized = customer.randomize_labels(torch.tensor(sst2.labels))
    per_step_rr = [randomized[index] for _, _, index in training_order(n, 64, 1, 0)]
    assert label_inference(observed, per_step_rr, head="vendor").metrics["exact_accuracy"] == 1.0


# -- attribute inference --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blog(data_dir):
    from splitpriv.data import load_dataset

    aux = load_dataset("blog_authorship", "train", limit=300, seed=0)
    victim = load_dataset("blog_authorship", "test", limit=200, seed=0)
    return aux, victim


def _knowledge(minilm, mechanism) -> AttackerKnowledge:
    from splitpriv import split_model

    model, tokenizer = minilm
    return AttackerKnowledge(bottom=split_model(model, 0).bottom, tokenizer=tokenizer, mechanism=mechanism,
                             max_length=32)


def test_attribute_inference_without_noise_reports_consistent_advantage(minilm, blog):
    aux, victim = blog
    result = attribute_inference(_knowledge(minilm, build_mechanism("none")), aux.texts, aux.attributes["gender"],
                                 victim.texts, victim.attributes["gender"], seed=0)
    m = result.metrics
    assert m["n_aux"] == 300 and m["n_victim"] == 200
    assert m["majority_accuracy"] == pytest.approx(majority_accuracy(victim.attributes["gender"]))
    for name in ("logreg", "mlp"):
        assert m[f"{name}_advantage"] == pytest.approx(advantage(m[f"{name}_accuracy"], m["majority_accuracy"]))
        assert 0.0 <= m[f"{name}_macro_f1"] <= 1.0
    assert result.success == max(m["logreg_advantage"], m["mlp_advantage"]) == m["advantage"]


def test_attribute_inference_under_heavy_noise_is_near_zero(minilm, blog):
    aux, victim = blog
    result = attribute_inference(_knowledge(minilm, build_mechanism("dchi", eta=0.1)), aux.texts,
                                 aux.attributes["gender"], victim.texts, victim.attributes["gender"], seed=0)
    m = result.metrics
    # an accuracy above the base rate by more than 3 standard errors of the victim sample would be a real leak
    bound = 3 * math.sqrt(m["majority_accuracy"] * (1 - m["majority_accuracy"]) / m["n_victim"])
    assert result.success <= bound / (1 - m["majority_accuracy"])
