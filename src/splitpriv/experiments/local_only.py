r"""The customer alone: what it reaches with what it holds, no vendor — the figure a vendor's share must beat.

Threat model: none; this measures utility. The customer builds the bottom the vendor would ship it (the first
``k`` blocks, with the point's privatizer freshly initialised), and trains it as the point's warm start does
(:func:`~splitpriv.roles.customer.warm_start.warm_start_privatizer`: the privatizer, the blocks when the point
trains them at home, and a linear read-out of the mean noisy code) for as many passes as the point reads the data
in all (warm start + epochs), with the same mechanism in the loop, then classifies the dev set through the same
noisy path. ``noise=False`` gives the clean local model: ``headroom_pts`` = centralized − that, what the vendor's
model is worth on the task at all.
"""

from __future__ import annotations

import torch


def local_only_accuracy(config, train, evaluation, *, noise: bool = True) -> float:
    """Dev accuracy of the customer's model alone for a :class:`~splitpriv.runs.config.RunConfig` point (module
    docstring)."""
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
