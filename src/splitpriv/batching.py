"""Tokenising, ordering and padding batches: shared by the split customer and the centralized baseline so that
both see the same samples in the same order."""

from __future__ import annotations

from typing import Iterator

import torch


def encode_texts(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


def collate(encodings: list[list[int]], index: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` for the samples at ``index``."""
    rows = [encodings[i] for i in index.tolist()]
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def training_order(n: int, batch_size: int, epochs: int, seed: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield ``(step, epoch, sample indices)``; steps count from 1, each epoch a fresh seeded shuffle."""
    g = torch.Generator().manual_seed(seed)
    step = 0
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=g)
        for start in range(0, n, batch_size):
            step += 1
            yield step, epoch, perm[start : start + batch_size]


def num_steps(n: int, batch_size: int, epochs: int) -> int:
    return epochs * -(-n // batch_size)


def eval_batches(n: int, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, n, batch_size):
        yield torch.arange(start, min(n, start + batch_size))
