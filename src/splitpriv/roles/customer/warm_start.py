r"""Warm start of the customer's privatizer at home, on its own labels, before anything is sent.

A privatizer's projection starts untrained (random, or the vendor's pre-training on public text, which knows
nothing of the customer's task). Trained only through the split, it must learn which few directions carry the
task from gradients that the noise it is meant to survive has already blurred. The warm start trains it first, on
the customer's machine, in a model small enough to need no vendor:

.. math::  \hat y = \mathrm{softmax}\Big(A \,\frac{1}{|x|}\sum_{p \in x} \big(f(h_p) + n_p\big) + a\Big),
   \qquad n_p \sim \text{the customer's mechanism (fresh draws)},

with :math:`h` the bottom's output, :math:`f` the privatizer's customer half (trained), and the linear read-out
:math:`A, a` over the mean of the noisy tokens discarded afterwards. The bottom stays as shipped unless
``train_blocks``: then its ``k`` blocks (not the embeddings) are trained too, at ``blocks_lr``, so that they can
spread the sentence's label over every position, where the vendor's top can average the noise away while each
position's code says less about its own token. Cross-entropy on the customer's
labels (RR-randomized when label DP is on, the same labels the split training then uses), AdamW, ``epochs`` passes.
The bottom is frozen again afterwards (split training sends what this bottom computes).
The noise in the loop makes :math:`f` put the task where the noise cannot drown it, in a few directions that many
tokens share, which is what hides the rest of a token's identity.

Threat model: nothing leaves the customer during the warm start. The projection it produces is, like every
privatizer, treated as known to the vendor, and so are blocks trained here (the attacks load the customer's final
bottom): the evaluation attacks (:mod:`splitpriv.attacks.adaptive`) are trained
afterwards through the final weights, so the warm start adds no trust assumption. Randomness: ``seed`` fixes the
order, the read-out's initialisation and the noise of the loop (none of it is sent).
"""

from __future__ import annotations

import torch

from splitpriv.batching import collate, training_order
from splitpriv.roles.customer.steps import progress_bar


def warm_start_privatizer(bottom, mechanism, encodings: list[list[int]], labels: torch.Tensor, num_labels: int,
                          pad_id: int, *, epochs: int, lr: float, batch_size: int, seed: int,
                          train_blocks: bool = False, blocks_lr: float = 5e-5, require_privatizer: bool = True,
                          readout: torch.nn.Linear | None = None, progress: bool = False) -> dict:
    """Train ``bottom.privatizer`` in place (module docstring), and with ``train_blocks`` the bottom's blocks; the
    other weights stay as they are. Returns the loss of the first and last 10 steps and the step count. A given
    ``readout`` (width → labels) is the one trained, so the caller keeps it; ``require_privatizer=False`` also
    trains a bottom without a privatizer (the read-out, and the blocks with ``train_blocks``): the customer's model
    alone."""
    from splitpriv.privacy import privatize

    half = bottom.privatizer
    if half is None and require_privatizer:
        raise ValueError("a privatizer warm start needs a privatizer (e.g. --privatizer bottleneck:r=8)")
    g = torch.Generator().manual_seed(seed)
    from splitpriv.privacy.privatizer import build_privatizer

    width = bottom.d_model if half is None else build_privatizer(half.privatizer_config).width(bottom.d_model)
    readout = torch.nn.Linear(width, num_labels) if readout is None else readout
    with torch.no_grad():
        readout.weight.normal_(0.0, 0.02, generator=g)
        readout.bias.zero_()
    states = {p: p.requires_grad for p in bottom.parameters()}
    bottom.requires_grad_(False)
    own = [] if half is None else list(half.requires_grad_(True).parameters())
    groups = [{"params": own + list(readout.parameters()), "lr": lr}]
    if train_blocks:
        if not bottom.block_paths:
            raise ValueError("training the bottom's blocks in the warm start needs a bottom with blocks (-k >= 1)")
        prefixes = tuple(f"{path}." for path in bottom.block_paths)
        blocks = [p for n, p in bottom.named_parameters() if n.startswith(prefixes)]
        for p in blocks:
            p.requires_grad_(True)
        groups.append({"params": blocks, "lr": blocks_lr})
    mode = bottom.training
    bottom.eval()
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    losses = []
    order = list(training_order(len(encodings), batch_size, epochs, seed))
    bar = progress_bar(len(order), "warm start (at home)", progress)
    try:
        for _, _, index in order:
            ids, mask = collate(encodings, index, pad_id)
            u = bottom(input_ids=ids, attention_mask=mask)
            z = privatize(mechanism, u, mask, generator=g)
            m = mask.unsqueeze(-1).to(z.dtype)
            pooled = (z * m).sum(1) / m.sum(1).clamp_min(1.0)
            loss = torch.nn.functional.cross_entropy(readout(pooled), labels[index])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    finally:
        bar.close()
        for p, flag in states.items():
            p.requires_grad_(flag)
        bottom.train(mode)
    return {"warm_start_steps": len(losses), "warm_start_loss_first": sum(losses[:10]) / max(len(losses[:10]), 1),
            "warm_start_loss_last": sum(losses[-10:]) / max(len(losses[-10:]), 1)}
