"""The non-private causal-LM baseline: the same model, split (k, j), LoRA on the middle, data order and seeds, trained
in one autograd graph with no noise and no wire. Split training without noise reproduces it step for step
(tests/test_decoder_training.py), so a gap in a private run is the price of privacy."""

from __future__ import annotations

import time
from types import SimpleNamespace

import torch

from splitpriv.batching import training_order
from splitpriv.causal import collate_lm, exact_match, local_generate, next_token_loss, perplexity
from splitpriv.centralized import CentralizedTrainer
from splitpriv.config import TrainConfig
from splitpriv.protocol import SessionConfig


class CentralizedLM(CentralizedTrainer):
    """:class:`CentralizedTrainer` for a causal-LM session: bottom → tuned middle → tail in one graph."""

    def __init__(self, session: SessionConfig, train: TrainConfig, model: str | None = None):
        if not session.causal:
            raise ValueError(f"CentralizedLM needs a causal-lm session, got task {session.task!r}")
        super().__init__(session, train, model)
        if self.train_bottom:
            self._untie_tail()

    def _untie_tail(self) -> None:
        """The customer's tail is its own frozen copy: a trained bottom's embeddings do not move a tied LM head."""
        for module in self.parts.tail.modules():
            for name, p in list(module.named_parameters(recurse=False)):
                setattr(module, name, torch.nn.Parameter(p.detach().clone(), requires_grad=False))

    def _logits(self, ids, mask, step: int, train: bool) -> torch.Tensor:
        return self.parts.tail(super()._logits(ids, mask, step, train), mask)

    def fit(self, examples, labels=None, *, progress: bool = False) -> dict:
        cfg = self.train_config
        losses, start = [], time.perf_counter()
        for step, _, index in training_order(len(examples), cfg.batch_size, cfg.epochs, cfg.seed):
            ids, mask, targets = collate_lm(examples, index, self.tokenizer.pad_token_id)
            losses.append(self._update(next_token_loss(self._logits(ids, mask, step, True), ids, targets * mask)))
        seconds = time.perf_counter() - start
        return {"losses": losses, "train_seconds": seconds, "train_samples_per_s": len(examples) * cfg.epochs / seconds}

    def perplexity(self, examples) -> dict:
        return perplexity(lambda ids, mask: self._logits(ids, mask, 0, False), examples, self.tokenizer.pad_token_id,
                          self.train_config.eval_batch_size)

    def generate(self, prompt_ids: list[int], max_new_tokens: int = 8) -> list[int]:
        self.tuned.module.eval()
        parts = SimpleNamespace(bottom=self.parts.bottom, top=self.tuned.module, tail=self.parts.tail)
        return local_generate(parts, prompt_ids, max_new_tokens, stop_ids={self.tokenizer.eos_token_id})

    def exact_match(self, examples, max_new_tokens: int = 8) -> dict:
        return exact_match(self.generate, self.tokenizer, examples, max_new_tokens)
