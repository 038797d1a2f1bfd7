"""What the trained inverters (:mod:`.learned`, :mod:`.adaptive`) share: the training loop and ranked decoding.

The loop is plain empirical-risk minimisation on the vendor's own public pairs: AdamW, a linear warm-up over the
first tenth of the steps then a linear decay to zero, gradient norm clipped at 1, fresh batches (and, in ``step``,
fresh noise) at every epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from splitpriv.candidates import fixed_positions


def train_loop(model: nn.Module, opt: torch.optim.Optimizer, step: Callable[[torch.Tensor], torch.Tensor], *,
               n: int, epochs: int, batch_size: int, generator: torch.Generator, progress: str | None = None) -> list:
    """Run ``epochs`` shuffled passes over ``n`` examples; ``step(indices)`` returns a batch's loss. Returns the
    loss history; ``progress`` (a description) shows a bar."""
    total = epochs * math.ceil(n / batch_size)
    warm = max(1, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min((i + 1) / warm, max(0.0, (total - i) / max(total - warm, 1))))
    bar = None
    if progress and total:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=progress, leave=False)
    history = []
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=generator)
        for s in range(0, n, batch_size):
            loss = step(perm[s:s + batch_size])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            history.append(loss.item())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{history[-1]:.3f}")
    if bar is not None:
        bar.close()
    model.eval()
    return history


def sampled_candidates(target: torch.Tensor, frequent: torch.Tensor, allowed: torch.Tensor, n_sampled: int,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampled softmax: the batch's targets + the ``n_sampled // 2`` most frequent public tokens (the usual
    confusers under noise) + uniformly drawn ``allowed`` others; returns (sorted ids, the targets' indices in them)."""
    half = n_sampled // 2
    rand = allowed[torch.randint(len(allowed), (n_sampled - half,), generator=generator)]
    cand = torch.unique(torch.cat([target, frequent[:half], rand]))
    return cand, torch.searchsorted(cand, target)


@torch.no_grad()
def batched_log_probs(features: Callable, logits: Callable, hidden: torch.Tensor, attention_mask: torch.Tensor,
                      rows: torch.Tensor, cols: torch.Tensor, vocab_size: int, batch: int = 32) -> torch.Tensor:
    """Log-probabilities [n, V] at (rows, cols) (row-major): ``features(hidden, mask)`` per batch of sentences,
    then ``logits(features at the positions, their columns)``."""
    out = []
    for s in range(0, hidden.shape[0], batch):
        sel = (rows >= s) & (rows < s + batch)
        if not sel.any():
            continue
        t = int(attention_mask[s:s + batch].sum(1).max())
        u = features(hidden[s:s + batch, :t].float(), attention_mask[s:s + batch, :t])
        out.append(torch.log_softmax(logits(u[rows[sel] - s, cols[sel]], cols[sel]), dim=1))
    return torch.cat(out) if out else torch.empty(0, vocab_size)


@torch.no_grad()
def contextual_top_k(log_probs: Callable, hidden: torch.Tensor, attention_mask: torch.Tensor, tokenizer,
                     k: int = 5) -> torch.Tensor:
    """The ``k`` most probable tokens [N, T, k] from ``log_probs(hidden, mask, rows, cols)`` -> [n, V] at the
    positions to guess (row-major); the template's ids at its fixed positions."""
    fixed, ids = fixed_positions(tokenizer, attention_mask)
    rows, cols = (attention_mask.bool() & ~fixed).nonzero(as_tuple=True)
    out = ids[..., None].repeat(1, 1, k)
    if rows.numel():
        out[rows, cols] = log_probs(hidden, attention_mask, rows, cols).topk(k, dim=1).indices
    return out
