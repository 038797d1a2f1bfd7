"""Task ``classification`` (config value ``sequence-classification``): a label per text, cross-entropy on the
logits of the vendor's head or of the head the customer keeps (``--head customer``).

Threat model: with the vendor's head the gradient sent up is softmax(logits) − onehot(label), the label itself;
a customer-held head sends ∂L/∂(last hidden states) instead. Scored by accuracy and macro-F1.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from splitpriv.batching import collate, encode_texts
from splitpriv.metrics import classification_metrics
from splitpriv.models import SEQUENCE_CLASSIFICATION
from splitpriv.parts import HEAD_WEIGHTS, load_head
from splitpriv.seeding import step_rng
from splitpriv.tasks.base import TASKS, Batches, Task

LABELS_FILE = "labels.json"


@TASKS.register("classification", aliases=(SEQUENCE_CLASSIFICATION,))
class Classification(Task):
    value = model_task = SEQUENCE_CLASSIFICATION
    end_file = HEAD_WEIGHTS
    end_trains = True
    resumable = True

    def load_data(self, config):
        from splitpriv.data import load_dataset

        train = load_dataset(config.dataset, "train", limit=config.train_limit, seed=config.train.seed)
        evaluation = load_dataset(config.dataset, config.eval_split, limit=config.eval_limit, seed=config.train.seed)
        if train.labels is None:
            raise ValueError(f"dataset {config.dataset!r} has no task label to fine-tune on")
        return train, evaluation

    def check_session(self, session) -> None:
        if session.n_tail_layers:
            raise ValueError(f"n_tail_layers={session.n_tail_layers} needs task 'causal-lm' (a classifier's head "
                             "stays with the top)")

    def num_labels(self, train) -> int:
        return train.num_labels

    def fit_args(self, train) -> tuple:
        return train.texts, train.labels

    def write_data_files(self, train, out_dir: Path) -> None:
        (Path(out_dir) / LABELS_FILE).write_text(json.dumps(list(train.label_names)))

    def batches(self, trainer, texts, labels=None) -> Batches:
        encodings = encode_texts(trainer.tokenizer, texts, trainer.train_config.max_length)
        pad = trainer.tokenizer.pad_token_id
        return Batches(len(encodings), lambda b, index: (*collate(b.encodings, index, pad), b.labels[index], index),
                       encodings, torch.tensor(labels, dtype=torch.long))

    def loss(self, logits, ids, mask, targets):
        return F.cross_entropy(logits, targets)

    def customer_end(self, directory: Path):
        return load_head(directory) if (Path(directory) / HEAD_WEIGHTS).exists() else None

    def apply_end(self, end, received, mask, *, step, train, seed, dropout):
        if end is None:
            return received
        if not train:
            end.eval()
            return end(received, mask)
        end.train(dropout)
        with step_rng(seed, "customer-head", step):
            return end(received, mask)

    def save_end(self, end, directory: Path) -> None:
        from safetensors.torch import save_file

        if end is not None:
            save_file({n: p.detach().contiguous() for n, p in end.named_parameters()}, str(directory / HEAD_WEIGHTS))

    def score(self, model, evaluation, *, progress: bool = False) -> dict:
        start = time.perf_counter()
        logits = model.predict_logits(evaluation.texts, progress=progress)
        seconds = time.perf_counter() - start
        return {**classification_metrics(evaluation.labels, logits), "eval_seconds": seconds,
                "eval_samples_per_s": len(evaluation.texts) / seconds if seconds else float("nan")}

    def record(self, config, train, evaluation, result: dict) -> dict:
        return {"accuracy": result.pop("accuracy"), "macro_f1": result.pop("macro_f1"), "n_train": len(train),
                "n_eval": len(evaluation), "train_source": train.source, **result}

    def compare(self, metrics: dict, baseline: dict) -> None:
        metrics["baseline_accuracy"] = baseline["accuracy"]
        metrics["baseline_macro_f1"] = baseline["macro_f1"]
        metrics["baseline_samples_per_s"] = baseline["train_samples_per_s"]
        metrics["accuracy_loss"] = baseline["accuracy"] - metrics["accuracy"]
