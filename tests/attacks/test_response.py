"""The response attack: a causal-LM vendor reads the customer's response tokens from the gradients it receives, on
synthetic gradients of tiny random decoders (GPT-2's LayerNorm, Llama's RMSNorm) and on real in-process split runs of
the tiny random Llama (SmolLM2's tokenizer, V = 49152, d = 32); and the customer's defence (clip + Gaussian noise).

Tolerances come from the maths (src/splitpriv/attacks/response.py): on clean gradients the true token's residual is
0, while the nearest wrong token's is a finite angle away (~45° among 49152 random directions in d − 1 = 31), so
float32 rounding cannot flip a guess and recovery is exact. Under noise of standard deviation σ·C per coordinate
against a signal of norm ≤ C per example, at σ = 10 each position's signal is ~1/(σ√d) ≈ 2% of the noise, so the
best of V candidates is the noise's and a guess is right with probability ~1/V: recovery ≈ 0, far below the blind
floor.
"""

import copy

import pytest
import torch

from splitpriv.attacks.response import attack_step, infer_loss_positions, positional_floor
from splitpriv.attacks.runner import run_attack
from splitpriv.config import PrivacyConfig
from splitpriv.parts import split_model
from splitpriv.privacy.gradient_noise import clip_and_noise
from splitpriv.tasks.causal_lm import next_token_loss

SETTING = dict(dataset="wikitext2", limit=12, n_bottom_layers=1, batch_size=4, max_length=48, progress=False)


@pytest.fixture(scope="module")
def attacked(tiny_lm_dir, lm_vendor):
    """``attacked(**options)``: the response attack on a fresh short split run of the tiny Llama (12 WikiText-2
    texts, k = 1, batches of 4: 3 steps)."""
    return lambda **kw: run_attack("response", model=str(tiny_lm_dir), vendor=lm_vendor, **SETTING, **kw)


@pytest.mark.parametrize("family,j", [("gpt2", 0), ("gpt2", 1), ("llama", 0), ("llama", 2)])
def test_every_target_is_decoded_from_a_synthetic_gradient(tiny_decoder, family, j):
    model = tiny_decoder.model(family, "eager", task="causal-lm")
    tail = copy.deepcopy(split_model(model, 0, j).tail).double()
    ids, mask = tiny_decoder.batch("right")
    loss_mask = mask.clone()
    loss_mask[:, :2] = 0  # the "prompt": no loss there
    hidden = torch.randn(*ids.shape, 32, generator=torch.Generator().manual_seed(0)) * mask[..., None]
    h = hidden.clone().requires_grad_(True)
    customer_tail = split_model(model, 0, j).tail  # float32, as the customer computes
    (grad,) = torch.autograd.grad(next_token_loss(customer_tail(h, mask), ids, loss_mask), h)
    out = attack_step(tail, hidden, mask, grad, steps=30)
    truth = torch.zeros_like(mask, dtype=torch.bool)
    truth[:, :-1] = loss_mask[:, 1:].bool()
    assert torch.equal(out["pred"][truth], ids[:, 1:][truth[:, :-1]])
    assert torch.equal(out["detected"], truth) and out["n_loss"] == int(truth.sum())
    if j == 0:  # exact inversion: the fitted scale is the batch mean's 1/N
        assert out["scale"] * int(truth.sum()) == pytest.approx(1.0, rel=1e-4)


def test_the_loss_positions_and_their_number_are_inferred_from_the_scales():
    alpha = torch.tensor([0.0, 0.25, 1e-9, 0.25, 0.25, 0.0, 0.25])
    assert infer_loss_positions(alpha) == (4, pytest.approx(0.25))
    assert infer_loss_positions(torch.zeros(0)) == (0, 0.0)


@pytest.mark.parametrize("j", [0, 2])
def test_clean_gradients_of_a_split_run_give_every_response_token(attacked, j):
    result = attacked(tail_layers=j)
    assert result["attack"] == "response" and result["n_steps"] == 3 and result["n_response_tokens"] > 100
    assert result["token_recovery"] == 1.0 and result["content_recovery"] == 1.0
    assert result["floor"] < 0.5 and result["advantage_over_floor"] > 0.5
    assert result["mask_precision"] == 1.0 and result["mask_recall"] == 1.0
    assert result["loss_tokens_inferred_exactly"] == 1.0
    assert "learned" in result["generation_path"]


def test_clipping_alone_hides_nothing(attacked):
    """Clipping rescales each example; the decoder fits a free scale per position."""
    assert attacked(grad_clip=1e-5)["token_recovery"] == 1.0


@pytest.mark.parametrize("j", [0, 2])
def test_heavy_gradient_noise_drops_recovery_below_the_floor(attacked, j):
    result = attacked(tail_layers=j, grad_clip=1e-3, grad_sigma=10.0)
    assert result["token_recovery"] < 0.05 < result["floor"]


def test_the_floor_is_the_best_constant_per_position_from_the_end():
    ids = torch.tensor([[5, 7, 8, 1], [5, 9, 8, 1], [5, 9, 1, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]])
    loss = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [0, 1, 1, 0]])
    # from the end: offset 0 is token 1 three times; offset 1 is 8, 8, 9: 5 of 6 right
    assert positional_floor([(ids, mask, loss)]) == pytest.approx(5 / 6)


def test_clip_and_noise_bounds_each_example_and_keeps_padding_zero():
    g = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1] * 5, [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    g = g * mask[..., None]
    clipped = clip_and_noise(g, mask, 0.5, 0.0, generator=torch.Generator())
    assert torch.all(clipped.flatten(1).norm(dim=1) <= 0.5 + 1e-6)
    noisy = [clip_and_noise(g, mask, 0.5, 2.0, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(noisy[0], noisy[1]) and not torch.equal(noisy[0], clipped)
    assert torch.all(noisy[0][~mask.bool()] == 0)


def test_the_defence_is_validated_and_absent_from_records_without_it():
    assert "grad_clip" not in PrivacyConfig().to_dict()
    assert PrivacyConfig(grad_clip=1.0, grad_sigma=0.5).to_dict()["grad_sigma"] == 0.5
    assert PrivacyConfig.from_dict(PrivacyConfig(grad_clip=1.0).to_dict()).grad_clip == 1.0
    with pytest.raises(ValueError, match="set grad_clip"):
        PrivacyConfig(grad_sigma=1.0).validate()
    with pytest.raises(ValueError, match="grad_clip"):
        PrivacyConfig(grad_clip=0.0).validate()


def test_the_customer_sends_the_clipped_gradient(lm_vendor, lm_examples):
    from splitpriv.attacks.wire import read_transcript
    from splitpriv.simulation import simulate_lm_training

    run = simulate_lm_training(lm_examples[:8], n_bottom_layers=1, batch_size=4, vendor=lm_vendor,
                               privacy=PrivacyConfig(grad_clip=1e-4))
    norms = torch.cat([s.grad_outputs.flatten(1).norm(dim=1) for s in read_transcript(run.messages).observed()])
    assert len(norms) == 8 and torch.all(norms <= 1e-4 * (1 + 1e-5))


def test_the_command_line_lists_the_attack():
    from splitpriv.cli.attacking import ATTACK_HELP

    assert "response: the customer's response tokens" in ATTACK_HELP
