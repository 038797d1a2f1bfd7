"""Label differential privacy by randomized response (Warner 1965; Ghazi et al., "Deep Learning with Label
Differential Privacy", NeurIPS 2021).

RR_ε keeps a label y ∈ {0..K−1} with probability p = e^ε / (e^ε + K − 1) and otherwise outputs one of the K − 1
other labels uniformly. For every output ŷ and labels y, y′: P(ŷ | y) ≤ e^ε · P(ŷ | y′), so everything computed from
the randomized labels (the loss, its gradients, the trained model, whatever the vendor sees) is ε-label-DP.
Against a vendor with no other knowledge of a balanced binary label, any guess is right with probability at most
e^ε / (1 + e^ε) (0.73 at ε = 1). It does not hide what the *inputs* reveal about the label: the representations of
"a dull, lifeless film" say "negative" on their own (measure that floor separately).

Each sample's label is randomized once and reused every epoch: repeated draws would compose to kε.
"""

from __future__ import annotations

import math

import torch


def keep_probability(epsilon: float, num_classes: int) -> float:
    if math.isinf(epsilon):
        return 1.0
    return math.exp(epsilon) / (math.exp(epsilon) + num_classes - 1)


def randomized_response(labels: torch.Tensor, num_classes: int, epsilon: float, *, generator: torch.Generator) -> torch.Tensor:
    """Labels after RR_ε (see the module docstring); ``epsilon = inf`` returns them unchanged."""
    if not isinstance(epsilon, (int, float)) or math.isnan(epsilon) or epsilon <= 0:
        raise ValueError(f"label-DP epsilon must be > 0, got {epsilon!r}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")
    keep = torch.rand(labels.shape, generator=generator) < keep_probability(float(epsilon), num_classes)
    shift = torch.randint(1, num_classes, labels.shape, generator=generator)
    return torch.where(keep, labels, (labels + shift) % num_classes)
