"""Causal-LM points in the experiment grid: exact match as the utility, the vendor's pre-trained privatizer as a run
option, the customer's local-only decoder, and which label-side attack reads such a run."""

from __future__ import annotations

import pytest
import torch

from splitpriv.experiments.grid import run_config


def _lm_point(model, **over) -> dict:
    point = {"model": model, "task": "causal-lm", "dataset": "sst2", "train_limit": 8, "eval_limit": 4,
             "bottom_layers": 1, "tail_layers": 1, "method": "lora", "lr": 0.01,
             "privacy": {"mechanism": "dchi", "eta": 100, "privatizer": {"name": "bottleneck", "r": 8, "clip": 1.0}},
             "train": {"epochs": 1, "batch_size": 4, "max_length": 48}}
    return {**point, **over}


def test_exact_match_is_a_causal_lm_point_s_accuracy_with_per_example_correctness():
    from splitpriv.tasks import task_of

    task = task_of("causal-lm")
    fields = task.utility({"exact_match": 0.5, "correct": "1010", "perplexity": 3.0, "n_scored": 4})
    assert fields == {"accuracy": 0.5, "macro_f1": None, "correct": "1010", "perplexity": 3.0}
    with pytest.raises(ValueError, match="exact match"):
        task.utility({"perplexity": 3.0})  # wikitext2: nothing to compare example by example
    assert task_of("sequence-classification").utility({"accuracy": 0.9, "macro_f1": 0.8, "correct": "1"}) == {
        "accuracy": 0.9, "macro_f1": 0.8, "correct": "1"}


def test_vendor_pretrain_is_refused_where_it_cannot_apply():
    with pytest.raises(ValueError, match="declares none"):
        run_config(_lm_point(None, privacy={"mechanism": "dchi", "eta": 100}, vendor_pretrain={"steps": 2}))
    with pytest.raises(ValueError, match="centralized"):
        run_config(_lm_point(None, centralized=True, vendor_pretrain={"steps": 2}))
    with pytest.raises(ValueError, match="unknown robust_top options"):
        run_config(_lm_point(None, vendor_pretrain={"stepz": 2}))
    assert run_config(_lm_point(None, vendor_pretrain={"steps": 2})).vendor_pretrain_config().steps == 2


def test_the_label_attack_leaves_causal_lm_points_to_the_response_attack():
    from splitpriv.attacks.registry import ATTACKS, Setting

    lm, classifier = Setting(2, task="causal-lm"), Setting(2, task="sequence-classification")
    assert "response attack" in ATTACKS.get("label").applies(lm)
    assert ATTACKS.get("label").applies(classifier) is None
    assert ATTACKS.get("response").applies(lm) is None
    assert "causal-lm" in ATTACKS.get("response").applies(classifier)


def test_the_customer_s_stack_is_the_split_without_the_vendor_s_middle(smollm2):
    """Alone, the customer runs embeddings, its k bottom and j tail blocks, the final norm and the LM head: exactly
    ``tail(bottom(x))`` of the split (SmolLM2, k = j = 2), and greedy decoding with its KV cache equals decoding
    without one."""
    import copy

    from splitpriv.experiments.local_only import _customer_stack
    from splitpriv.parts import split_model

    model, tokenizer = smollm2
    parts = split_model(copy.deepcopy(model), 2, 2)
    stack = copy.deepcopy(model)
    _customer_stack(stack, 2, 2)
    ids = torch.tensor([tokenizer("The film was warm and funny.")["input_ids"]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        split = parts.tail(parts.bottom(input_ids=ids, attention_mask=mask), mask)
        alone = stack(input_ids=ids, attention_mask=mask).logits
        cached = stack.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
        uncached = stack.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False,
                                  pad_token_id=tokenizer.pad_token_id, use_cache=False)
    assert len(stack.model.layers) == 4
    torch.testing.assert_close(alone, split, rtol=0, atol=1e-4)
    assert torch.equal(cached, uncached)


def test_local_only_decoder_sends_its_blocks_through_the_noisy_code(tiny_lm_dir, data_dir):
    """The customer alone on a tiny Llama (k = j = 1): with noise, its bottom's output goes through the privatizer,
    fresh d_chi noise and its own trainable up-projection (two passes differ; the loss reaches the up-projection);
    end to end, clean and noisy, it scores an exact-match share of the dev examples."""
    from splitpriv.data.instructions import encode_lm
    from splitpriv.experiments.local_only import _customer_stack, _noisy_bridge, local_only_accuracy
    from splitpriv.models import load_model
    from splitpriv.runs.run import load_data

    config = run_config(_lm_point(str(tiny_lm_dir)))
    train, dev = load_data(config)
    net, tokenizer = load_model(str(tiny_lm_dir), task="causal-lm")
    examples = encode_lm(train, tokenizer, 48)
    up = _noisy_bridge(config, net, _customer_stack(net, 1, 1), examples, tokenizer.pad_token_id, 0)
    ids = torch.tensor([examples[0].ids])
    first, second = net(input_ids=ids).logits, net(input_ids=ids).logits
    assert not torch.allclose(first, second)
    first.sum().backward()
    assert up and all(p.grad is not None and p.grad.abs().sum() > 0 for p in up)
    for noise in (False, True):
        share = local_only_accuracy(config, train, dev, noise=noise)
        assert 0.0 <= share <= 1.0 and (share * len(dev)).is_integer()
