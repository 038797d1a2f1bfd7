"""The non-private reference: the same model, split, tuning method, trainable weights, data order and seeds, trained
in one autograd graph (bottom → tuned top → the task's end) with no noise and no wire. The split protocol with no
noise reproduces it step for step (tests/runs/test_training.py, tests/runs/test_decoder_training.py), so any gap in a private
run is the price of privacy. One trainer for every task: the task supplies batches, loss, end and scores."""

from __future__ import annotations

import time

from types import SimpleNamespace

import torch

from splitpriv.batching import collate, encode_texts, eval_batches, num_steps, training_order
from splitpriv.config import TrainConfig
from splitpriv.models import load_model
from splitpriv.parts import split_model
from splitpriv.contract import SessionConfig
from splitpriv.seeding import step_rng
from splitpriv.tasks import task_of
from splitpriv.tasks.causal_lm import exact_match, local_generate, perplexity
from splitpriv.tuning import apply_tuning


class CentralizedTrainer:
    def __init__(self, session: SessionConfig, train: TrainConfig, model: str | None = None):
        from transformers import get_linear_schedule_with_warmup

        self.session = session.validate()
        self.task = task_of(self.session.task)
        self.train_config = train.validate()
        base, self.tokenizer = load_model(model, num_labels=session.num_labels, seed=0, task=session.model_task)
        base.requires_grad_(False)
        self.parts = split_model(base, session.n_bottom_layers, session.n_tail_layers if session.causal else None)
        with step_rng(session.seed, "vendor-init"):
            self.tuned = apply_tuning(self.parts.top, session.tuning)
        groups = [(self.tuned.parameters(), session.lr)]
        self.train_bottom = train.bottom == "trained"
        if self.train_bottom:
            self.parts.bottom.requires_grad_(True)
            groups.append((list(self.parts.bottom.parameters()), train.bottom_lr))
        total, warmup = session.total_steps, int(session.warmup_ratio * session.total_steps)
        self.optimizers = []
        for params, lr in groups:
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=session.weight_decay)
            self.optimizers.append((opt, get_linear_schedule_with_warmup(opt, warmup, total)))
        self.end = self.task.centralized_end(self.parts, self.train_bottom)

    def _logits(self, ids, mask, step: int, train: bool) -> torch.Tensor:
        self.parts.bottom.train(train and self.train_bottom and self.session.dropout)
        with step_rng(self.train_config.seed, "customer", step):
            hidden = self.parts.bottom(input_ids=ids, attention_mask=mask)
        if not self.train_bottom:
            hidden = hidden.detach()
        self.tuned.module.train(train and self.session.dropout)
        with step_rng(self.session.seed, "vendor", step):
            out = self.tuned.module(hidden, mask)
        return out if self.end is None else self.end(out, mask)

    def logits_of(self, ids, mask) -> torch.Tensor:
        return self._logits(ids, mask, 0, False)

    def _update(self, loss: torch.Tensor) -> float:
        """Back-propagate ``loss`` and step every optimizer once; returns the loss."""
        loss.backward()
        for opt, sched in self.optimizers:
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def fit(self, data, labels=None, *, progress: bool = True) -> dict:
        from tqdm.auto import tqdm

        cfg = self.train_config
        batches = self.task.batches(self, data, labels)
        losses = []
        total = num_steps(batches.n, cfg.batch_size, cfg.epochs)
        start = time.perf_counter()
        with tqdm(total=total, desc="train (centralized)", disable=not progress, leave=False) as bar:
            for step, _, index in training_order(batches.n, cfg.batch_size, cfg.epochs, cfg.seed):
                ids, mask, targets, _ = batches.batch(index)
                losses.append(self._update(self.task.loss(self._logits(ids, mask, step, True), ids, mask, targets)))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
        seconds = time.perf_counter() - start
        return {"losses": losses, "train_seconds": seconds, "train_samples_per_s": batches.n * cfg.epochs / seconds}

    @torch.no_grad()
    def predict_logits(self, texts, *, progress: bool = False) -> torch.Tensor:
        encodings = encode_texts(self.tokenizer, texts, self.train_config.max_length)
        out = [self._logits(*collate(encodings, index, self.tokenizer.pad_token_id), 0, False)
               for index in eval_batches(len(encodings), self.train_config.eval_batch_size)]
        return torch.cat(out)

    def evaluate(self, texts, labels, *, progress: bool = True) -> dict:
        return self.task.score(self, SimpleNamespace(texts=texts, labels=labels), progress=progress)

    def perplexity(self, examples) -> dict:
        return perplexity(self.logits_of, examples, self.tokenizer.pad_token_id, self.train_config.eval_batch_size)

    def generate(self, prompt_ids: list[int], max_new_tokens: int = 8) -> list[int]:
        self.tuned.module.eval()
        parts = SimpleNamespace(bottom=self.parts.bottom, top=self.tuned.module, tail=self.parts.tail)
        return local_generate(parts, prompt_ids, max_new_tokens, stop_ids={self.tokenizer.eos_token_id})

    def exact_match(self, examples, max_new_tokens: int = 8) -> dict:
        return exact_match(self.generate, self.tokenizer, examples, max_new_tokens)
