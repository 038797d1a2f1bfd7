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
        # one character per example, "1" where the prediction is right: what a paired test between two runs on the
        # same evaluation set needs (splitpriv.experiments.frontier)
        "correct": "".join("1" if p == y else "0" for p, y in zip(predictions, labels)),
    }
