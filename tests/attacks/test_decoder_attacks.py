"""Inversion attacks on decoders: the additive k = 0 candidate space (no LayerNorm) of GPT-2 and Llama is exact,
and the nearest-neighbour attack recovers every token of noiseless SmolLM2 embeddings."""

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from splitpriv import split_model
from splitpriv.candidates import AdditiveCandidateSpace


def _tiny(family):
    if family == "gpt2":
        cfg = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=1200, n_positions=64)
    else:
        cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=1200, max_position_embeddings=64)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_additive_space_is_exact(family):
    bottom = split_model(_tiny(family), 0).bottom
    space = AdditiveCandidateSpace(bottom)  # verifies itself against bottom.embed
    ids = torch.randint(0, 1200, (1, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z = bottom.embed(input_ids=ids)[0]
    d2 = space.sqdist(z, torch.arange(10))
    assert torch.equal(d2.argmin(1), ids[0])
    exact = (z[:, None] - torch.stack([space.candidates(p) for p in range(10)])).pow(2).sum(-1)
    torch.testing.assert_close(d2, exact, atol=1e-3, rtol=1e-4)


def test_nearest_neighbour_inverts_noiseless_smollm2(smollm2, data_dir):
    from splitpriv.attacks.runner import run_attack

    result = run_attack("nn", model=smollm2, n_bottom_layers=0, limit=4, progress=False)
    assert result["token_recovery"] > 0.99
