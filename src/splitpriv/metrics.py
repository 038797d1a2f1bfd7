"""Utility metrics (scikit-learn)."""

from __future__ import annotations

import torch


def classification_metrics(labels, logits: torch.Tensor) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    predictions = logits.argmax(-1).tolist()
    labels = list(labels)
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, average="macro")),
        "n_eval": len(labels),
    }
