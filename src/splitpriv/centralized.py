"""The non-private baseline: the same model, tuning method, trainable weights, data order and seeds, trained
unsplit in one autograd graph with no noise and no wire. The split protocol with no noise must reproduce it
step for step (tests/test_training.py), so any accuracy gap in a private run is the price of privacy."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from splitpriv.batching import collate, encode_texts, eval_batches, num_steps, training_order
from splitpriv.config import TrainConfig
from splitpriv.metrics import classification_metrics
from splitpriv.models import load_model
from splitpriv.protocol import SessionConfig
from splitpriv.seeding import step_rng
from splitpriv.split import split_model
from splitpriv.tuning import apply_tuning


class CentralizedTrainer:
    def __init__(self, session: SessionConfig, train: TrainConfig, model: str | None = None):
        from transformers import get_linear_schedule_with_warmup

        self.session = session.validate()
        self.train_config = train.validate()
        base, self.tokenizer = load_model(model, num_labels=session.num_labels, seed=0, task=session.task)
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

    def _logits(self, ids, mask, step: int, train: bool) -> torch.Tensor:
        self.parts.bottom.train(train and self.train_bottom and self.session.dropout)
        with step_rng(self.train_config.seed, "customer", step):
            hidden = self.parts.bottom(input_ids=ids, attention_mask=mask)
        if not self.train_bottom:
            hidden = hidden.detach()
        self.tuned.module.train(train and self.session.dropout)
        with step_rng(self.session.seed, "vendor", step):
            return self.tuned.module(hidden, mask)

    def _update(self, loss: torch.Tensor) -> float:
        """Back-propagate ``loss`` and step every optimizer once; returns the loss."""
        loss.backward()
        for opt, sched in self.optimizers:
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def fit(self, texts, labels, *, progress: bool = True) -> dict:
        from tqdm.auto import tqdm

        cfg = self.train_config
        encodings = encode_texts(self.tokenizer, texts, cfg.max_length)
        label_tensor = torch.tensor(labels, dtype=torch.long)
        losses = []
        total = num_steps(len(encodings), cfg.batch_size, cfg.epochs)
        start = time.perf_counter()
        with tqdm(total=total, desc="train (centralized)", disable=not progress, leave=False) as bar:
            for step, _, index in training_order(len(encodings), cfg.batch_size, cfg.epochs, cfg.seed):
                ids, mask = collate(encodings, index, self.tokenizer.pad_token_id)
                loss = F.cross_entropy(self._logits(ids, mask, step, True), label_tensor[index])
                losses.append(self._update(loss))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
        seconds = time.perf_counter() - start
        return {"losses": losses, "train_seconds": seconds, "train_samples_per_s": len(encodings) * cfg.epochs / seconds}

    @torch.no_grad()
    def predict_logits(self, texts) -> torch.Tensor:
        encodings = encode_texts(self.tokenizer, texts, self.train_config.max_length)
        out = [self._logits(*collate(encodings, index, self.tokenizer.pad_token_id), 0, False)
               for index in eval_batches(len(encodings), self.train_config.eval_batch_size)]
        return torch.cat(out)

    def evaluate(self, texts, labels, *, progress: bool = True) -> dict:
        start = time.perf_counter()
        logits = self.predict_logits(texts)
        seconds = time.perf_counter() - start
        return {**classification_metrics(labels, logits), "eval_seconds": seconds,
                "eval_samples_per_s": len(texts) / seconds}
