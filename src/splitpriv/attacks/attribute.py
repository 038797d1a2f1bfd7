"""Attribute inference: the vendor guesses a private attribute of the author (gender, age group) from what the
customer sends.

Threat model. The honest-but-curious vendor knows the bottom it shipped, the tokenizer, the mechanism and its
parameters, and holds a small **auxiliary sample** of texts labelled with the attribute (here a slice of the
dataset's *train* split). It privatizes that sample itself, exactly as a customer would (same bottom, same
mechanism, its own noise generator), pools each sequence's representations into one feature vector and trains
classifiers. The **victim** is a slice of the *test* split (the customer's data, disjoint from the auxiliary
sample), privatized with a separate generator (the customer's secret noise), pooled the same way and classified.

Features: what the vendor sees per sequence is ``z`` ([T, d], real tokens where the attention mask is 1, zeros at
padding). We pool it as ``concat(mean over real tokens, max over real tokens)`` ([2d]); the mask is public, so this
needs nothing the vendor lacks.

Scoring. A classifier that always answers the most frequent attribute value already gets ``majority`` accuracy and
has learnt nothing about the text, so the figure is the **advantage**

    advantage = max(0, (accuracy − majority) / (1 − majority)),

with ``majority`` the accuracy of the best constant guess *on the victim set* (the share of its most frequent
value). That is conservative: the constant the attacker would actually pick from its auxiliary prior can only do
worse. ``success`` = the best classifier's advantage; 0 means nothing beyond the base rate leaked.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from splitpriv.attacks.base import AttackerKnowledge, AttackResult
from splitpriv.attacks.registry import ATTACKS, Attack
from splitpriv.candidates import eval_mode

CLASSIFIERS = ("logreg", "mlp")
LOGREG_CS = (1e-4, 1e-3, 1e-2, 1e-1)
ATTRIBUTE_DATASETS = ("blog_authorship", "trustpilot")


def advantage(accuracy: float, majority: float) -> float:
    """``(accuracy − majority) / (1 − majority)`` clipped at 0 below (0 when ``majority`` is 1)."""
    if not 0.0 <= majority <= 1.0:
        raise ValueError(f"majority must be in [0, 1], got {majority!r}")
    if majority >= 1.0:
        return 0.0
    return max(0.0, (float(accuracy) - majority) / (1.0 - majority))


def majority_accuracy(values: Sequence) -> float:
    """Accuracy of always answering the most frequent value of ``values``."""
    if len(values) == 0:
        raise ValueError("no values")
    return Counter(values).most_common(1)[0][1] / len(values)


def pool_representations(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, T, d]`` representations → ``[B, 2d]``: mean and max over the real tokens (``attention_mask == 1``)."""
    if hidden.dim() != 3 or tuple(attention_mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(
            f"need hidden [B, T, d] and attention_mask [B, T], got {tuple(hidden.shape)} and "
            f"{tuple(attention_mask.shape)}"
        )
    hidden = hidden.detach().float()
    mask = attention_mask.to(hidden.device).bool().unsqueeze(-1)
    count = mask.sum(1).clamp(min=1).float()
    mean = (hidden * mask).sum(1) / count
    maxed = hidden.masked_fill(~mask, float("-inf")).amax(1)
    maxed = torch.where(torch.isfinite(maxed), maxed, torch.zeros_like(maxed))
    return torch.cat([mean, maxed], dim=-1)


@torch.no_grad()
def privatized_features(
    knowledge: AttackerKnowledge,
    texts: Sequence[str],
    *,
    generator: torch.Generator,
    batch_size: int = 64,
    noise_scale_fn=None,
) -> np.ndarray:
    """Pooled privatized representations of ``texts`` as the customer would send them: the (frozen) bottom in eval
    mode, ``privatize`` with ``knowledge.mechanism`` and ``generator`` (zeros at padding), then
    :func:`pool_representations`. ``noise_scale_fn(input_ids)`` gives per-token noise scales (CTI)."""
    from splitpriv.batching import collate, encode_texts
    from splitpriv.privacy import privatize

    tokenizer, bottom = knowledge.tokenizer, knowledge.bottom
    encodings = encode_texts(tokenizer, list(texts), knowledge.max_length)
    out = []
    with eval_mode(bottom):
        for start in range(0, len(encodings), batch_size):
            index = torch.arange(start, min(len(encodings), start + batch_size))
            ids, mask = collate(encodings, index, tokenizer.pad_token_id)
            hidden = bottom(input_ids=ids, attention_mask=mask)
            scale = noise_scale_fn(ids) if noise_scale_fn is not None else None
            z = privatize(knowledge.mechanism, hidden, mask, generator=generator, noise_scale=scale)
            out.append(pool_representations(z, mask))
    d = 2 * int(knowledge.bottom.d_model)
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros((0, d))


def build_classifier(name: str, seed: int = 0):
    """A scikit-learn pipeline: standardisation + logistic regression (C by 3-fold CV) or a one-hidden-layer MLP."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "logreg":
        # the pooled features carry a weak signal in 2d = 768 dimensions: strong L2 regularisation wins, so the
        # grid stays small and low (C is chosen by 3-fold cross-validation on the auxiliary sample alone)
        clf = LogisticRegressionCV(Cs=LOGREG_CS, cv=3, max_iter=3000, random_state=seed)
    elif name == "mlp":
        clf = MLPClassifier(hidden_layer_sizes=(256,), alpha=1e-2, max_iter=300, early_stopping=True,
                            validation_fraction=0.15, n_iter_no_change=15, random_state=seed)
    else:
        raise ValueError(f"unknown classifier {name!r}: choose from {CLASSIFIERS}")
    return make_pipeline(StandardScaler(), clf)


def fit_and_score(train_x, train_y, test_x, test_y, *, classifiers=CLASSIFIERS, seed: int = 0) -> dict:
    """Train each classifier on ``(train_x, train_y)``; accuracy, macro-F1 and advantage on ``(test_x, test_y)``."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, f1_score

    train_y, test_y = list(train_y), list(test_y)
    majority = majority_accuracy(test_y)
    out = {}
    for name in classifiers:
        clf = build_classifier(name, seed)
        if len(set(train_y)) < 2:
            pred = [train_y[0]] * len(test_y)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                warnings.simplefilter("ignore", FutureWarning)  # scikit-learn's LogisticRegressionCV API notices
                clf.fit(train_x, train_y)
            pred = list(clf.predict(test_x))
        acc = float(accuracy_score(test_y, pred))
        out[name] = {
            "accuracy": acc,
            "macro_f1": float(f1_score(test_y, pred, average="macro", zero_division=0)),
            "advantage": advantage(acc, majority),
        }
    return out


def attribute_inference(
    knowledge: AttackerKnowledge,
    aux_texts: Sequence[str],
    aux_attr: Sequence[str],
    victim_texts: Sequence[str],
    victim_attr: Sequence[str],
    *,
    seed: int = 0,
    classifiers: Sequence[str] = CLASSIFIERS,
    batch_size: int = 64,
    aux_noise_scale_fn=None,
    victim_noise_scale_fn=None,
) -> AttackResult:
    """Train attribute classifiers on the vendor's privatized auxiliary sample, score them on the victim's.

    The auxiliary sample is privatized with the attacker's own generator, the victim's with a separate one (the
    customer's secret noise); ``victim_attr`` is used only to score. ``success`` = best advantage.
    """
    from splitpriv.seeding import derive_seed, generator

    if len(aux_texts) != len(aux_attr) or len(victim_texts) != len(victim_attr):
        raise ValueError("texts and attribute values must be row-aligned")
    if not aux_texts or not victim_texts:
        raise ValueError("need a non-empty auxiliary sample and victim set")
    unknown = [c for c in classifiers if c not in CLASSIFIERS]
    if unknown or not classifiers:
        raise ValueError(f"unknown classifiers {unknown}; choose from {CLASSIFIERS}")
    aux_x = privatized_features(knowledge, aux_texts, generator=generator(derive_seed(seed, "aia-attacker")),
                                batch_size=batch_size, noise_scale_fn=aux_noise_scale_fn)
    victim_x = privatized_features(knowledge, victim_texts, generator=generator(derive_seed(seed, "aia-customer")),
                                   batch_size=batch_size, noise_scale_fn=victim_noise_scale_fn)
    scores = fit_and_score(aux_x, aux_attr, victim_x, victim_attr, classifiers=classifiers, seed=seed)
    best = max(scores, key=lambda k: (scores[k]["advantage"], scores[k]["accuracy"]))
    majority = majority_accuracy(list(victim_attr))
    aux_major = Counter(aux_attr).most_common(1)[0][0]
    n = len(victim_attr)
    metrics = {
        "classifier": best,
        "accuracy": scores[best]["accuracy"],
        "macro_f1": scores[best]["macro_f1"],
        "advantage": scores[best]["advantage"],
        "majority_accuracy": majority,
        # what the attacker's own constant guess (its auxiliary majority value) scores on the victims
        "aux_majority_accuracy": sum(v == aux_major for v in victim_attr) / n,
        # sampling error of an accuracy near the base rate on n victims (for reading small advantages)
        "accuracy_stderr": math.sqrt(majority * (1 - majority) / n),
        "n_aux": len(aux_attr),
        "n_victim": n,
        "classes": sorted(set(aux_attr) | set(victim_attr)),
        "victim_class_counts": dict(sorted(Counter(victim_attr).items())),
        "features": "mean+max pooled privatized representations",
        **{f"{name}_{key}": value for name, d in scores.items() for key, value in d.items()},
    }
    return AttackResult(attack="attribute_inference", success=scores[best]["advantage"], metrics=metrics)


def _attribute_rows(ds, attribute: str):
    if attribute not in ds.attributes:
        raise ValueError(f"dataset {ds.name!r} has no attribute {attribute!r}; it has {sorted(ds.attributes)}")
    keep = [i for i, v in enumerate(ds.attributes[attribute]) if v is not None and str(v).strip() not in ("", "nan")]
    return keep


def representation_floor(knowledge, public_texts, public_labels, observed, true_labels: torch.Tensor, *,
                         seed: int = 0, noise_scale_fn=None) -> dict:
    """Accuracy of a classifier the vendor trains on *public* labelled texts (privatized by itself, pooled) when
    applied to the privatized representations on the wire (``observed``: :class:`~splitpriv.attacks.wire.WireStep`
    s): what leaks about the task's labels without any gradient."""
    from splitpriv.seeding import derive_seed, generator

    train_x = privatized_features(knowledge, public_texts, generator=generator(derive_seed(seed, "label-floor")),
                                  noise_scale_fn=noise_scale_fn)
    wire_x = torch.cat([pool_representations(s.hidden, s.attention_mask) for s in observed]).double().numpy()
    scores = fit_and_score(train_x, list(public_labels), wire_x, true_labels.tolist(), classifiers=("logreg",),
                           seed=seed)
    return {"floor_accuracy": scores["logreg"]["accuracy"], "floor_macro_f1": scores["logreg"]["macro_f1"]}




@dataclass(frozen=True)
class AttributeOptions:
    attribute: str = field(default="gender", metadata={"help": "the author attribute inferred: gender or age_group"})
    aux_limit: int = field(default=1000, metadata={
        "help": "the vendor's labelled auxiliary sample: rows of the dataset's train split"})
    classifiers: tuple = field(default=CLASSIFIERS, metadata={
        "help": f"classifiers trained on the auxiliary sample, any of {CLASSIFIERS}"})


@ATTACKS.register("aia")
class AttributeEntry(Attack):
    description = "an author attribute (gender, age group) from pooled privatized representations"
    kind = "attribute"
    Options = AttributeOptions

    @staticmethod
    def run(evaluation, options):
        """Auxiliary sample = ``aux_limit`` rows of train, victims = ``limit`` rows of test. A dataset without
        author attributes (sst2) falls back to blog_authorship, recorded in ``metrics["note"]``. With CTI the
        customer fits it on its own (victim) texts and task labels, and the vendor is assumed to know the selected
        set (:mod:`splitpriv.privacy.cti`), so it privatizes its auxiliary sample with the same per-token scales."""
        from splitpriv.data import load_dataset
        from splitpriv.data.loaders import canonical_dataset_name

        requested, attribute = evaluation.dataset, options.attribute
        key = canonical_dataset_name(requested)
        note = None
        if key not in ATTRIBUTE_DATASETS:
            note = f"{requested!r} has no author attributes; attribute inference ran on blog_authorship instead"
            key = "blog_authorship"
        knowledge = evaluation.knowledge(public_text=False)
        aux = load_dataset(key, "train", limit=options.aux_limit, seed=evaluation.seed)
        victim = load_dataset(key, "test", limit=evaluation.limit, seed=evaluation.seed)
        aux = aux.subset(_attribute_rows(aux, attribute))
        victim = victim.subset(_attribute_rows(victim, attribute))
        scale_fn = None
        if evaluation.cti:
            from splitpriv.batching import encode_texts
            from splitpriv.privacy import ContributingTokens, CTIConfig

            if victim.labels is None:
                raise ValueError(f"CTI needs the customer's task labels, and {key!r} has none")
            encodings = encode_texts(knowledge.tokenizer, victim.texts, evaluation.max_length)
            selected = ContributingTokens.fit(encodings, victim.labels,
                                              config=CTIConfig(eta_multiplier=evaluation.cti_multiplier),
                                              special_ids=knowledge.tokenizer.all_special_ids)
            scale_fn = selected.noise_scale
        mech = evaluation.mechanism.to_config()
        if evaluation.progress:
            print(f"[aia] {key}/{attribute}: {len(aux)} auxiliary, {len(victim)} victims, "
                  f"k={evaluation.n_bottom_layers}, mechanism={mech}", file=sys.stderr, flush=True)
        result = attribute_inference(
            knowledge, aux.texts, aux.attributes[attribute], victim.texts, victim.attributes[attribute],
            seed=evaluation.seed, classifiers=tuple(options.classifiers), aux_noise_scale_fn=scale_fn,
            victim_noise_scale_fn=scale_fn)
        result.metrics.update(dataset=key, requested_dataset=requested, attribute=attribute,
                              n_bottom_layers=evaluation.n_bottom_layers, mechanism=mech, cti=evaluation.cti,
                              seed=evaluation.seed)
        if note:
            result.metrics["note"] = note
        return result


__all__ = ["AttributeOptions", "advantage", "attribute_inference", "fit_and_score", "majority_accuracy",
           "pool_representations", "privatized_features", "representation_floor"]
