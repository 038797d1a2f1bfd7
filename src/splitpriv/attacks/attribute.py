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
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from splitpriv.attacks.base import AttackerKnowledge, AttackResult

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
    # eval mode (no dropout), then every submodule's own flag back: ``.train(flag)`` on a grafted bottom could
    # switch on dropout that the shared model had off
    flags = [(m, m.training) for m in bottom.modules()]
    bottom.eval()
    out = []
    try:
        for start in range(0, len(encodings), batch_size):
            index = torch.arange(start, min(len(encodings), start + batch_size))
            ids, mask = collate(encodings, index, tokenizer.pad_token_id)
            hidden = bottom(input_ids=ids, attention_mask=mask)
            scale = noise_scale_fn(ids) if noise_scale_fn is not None else None
            z = privatize(knowledge.mechanism, hidden, mask, generator=generator, noise_scale=scale)
            out.append(pool_representations(z, mask))
    finally:
        for m, flag in flags:
            m.training = flag
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


def _privacy_config(mechanism, eta, sigma, scale, cti=False, cti_multiplier=None, **extra):
    from dataclasses import fields

    from splitpriv.config import PrivacyConfig

    kwargs = {"mechanism": mechanism or "none", "eta": eta, "sigma": sigma, "scale": scale, "cti": bool(cti)}
    if cti_multiplier is not None:
        kwargs["cti_multiplier"] = cti_multiplier
    known = {f.name for f in fields(PrivacyConfig)}
    for key, value in extra.items():
        if value is None:
            continue
        if key not in known:
            raise ValueError(f"PrivacyConfig has no field {key!r} in this version of splitpriv")
        kwargs[key] = value
    return PrivacyConfig(**kwargs).validate()


def attacker_knowledge(model, n_bottom_layers: int, privacy, *, max_length: int = 64, loaded=None) -> AttackerKnowledge:
    """The vendor's knowledge: the bottom exactly as it ships it (initial weights), the tokenizer, the mechanism.
    ``loaded`` = an already loaded ``(model, tokenizer)`` pair to split instead of loading ``model``."""
    from splitpriv import load_model, split_model

    net, tokenizer = loaded if loaded is not None else load_model(model)
    parts = split_model(net, n_bottom_layers)
    parts.bottom.requires_grad_(False)
    parts.bottom.eval()
    return AttackerKnowledge(
        bottom=parts.bottom, tokenizer=tokenizer, mechanism=privacy.build_mechanism(),
        cti_multiplier=privacy.cti_multiplier if privacy.cti else None, max_length=max_length,
    )


def _attribute_rows(ds, attribute: str):
    if attribute not in ds.attributes:
        raise ValueError(f"dataset {ds.name!r} has no attribute {attribute!r}; it has {sorted(ds.attributes)}")
    keep = [i for i, v in enumerate(ds.attributes[attribute]) if v is not None and str(v).strip() not in ("", "nan")]
    return keep


def run_attribute_attack(
    *,
    dataset: str = "blog_authorship",
    attribute: str = "gender",
    n_bottom_layers: int = 0,
    mechanism: str = "none",
    eta: float | None = None,
    sigma: float | None = None,
    scale: float | None = None,
    aux_limit: int = 1000,
    limit: int = 500,
    seed: int = 0,
    model=None,
    progress: bool = True,
    cti: bool = False,
    cti_multiplier: float | None = None,
    classifiers: Sequence[str] = CLASSIFIERS,
    max_length: int = 64,
    **_,
) -> AttackResult:
    """Attribute inference on ``dataset`` (auxiliary = ``aux_limit`` rows of train, victims = ``limit`` rows of test).

    ``dataset="sst2"`` (which has no author attributes) falls back to blog_authorship, recorded in
    ``metrics["dataset"]``. With ``cti`` the customer fits CTI on its own (victim) texts and task labels, and the
    vendor is assumed to know the selected token set (see :mod:`splitpriv.privacy.cti`), so it privatizes its
    auxiliary sample with the same per-token scales; CTI needs task labels, which trustpilot lacks.
    """
    from splitpriv.data import load_dataset
    from splitpriv.data.loaders import _canonical

    requested = dataset
    key = _canonical(dataset)
    note = None
    if key not in ATTRIBUTE_DATASETS:
        note = f"{requested!r} has no author attributes; attribute inference ran on blog_authorship instead"
        key = "blog_authorship"
    privacy = _privacy_config(mechanism, eta, sigma, scale, cti, cti_multiplier)
    knowledge = attacker_knowledge(model, n_bottom_layers, privacy, max_length=max_length)
    aux = load_dataset(key, "train", limit=aux_limit, seed=seed)
    victim = load_dataset(key, "test", limit=limit, seed=seed)
    aux = aux.subset(_attribute_rows(aux, attribute))
    victim = victim.subset(_attribute_rows(victim, attribute))

    scale_fn = None
    if privacy.cti:
        from splitpriv.batching import encode_texts
        from splitpriv.privacy import ContributingTokens, CTIConfig

        if victim.labels is None:
            raise ValueError(f"CTI needs the customer's task labels, and {key!r} has none")
        encodings = encode_texts(knowledge.tokenizer, victim.texts, max_length)
        config = CTIConfig(fraction=privacy.cti_fraction, eta_multiplier=privacy.cti_multiplier)
        selected = ContributingTokens.fit(encodings, victim.labels, config=config,
                                          special_ids=knowledge.tokenizer.all_special_ids)
        scale_fn = selected.noise_scale
    if progress:
        print(f"[aia] {key}/{attribute}: {len(aux)} auxiliary, {len(victim)} victims, k={n_bottom_layers}, "
              f"mechanism={privacy.mechanism}", flush=True)
    result = attribute_inference(
        knowledge, aux.texts, aux.attributes[attribute], victim.texts, victim.attributes[attribute],
        seed=seed, classifiers=classifiers, aux_noise_scale_fn=scale_fn, victim_noise_scale_fn=scale_fn,
    )
    result.metrics.update(
        dataset=key, requested_dataset=requested, attribute=attribute, n_bottom_layers=n_bottom_layers,
        mechanism=privacy.mechanism, eta=eta, sigma=sigma, scale=scale, cti=privacy.cti, seed=seed,
    )
    if note:
        result.metrics["note"] = note
    return result


__all__ = ["advantage", "attribute_inference", "majority_accuracy", "pool_representations", "privatized_features",
           "run_attribute_attack"]
