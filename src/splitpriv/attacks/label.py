r"""Label inference: the vendor recovers the customer's private training labels from the gradients it receives.

What the vendor observes (a transcript of the messages of a training run, read by
:func:`~splitpriv.attacks.wire.read_transcript`): per training step the privatized representations and mask it
receives, the outputs it returns, and the gradient of the customer's loss w.r.t. those outputs. It never sees
labels; the evaluator runs the training (:mod:`splitpriv.simulation`) and aligns the true labels to the steps by
replaying :func:`splitpriv.batching.training_order`, which is how the customer orders its batches.

Attacks:

``exact`` (vendor-held head). The vendor returns logits and receives
:math:`g = \partial L/\partial \text{logits} = (\mathrm{softmax}(\text{logits}) - \mathrm{onehot}(y))/B`: the one
negative entry of each row *is* the label, so ``argmin(g)`` recovers every label used in the loss. Not applicable
when the customer holds the head (no ``[B, C]`` tensor crosses).

``whitebox_head`` (customer-held head). The customer's head starts from weights the vendor shipped, and the vendor
knows its own outputs :math:`H`. With the shipped head it computes, per sample, :math:`J_c = \partial
\text{logit}_c/\partial H` (summed over tokens, like the gradient) and solves :math:`g \approx \sum_c \delta_c J_c`
for :math:`\delta` in the sum-zero subspace (softmax − one-hot sums to 0) by least squares; the label is
``argmin(δ̂)``, the exact attack lifted through the known head. It degrades only as far as the customer's head
drifts from its initial weights and through the head's dropout. This goes beyond Li et al.; it is what the
white-box threat model allows.

The three attacks of Li et al., "Label Leakage and Protection in Two-party Split Learning" (ICLR 2022), on the
per-sample gradient vector (``[C]`` for logits; for ``[T, d]`` hidden-state gradients, the sum over tokens, which
is the ``[CLS]`` gradient for a BERT head since the head reads ``[CLS]`` only):

``norm``: score = ‖g‖. Li et al. show that under class imbalance the minority (positive) class has the larger
gradient norm. Prediction without labels: the ``prior``-minority class for the top ``prior[minority]`` share of
norms, the majority class for the rest; AUC = minority-vs-rest AUC of the norm (so < 0.5 means the premise fails).

``cosine`` (binary only): cosine similarity to a pivot gradient (the first observed sample): same-class gradients
point the same way, so the sign splits the samples into two groups. Which group is which class is resolved
*without labels* by the prior: the larger group gets the more frequent class of the vendor's public labelled data.
(With a known-label reference sample, as in Li et al., the sign would be resolved exactly.)

``cluster``: k-means (k = number of labels) on L2-normalised gradients. Clusters are mapped to labels without
labels by matching cluster sizes to the prior (largest cluster → most frequent class): ``cluster_accuracy``.
``cluster_oracle_accuracy`` maps clusters by the best assignment against the *true* labels (Hungarian): an upper
bound that uses the truth, reported for reference and never counted as ``success``.

``success`` = the best label-free attack's accuracy (for the vendor-held head: ``exact``). The **floor** is what the
vendor gets without any gradient: a classifier trained only on public labelled data (a slice of the same task's
train split, disjoint from the customer's), privatized by the vendor itself and pooled like
:mod:`splitpriv.attacks.attribute`, applied to the privatized representations seen on the wire.
``leakage_above_floor`` = ``success − floor_accuracy``.

Label DP (randomized response on the labels used in the loss, when :class:`~splitpriv.config.PrivacyConfig` has
``label_dp_epsilon``): the gradient attacks recover the *randomized* labels, so their accuracy against the true
labels is about :math:`e^\varepsilon / (e^\varepsilon + C - 1)` (``expected_rr_accuracy``).
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from splitpriv.attacks.attribute import representation_floor
from splitpriv.attacks.base import AttackResult
from splitpriv.attacks.registry import ATTACKS, Attack
from splitpriv.attacks.wire import WireStep, WireTap, read_transcript  # noqa: F401  (WireTap: re-exported)

LABEL_FREE_ATTACKS = ("exact", "whitebox_head", "norm", "cosine", "cluster")


# -- the attacks ----------------------------------------------------------------------------------------------------


def exact_label_attack(grad_logits: Tensor) -> Tensor:
    """Labels from ∂L/∂logits ``[N, C]``: the only negative entry of softmax − one-hot is the label."""
    if not isinstance(grad_logits, Tensor) or grad_logits.dim() != 2:
        raise ValueError(
            "the exact attack needs gradients w.r.t. logits of shape [N, C]; got "
            f"{tuple(grad_logits.shape) if isinstance(grad_logits, Tensor) else type(grad_logits).__name__} "
            "(with head='customer' no logit gradient crosses the wire)"
        )
    return grad_logits.argmin(dim=-1)


def per_sample_gradients(grads: Sequence[Tensor]) -> Tensor:
    """One vector per sample: ``[B, C]`` rows as is, ``[B, T, d]`` summed over tokens (padding rows are 0)."""
    out = []
    for g in grads:
        g = g.detach().double()
        out.append(g if g.dim() == 2 else g.sum(dim=1))
    return torch.cat(out)


def norm_attack_scores(grads: Tensor) -> Tensor:
    """Li et al.'s norm score: ‖g‖ per sample (``grads`` ``[N, D]``)."""
    return grads.double().norm(dim=-1)


def norm_attack(grads: Tensor, prior: Sequence[float]) -> tuple[Tensor, Tensor, int]:
    """Predictions (minority class for the top ``prior[minority]`` share of norms), the norm scores, and the
    minority class. Ties in the prior pick the higher class id (class 1, "positive", for binary tasks)."""
    prior = np.asarray(prior, dtype=float)
    minority = int(len(prior) - 1 - np.argmin(prior[::-1]))
    majority = int(np.argmax(prior))
    scores = norm_attack_scores(grads)
    n_min = int(round(prior[minority] * len(scores)))
    pred = torch.full((len(scores),), majority, dtype=torch.long)
    if n_min > 0:
        pred[scores.argsort(descending=True)[:n_min]] = minority
    return pred, scores, minority


def cosine_attack(grads: Tensor, prior: Sequence[float], *, pivot: int | Tensor = 0) -> tuple[Tensor, Tensor]:
    """Binary: sign of the cosine to a pivot gradient splits the classes; the larger group gets the prior's more
    frequent class. ``pivot`` is a row index of ``grads`` or a reference vector. Returns predictions and a class-1
    score (higher = more likely class 1)."""
    if len(prior) != 2:
        raise ValueError("the cosine attack is binary; use the cluster attack for more classes")
    g = grads.double()
    ref = g[pivot] if isinstance(pivot, int) else pivot.double()
    cos = torch.nn.functional.cosine_similarity(g, ref.unsqueeze(0).expand_as(g), dim=-1)
    same = cos >= 0
    frequent = int(np.argmax(prior))
    same_class = frequent if int(same.sum()) >= len(g) - int(same.sum()) else 1 - frequent
    pred = torch.where(same, same_class, 1 - same_class).long()
    score1 = cos if same_class == 1 else -cos
    return pred, score1


def cluster_attack(grads: Tensor, num_labels: int, prior: Sequence[float], *, seed: int = 0):
    """k-means on L2-normalised gradients; clusters mapped to labels by size against the prior (no labels used).

    Returns ``(predictions, class scores [N, C], cluster ids)``; pass the cluster ids to
    :func:`oracle_cluster_accuracy` for the truth-assisted upper bound."""
    from sklearn.cluster import KMeans

    x = torch.nn.functional.normalize(grads.double(), dim=-1).numpy()
    k = min(num_labels, len(x))
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)
    ids = km.labels_
    sizes = np.bincount(ids, minlength=k)
    by_size = np.argsort(-sizes, kind="stable")
    by_prior = np.argsort(-np.asarray(prior, dtype=float), kind="stable")
    mapping = {int(c): int(by_prior[i]) for i, c in enumerate(by_size)}
    pred = torch.tensor([mapping[int(c)] for c in ids], dtype=torch.long)
    dist = km.transform(x)
    scores = torch.full((len(x), num_labels), -1e9, dtype=torch.float64)
    for c, label in mapping.items():
        scores[:, label] = -torch.from_numpy(dist[:, c])
    return pred, scores, torch.from_numpy(ids)


def oracle_cluster_accuracy(cluster_ids: Tensor, labels: Tensor) -> float:
    """Accuracy of the best one-to-one cluster → label assignment, chosen with the TRUE labels (an upper bound)."""
    from scipy.optimize import linear_sum_assignment

    k = int(max(cluster_ids.max(), labels.max())) + 1
    counts = np.zeros((k, k))
    for c, y in zip(cluster_ids.tolist(), labels.tolist()):
        counts[c, y] += 1
    rows, cols = linear_sum_assignment(-counts)
    return float(counts[rows, cols].sum() / len(labels))


def whitebox_head_attack(observed: Sequence[WireStep], head: Callable[[Tensor], Tensor], num_labels: int):
    """Customer-held head: solve ``g ≈ Σ_c δ_c ∂logit_c/∂H`` with the vendor's copy of the shipped head at the
    vendor's own outputs ``H``; δ in the sum-zero subspace; label = argmin δ̂. Returns predictions and ``-δ̂``."""
    C = num_labels
    proj = torch.eye(C, dtype=torch.float64) - 1.0 / C  # onto sum-zero vectors
    preds, scores = [], []
    for s in observed:
        if s.outputs is None or s.outputs.dim() != 3:
            raise ValueError("the white-box head attack needs the vendor's last hidden states [B, T, d] per step")
        H = s.outputs.detach().float().requires_grad_(True)
        jac = []
        with torch.enable_grad():
            logits = head(H)
            for c in range(C):
                (grad,) = torch.autograd.grad(logits[:, c].sum(), H, retain_graph=c < C - 1)
                jac.append(grad.double().sum(dim=1))  # [B, d], summed over tokens like the observed gradient
        J = torch.stack(jac, dim=-1) @ proj  # [B, d, C]
        g = s.grad_outputs.detach().double().sum(dim=1).unsqueeze(-1)  # [B, d, 1]
        delta = (proj @ (torch.linalg.pinv(J) @ g)).squeeze(-1)  # [B, C]
        preds.append(delta.argmin(-1))
        scores.append(-delta)
    return torch.cat(preds), torch.cat(scores)


def _auc(labels: np.ndarray, scores: np.ndarray, num_labels: int) -> float:
    """Binary: AUC of class 1 against a class-1 score ``[N]``; multi-class: one-vs-rest macro AUC of ``[N, C]``."""
    from sklearn.metrics import roc_auc_score

    present = set(labels.tolist())
    if len(present) < 2:
        return float("nan")
    if scores.ndim == 1:
        return float(roc_auc_score(labels == 1 if num_labels == 2 else labels, scores))
    if num_labels == 2:
        return float(roc_auc_score(labels == 1, scores[:, 1] - scores[:, 0]))
    if len(present) < num_labels:
        return float("nan")
    z = scores - scores.max(axis=1, keepdims=True)
    prob = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return float(roc_auc_score(labels, prob, multi_class="ovr", labels=list(range(num_labels))))


def label_inference(
    observed: Sequence[WireStep],
    true_labels,
    *,
    head: str,
    num_labels: int | None = None,
    prior: Sequence[float] | None = None,
    whitebox_head: Callable[[Tensor], Tensor] | None = None,
    seed: int = 0,
) -> AttackResult:
    """Run every applicable label attack on the vendor's observations and score them against ``true_labels``.

    ``true_labels``: one label tensor per step (aligned with ``observed``) or one flat sequence in step order; used
    only to score. ``prior``: the class frequencies the vendor knows from public data (uniform if None), used by
    the label-free sign/cluster resolutions. ``whitebox_head``: the vendor's copy of the head it shipped
    (customer-held head), enabling the ``whitebox_head`` attack.
    """
    if head not in ("vendor", "customer"):
        raise ValueError(f"head must be 'vendor' or 'customer', got {head!r}")
    if not observed:
        raise ValueError("no observed training steps")
    grads = [s.grad_outputs for s in observed]
    if any(g is None for g in grads):
        raise ValueError("every observed step needs its gradient (BackwardRequest.grad_outputs)")
    if isinstance(true_labels, (list, tuple)) and true_labels and isinstance(true_labels[0], Tensor):
        y = torch.cat([t.reshape(-1) for t in true_labels]).long()
    else:
        y = torch.as_tensor(list(true_labels), dtype=torch.long)
    n = sum(g.shape[0] for g in grads)
    if len(y) != n:
        raise ValueError(f"{len(y)} true labels for {n} observed samples")
    dims = {g.dim() for g in grads}
    if head == "vendor" and dims != {2}:
        raise ValueError(f"head='vendor' expects logit gradients [B, C], got ranks {sorted(dims)}")
    if head == "customer" and dims != {3}:
        raise ValueError(f"head='customer' expects hidden-state gradients [B, T, d], got ranks {sorted(dims)}")
    C = int(num_labels or (grads[0].shape[1] if head == "vendor" else 2))
    prior = list(prior) if prior is not None else [1.0 / C] * C
    if len(prior) != C:
        raise ValueError(f"prior has {len(prior)} entries for {C} labels")
    y_np = y.numpy()
    vectors = per_sample_gradients(grads)

    metrics: dict = {"head": head, "num_labels": C, "n_samples": n, "n_steps": len(observed),
                     "majority_accuracy": Counter(y.tolist()).most_common(1)[0][1] / n,
                     "gradient_shape": list(grads[0].shape[1:]), "prior": [float(p) for p in prior]}

    def record(name: str, pred: Tensor, score) -> None:
        metrics[f"{name}_accuracy"] = float((pred == y).double().mean())
        metrics[f"{name}_auc"] = _auc(y_np, np.asarray(score), C)

    if head == "vendor":
        g = torch.cat([t.detach().double() for t in grads])
        record("exact", exact_label_attack(g), -g.numpy())
        metrics["exact_applicable"] = True
        # sanity of the channel: each row of softmax − onehot has exactly one negative entry and sums to 0
        metrics["exact_rows_one_negative"] = float(((g < 0).sum(-1) == 1).double().mean())
    else:
        metrics["exact_applicable"] = False
        metrics["exact_accuracy"] = None
        total = sum(float(t.double().pow(2).sum()) for t in grads)
        first = sum(float(t[:, 0].double().pow(2).sum()) for t in grads)
        metrics["grad_energy_at_first_token"] = first / total if total else float("nan")
        if whitebox_head is not None:
            pred, score = whitebox_head_attack(observed, whitebox_head, C)
            record("whitebox_head", pred, score.numpy())

    pred, scores, minority = norm_attack(vectors, prior)
    metrics["norm_accuracy"] = float((pred == y).double().mean())
    metrics["norm_auc"] = _auc((y_np == minority).astype(int), scores.numpy(), 2)
    metrics["norm_minority_class"] = minority
    if C == 2:
        pred, score1 = cosine_attack(vectors, prior)
        record("cosine", pred, score1.numpy())
    pred, scores, ids = cluster_attack(vectors, C, prior, seed=seed)
    record("cluster", pred, scores.numpy())
    metrics["cluster_oracle_accuracy"] = oracle_cluster_accuracy(ids, y)

    ran = [a for a in LABEL_FREE_ATTACKS if metrics.get(f"{a}_accuracy") is not None]
    best = "exact" if head == "vendor" else max(ran, key=lambda a: metrics[f"{a}_accuracy"])
    metrics["best_attack"] = best
    metrics["accuracy"] = metrics[f"{best}_accuracy"]
    metrics["auc"] = metrics[f"{best}_auc"]
    return AttackResult(attack="label_inference", success=metrics["accuracy"], metrics=metrics)


# -- the attack on a transcript, and its registry entry -------------------------------------------------------------


def split_public(full, limit: int, public_limit: int, seed: int):
    """``(customer rows, public rows)`` of one split: the customer's ``limit`` rows are those of
    ``load_dataset(..., limit=limit, seed=seed)``; ``public_limit`` others are the vendor's public labelled data."""
    from splitpriv.data.core import sample_indices
    from splitpriv.seeding import derive_seed

    customer_idx = list(sample_indices(len(full), limit, seed))
    taken = set(customer_idx)
    rest = [i for i in range(len(full)) if i not in taken]
    public_idx = sorted(random.Random(derive_seed(seed, "public")).sample(rest, min(public_limit, len(rest))))
    return full.subset(customer_idx), full.subset(public_idx)


def transcript_attack(messages, labels_per_step: Sequence[Tensor], knowledge, *, head: str, num_labels: int,
                      public_texts: Sequence[str], public_labels: Sequence[int], whitebox_head=None,
                      noise_scale_fn=None, seed: int = 0) -> AttackResult:
    """Every label attack on a training run's wire transcript (``[(direction, message), ...]``), with the vendor's
    public knowledge: its ``knowledge`` of the bottom and mechanism, public labelled data (prior and floor) and,
    for a customer-held head, its copy of the head it shipped. ``labels_per_step`` only scores."""
    tap = read_transcript(messages)
    observed = tap.observed()
    counts = Counter(public_labels)
    prior = [counts.get(c, 0) / len(public_labels) for c in range(num_labels)]
    result = label_inference(observed, labels_per_step, head=head, num_labels=num_labels, prior=prior,
                             whitebox_head=whitebox_head, seed=seed)
    floor = representation_floor(knowledge, public_texts, public_labels, observed, torch.cat(list(labels_per_step)),
                                 seed=seed, noise_scale_fn=noise_scale_fn)
    m = result.metrics
    m.update(floor)
    m["leakage_above_floor"] = result.success - floor["floor_accuracy"]
    crossed = {(kind, name, len(shape)) for _, kind, name, shape in tap.crossings}
    m["wire"] = sorted(f"{kind}.{name}:rank{rank}" for kind, name, rank in crossed)
    m["logits_crossed"] = any(kind in ("outputs", "backward") and len(shape) == 2 and shape[-1] == num_labels
                              for _, kind, _n, shape in tap.crossings)
    return result


@dataclass(frozen=True)
class LabelOptions:
    head: str = field(default="vendor", metadata={"help": "who holds the classification head: vendor or customer"})
    label_dp_epsilon: float | None = field(default=None, metadata={
        "help": "the customer's label DP (randomized response on its labels); None: none"})
    method: str = field(default="lora", metadata={"help": "the vendor's tuning method in the attacked run"})
    batch_size: int = field(default=32, metadata={"help": "the attacked run's batch size"})
    epochs: int = field(default=1, metadata={"help": "the attacked run's epochs"})
    public_limit: int = field(default=1000, metadata={
        "help": "public labelled rows of the task (disjoint from the customer's): the vendor's prior and floor"})


@ATTACKS.register("label")
class LabelEntry(Attack):
    description = "the customer's training labels from the gradients of a short split training run"
    kind = "label"
    Options = LabelOptions

    @staticmethod
    def applies(setting) -> str | None:
        if getattr(setting, "task", None) == "causal-lm":
            return "a causal-lm run has no class labels or head at the vendor: the response attack reads its answers"
        return None

    @staticmethod
    def run(evaluation, options):
        from splitpriv.data import load_dataset
        from splitpriv.parts import Head

        if options.head not in ("vendor", "customer"):
            raise ValueError(f"head must be 'vendor' or 'customer', got {options.head!r}")
        full = load_dataset(evaluation.dataset, "train")
        if full.labels is None:
            raise ValueError(f"dataset {evaluation.dataset!r} has no labels in its train split")
        data, public = split_public(full, evaluation.limit, options.public_limit, evaluation.seed)
        C = full.num_labels
        mech = evaluation.mechanism.to_config()
        if evaluation.progress:
            print(f"[lia] {full.name}: {len(data)} customer samples, head={options.head}, "
                  f"k={evaluation.n_bottom_layers}, mechanism={mech}, label_dp_epsilon={options.label_dp_epsilon}",
                  file=sys.stderr, flush=True)
        run = evaluation.training_run(data.texts, data.labels, num_labels=C, head=options.head, method=options.method,
                                      batch_size=options.batch_size, epochs=options.epochs,
                                      label_dp_epsilon=options.label_dp_epsilon)
        shipped = evaluation.shipped_model(C)
        cti = run.customer.cti  # the vendor is assumed to know the selected set (see splitpriv.privacy.cti)
        result = transcript_attack(
            run.messages, run.labels_per_step, evaluation.knowledge(public_text=False, loaded=shipped),
            head=options.head, num_labels=C, public_texts=public.texts, public_labels=public.labels,
            whitebox_head=Head(shipped[0]).eval() if options.head == "customer" else None,
            noise_scale_fn=cti.noise_scale if cti is not None else None, seed=evaluation.seed)
        result.metrics.update(dataset=full.name, n_bottom_layers=evaluation.n_bottom_layers, mechanism=mech,
                              cti=evaluation.cti, label_dp_epsilon=options.label_dp_epsilon, method=options.method,
                              batch_size=options.batch_size, epochs=options.epochs, seed=evaluation.seed,
                              n_public=len(public))
        if options.label_dp_epsilon is not None:
            from splitpriv.privacy.label_dp import keep_probability

            result.metrics["expected_rr_accuracy"] = keep_probability(float(options.label_dp_epsilon), C)
        return result


__all__ = ["LabelOptions", "WireStep", "WireTap", "cluster_attack", "cosine_attack", "exact_label_attack",
           "label_inference", "norm_attack", "norm_attack_scores", "oracle_cluster_accuracy", "read_transcript",
           "representation_floor", "split_public", "transcript_attack", "whitebox_head_attack"]
