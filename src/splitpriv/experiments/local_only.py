r"""The customer alone: what it reaches with what it holds, no vendor — the figure a vendor's share must beat.

Threat model: none; this measures utility. The customer builds the bottom the vendor would ship it (the first
``k`` blocks, with the point's privatizer freshly initialised), and trains it as the point's warm start does
(:func:`~splitpriv.roles.customer.warm_start.warm_start_privatizer`: the privatizer, the blocks when the point
trains them at home, and a linear read-out of the mean noisy code) for as many passes as the point reads the data
in all (warm start + epochs), with the same mechanism in the loop, then classifies the dev set through the same
noisy path. ``noise=False`` gives the clean local model: ``headroom_pts`` = centralized − that, what the vendor's
model is worth on the task at all.

A causal LM (:func:`_local_only_exact_match`): the customer holds the first ``k`` and the last ``j`` blocks, the
embeddings, the final norm and the LM head. Alone it stacks its blocks (the vendor's middle dropped), with the point's
privatizer (the projection the vendor shipped, pre-trained or fresh), noise and an up-projection of its own between
them, and tunes them with the point's method on its next-token loss over the responses for as many epochs; scored by
exact match of the greedy answer, as the split run is.
"""

from __future__ import annotations

import torch


def local_only_accuracy(config, train, evaluation, *, noise: bool = True) -> float:
    """Dev accuracy of the customer's model alone for a :class:`~splitpriv.runs.config.RunConfig` point (module
    docstring)."""
    if config.task == "causal-lm":
        return _local_only_exact_match(config, train, evaluation, noise=noise)
    from splitpriv.batching import collate
    from splitpriv.models import load_model
    from splitpriv.privacy import build_mechanism, privatize
    from splitpriv.roles.customer.warm_start import warm_start_privatizer
    from splitpriv.parts import split_model

    t = config.train
    net, tokenizer = load_model(config.model, num_labels=train.num_labels, seed=t.seed)
    extra = {} if config.privacy.privatizer is None else {"privatizer": config.privacy.privatizer}
    bottom = split_model(net, config.bottom_layers, privatizer_seed=t.seed, **extra).bottom
    mechanism = config.privacy.build_mechanism() if noise else build_mechanism("none")
    width = bottom(input_ids=torch.tensor([[tokenizer.cls_token_id or 0]]),
                   attention_mask=torch.ones(1, 1, dtype=torch.long)).shape[-1]
    readout = torch.nn.Linear(width, train.num_labels)
    encode = lambda texts: tokenizer(list(texts), truncation=True, max_length=t.max_length)["input_ids"]  # noqa: E731
    blocks = bool(t.warm_start_blocks or t.bottom == "trained") and config.bottom_layers > 0
    warm_start_privatizer(bottom, mechanism, encode(train.texts), torch.tensor(train.labels), train.num_labels,
                          tokenizer.pad_token_id, epochs=(t.privatizer_warm_start or 0) + t.epochs,
                          lr=t.privatizer_lr or 1e-2, batch_size=t.batch_size, seed=t.seed, train_blocks=blocks,
                          blocks_lr=t.bottom_lr, require_privatizer=False, readout=readout)
    ids = encode(evaluation.texts)
    g = torch.Generator().manual_seed(t.seed + 1)
    correct = 0
    bottom.eval()
    with torch.no_grad():
        for s in range(0, len(ids), t.eval_batch_size):
            index = torch.arange(s, min(s + t.eval_batch_size, len(ids)))
            x, mask = collate(ids, index, tokenizer.pad_token_id)
            z = privatize(mechanism, bottom(input_ids=x, attention_mask=mask), mask, generator=g)
            m = mask.unsqueeze(-1).to(z.dtype)
            pred = readout((z * m).sum(1) / m.sum(1).clamp_min(1.0)).argmax(1)
            correct += int((pred == torch.tensor(evaluation.labels)[index]).sum())
    return correct / len(ids)


def _customer_stack(net, k: int, j: int):
    """``net`` with only its first ``k`` and last ``j`` blocks, renumbered for the KV cache; returns the module whose
    output would go up to the vendor: the last bottom block (the embeddings at k = 0)."""
    from torch import nn

    from splitpriv.models import family_of

    family = family_of(net)
    blocks = net.get_submodule(family.blocks)
    n = len(blocks)
    kept = [*range(k), *range(n - j, n)]
    parent, name = family.blocks.rsplit(".", 1)
    setattr(net.get_submodule(parent), name, nn.ModuleList([blocks[i] for i in kept]))
    for new, block in enumerate(net.get_submodule(family.blocks)):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new
    for attr in ("num_hidden_layers", "n_layer"):
        if hasattr(net.config, attr):
            setattr(net.config, attr, k + j)
    if getattr(net.config, "layer_types", None):
        net.config.layer_types = [net.config.layer_types[i] for i in kept]
    return net.get_submodule(family.blocks)[k - 1] if k else net.get_input_embeddings()


def _noisy_bridge(config, net, last_bottom, examples, pad_id: int, seed: int):
    """The privatizer the customer would send through (the vendor's shipped projection when it pre-trained one),
    the mechanism, and an up-projection of the customer's own (the privatizer's pseudo-inverse start, trained),
    hooked after its last bottom block; returns the up-projection's parameters."""
    from splitpriv.models import load_model
    from splitpriv.parts import split_model
    from splitpriv.parts.privatizer import load_privatizer, pretrained_privatizer
    from splitpriv.privacy import privatize
    from splitpriv.privacy.privatizer import build_privatizer
    from splitpriv.tasks.causal_lm import collate_lm

    spec, folder = config.privacy.privatizer, config.vendor_model()
    mechanism = config.privacy.build_mechanism()
    if spec is None:
        half, up = (lambda h, mask: h), torch.nn.Identity()
    else:
        shipped, _ = load_model(config.model, task="causal-lm", seed=seed)
        parts = split_model(shipped, config.bottom_layers, config.tail_layers, privatizer=spec, privatizer_seed=seed)
        if pretrained_privatizer(folder) is not None:
            load_privatizer(parts, folder)
        half, parts.bottom.privatizer = parts.bottom.privatizer.requires_grad_(False), None
        ids, mask, _ = collate_lm(examples, torch.arange(min(len(examples), 32)), pad_id)
        with torch.no_grad():  # the bottom's outputs h before the projection: the up-projection's start
            sample = parts.bottom(input_ids=ids, attention_mask=mask)[mask.bool()]
        up = build_privatizer(spec).vendor_half(half, sample.shape[-1], sample).requires_grad_(True)
    g = torch.Generator().manual_seed(seed + 1)

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        ones = torch.ones(hidden.shape[:2], dtype=torch.long)
        sent = up(privatize(mechanism, half(hidden, ones), ones, generator=g))
        return (sent, *output[1:]) if isinstance(output, tuple) else sent

    last_bottom.register_forward_hook(hook)
    return list(up.parameters())


def _local_only_exact_match(config, train, evaluation, *, noise: bool) -> float:
    """Exact match of the customer's causal LM alone (module docstring): LoRA of the point's rank on its own blocks
    (and its up-projection), AdamW at the point's learning rate, the point's batch size and epochs."""
    from peft import LoraConfig, get_peft_model
    from transformers import get_linear_schedule_with_warmup

    from splitpriv.batching import num_steps
    from splitpriv.data.instructions import encode_lm
    from splitpriv.models import family_of, load_model
    from splitpriv.tasks.causal_lm import EXACT_MATCH_TOKENS, collate_lm, exact_match, next_token_loss
    from splitpriv.tuning import tuning_config

    t, k, j = config.train, config.bottom_layers, config.tail_layers
    torch.manual_seed(t.seed)
    net, tokenizer = load_model(config.model, task="causal-lm", seed=t.seed)
    pad = tokenizer.pad_token_id
    train_x, eval_x = encode_lm(train, tokenizer, t.max_length), encode_lm(evaluation, tokenizer, t.max_length)
    targets = list(family_of(net).lora_targets)
    last_bottom = _customer_stack(net, k, j)
    tuning = tuning_config(config.method, **config.method_params)
    if tuning.method != "lora":
        raise ValueError(f"the local-only causal LM is tuned with LoRA; this point uses {tuning.method!r}")
    model = get_peft_model(net, LoraConfig(r=tuning.r, lora_alpha=tuning.alpha, lora_dropout=tuning.dropout,
                                           target_modules=list(tuning.target_modules or targets)))
    extra = _noisy_bridge(config, net, last_bottom, train_x, pad, t.seed) if noise else []
    params = [p for p in model.parameters() if p.requires_grad] + extra
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    total = num_steps(len(train_x), t.batch_size, t.epochs)
    schedule = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total), total)
    order = torch.Generator().manual_seed(t.seed)
    model.train()
    for _ in range(t.epochs):
        for index in torch.randperm(len(train_x), generator=order).split(t.batch_size):
            ids, mask, loss_mask = collate_lm(train_x, index, pad)
            loss = next_token_loss(model(input_ids=ids, attention_mask=mask).logits, ids, loss_mask * mask)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()

    def generate(prompt_ids, max_new_tokens):
        with torch.no_grad():
            ids = torch.tensor([prompt_ids])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=pad)
        return out[0, len(prompt_ids):].tolist()

    return exact_match(generate, tokenizer, eval_x, EXACT_MATCH_TOKENS)["exact_match"]
