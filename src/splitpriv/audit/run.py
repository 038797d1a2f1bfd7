"""The audit of one setting on the customer's own file: :func:`run_audit` returns the JSON-able ``audit.json``.

Every registered inversion attack that applies to the setting runs against the customer's texts
(:class:`~splitpriv.audit.evaluation.CustomerEvaluation`; the attacker trains on public WikiText-2, as in the attack
suite). Empirical privacy is ``1 − max(success)`` over them, exactly as ``splitpriv attack --attack all`` computes
it; the prior-only floor is the ``floor`` attack's recovery. Then: the figures per token class (all, content, task
words) and the attack that set each, a privacy curve over the noise parameter (cheap attacks only), the frontier's
measured utility where ``results/frontier.json`` has the setting, label leakage and attribute advantage on small
slices, and a sample of sentences as the vendor would read them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from splitpriv.audit.evaluation import (
    CustomerEvaluation,
    applicable_inversion,
    attack_options,
    run_attacks,
)
from splitpriv.audit.frontier import frontier_utility

FIGURES = {"token_recovery": "all tokens", "content_recovery": "content words", "task_recovery": "task words"}
CURVE_FACTORS = {"k0": (0.5, 0.75, 1.0, 1.5, 2.0), "deep": (0.5, 1.0, 2.0)}
CURVE_ATTACKS = {"k0": ("floor", "nn", "map"), "deep": ("floor", "learned")}
# `splitpriv train` draws the noise once per sentence when training sees it more than once (--noise auto)
TRAINING_DEFAULTS = {"noise": "once"}


@dataclass
class AuditConfig:
    """What the customer audits: its file and columns, the setting it would train with, and the audit's budget."""

    file: str
    text_column: str = "text"
    label_column: str | None = None
    attribute_column: str | None = None
    model: object = None
    n_bottom_layers: int = 0
    mechanism: dict = field(default_factory=lambda: {"name": "none"})
    privatizer: object = None
    cti: bool = False
    cti_multiplier: float = 2.0
    limit: int | None = 200
    seed: int = 0
    sample_size: int = 8
    label_limit: int = 64
    curve: bool = True
    frontier: str = "results/frontier.json"
    attack_options: dict = field(default_factory=dict)
    attacks: tuple | None = None
    max_length: int = 64
    progress: bool = True


def load_customer_file(config: AuditConfig):
    """The customer's rows (a :class:`~splitpriv.data.TextDataset`); a missing column or an empty file is a
    ``ValueError`` naming it."""
    from splitpriv.data import load_file

    attributes = (config.attribute_column,) if config.attribute_column else ()
    data = load_file(config.file, text_column=config.text_column, label_column=config.label_column,
                     attribute_columns=attributes, limit=config.limit, seed=config.seed)
    if len(data) == 0:
        raise ValueError(f"{config.file}: no rows to audit")
    return data


def check_options(config: AuditConfig) -> None:
    """An attack option no registered attack declares, or an attack name not registered, is an error."""
    from splitpriv.attacks.registry import ATTACKS, names_of_kind

    declared = {o for n in ATTACKS.names() for o in ATTACKS.get(n).option_names()}
    unknown = sorted(set(config.attack_options) - declared)
    if unknown:
        raise ValueError(f"unknown attack option(s) {unknown}; declared: {sorted(declared)}")
    wrong = sorted(set(config.attacks or ()) - set(names_of_kind("inversion")))
    if wrong:
        raise ValueError(f"unknown inversion attack(s) {wrong}; registered: {names_of_kind('inversion')}")


def _evaluation(config: AuditConfig, data, loaded, mechanism=None) -> CustomerEvaluation:
    from splitpriv.privacy import build_mechanism

    return CustomerEvaluation(data, privatizer=config.privatizer, n_bottom_layers=config.n_bottom_layers,
                              mechanism=build_mechanism(mechanism or dict(config.mechanism)), cti=config.cti,
                              cti_multiplier=config.cti_multiplier, seed=config.seed, model=loaded,
                              progress=config.progress, max_length=config.max_length)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _strongest(results: dict[str, dict], key: str = "success") -> tuple[str | None, float | None]:
    scored = {n: r[key] for n, r in results.items() if _finite(r.get(key))}
    if not scored:
        return None, None
    best = max(scored, key=scored.get)
    return best, scored[best]


def figures(results: dict[str, dict]) -> dict[str, dict]:
    """Per token class: the best recovery, the attack that set it and the floor's (top-5 too where ranked)."""
    floor = results.get("floor", {})
    out = {}
    for key, label in FIGURES.items():
        attack, value = _strongest(results, key)
        if attack is None:
            continue
        top_attack, top_value = _strongest(results, f"top5_{key}")
        out[key] = {"label": label, "recovery": value, "attack": attack, "floor": floor.get(key),
                    "top5_recovery": top_value, "top5_attack": top_attack,
                    "n_tokens": results[attack].get(f"n_{key.removesuffix('_recovery')}_tokens")
                    if key != "token_recovery" else results[attack].get("n_tokens")}
    return out


def verdict(success: float, floor: float | None) -> str:
    """One line in plain words."""
    words = round(10 * success)
    line = f"The vendor would read about {words} of every 10 words of your texts"
    if floor is not None and _finite(floor):
        blind = round(10 * floor)
        line += (f" — no more than a blind guess from public text alone ({blind} of 10)" if success <= floor + 0.01
                 else f" (a blind guess from public text alone gets {blind} of 10)")
    return line + "."


def _sample(evaluation: CustomerEvaluation, results: dict, n: int) -> dict:
    """The first ``n`` sentences, token by token, with the guess of the strongest attack that keeps one."""
    attack, _ = _strongest({k: v for k, v in results.items() if evaluation.guesses.get(k) is not None})
    if attack is None or n <= 0:
        return {"attack": None, "sentences": []}
    from splitpriv.attacks.base import real_token_mask

    _, mask, ids = evaluation.observations()
    guess = evaluation.guesses[attack]
    tok = evaluation.tokenizer
    real = real_token_mask(ids, mask, tok)
    sentences = []
    for row in range(min(n, ids.shape[0])):
        cols = real[row].nonzero().flatten().tolist()
        true = tok.convert_ids_to_tokens([int(ids[row, c]) for c in cols])
        guessed = tok.convert_ids_to_tokens([int(guess[row, c]) for c in cols])
        sentences.append({"text": evaluation.data.texts[row],
                          "tokens": [{"token": t, "guess": g, "recovered": t == g} for t, g in zip(true, guessed)]})
    return {"attack": attack, "sentences": sentences}


def _task_words(evaluation, n: int = 20) -> list[str] | None:
    """The ``n`` highest-scored task words, best first."""
    selected = evaluation.task_words
    if selected is None:
        return None
    order = selected.scores.argsort(descending=True)[:n]
    return evaluation.tokenizer.convert_ids_to_tokens(selected.token_ids[order].tolist())


def _noise_parameter(mechanism: dict) -> str | None:
    return next((k for k, v in mechanism.items() if k != "name" and _finite(v) and v > 0), None)


def privacy_curve(config: AuditConfig, data, loaded, evaluation, results: dict) -> dict:
    """Privacy (1 − the best of the cheap attacks) at a handful of values of the mechanism's noise parameter around
    the chosen one: the k = 0 kernel attacks, or the learned inversion at k > 0; frontier utility beside each."""
    from tqdm.auto import tqdm

    mechanism = evaluation.mechanism.to_config()
    param = _noise_parameter(mechanism)
    if param is None:
        return {"parameter": None, "points": [],
                "note": f"mechanism {mechanism['name']!r} has no noise parameter to vary"}
    depth = "k0" if config.n_bottom_layers == 0 else "deep"
    points = []
    for factor in tqdm(CURVE_FACTORS[depth], desc="audit: privacy curve", disable=not config.progress):
        setting = {**mechanism, param: mechanism[param] * factor}
        ev = evaluation if factor == 1.0 else _evaluation(config, data, loaded, setting)
        names, _ = applicable_inversion(ev, CURVE_ATTACKS[depth])
        res = {n: results[n] for n in names if n in results} if ev is evaluation else {}
        res.update(run_attacks(ev, [n for n in names if n not in res], config.attack_options,
                               progress=config.progress, desc=f"{param}={setting[param]:g}"))
        best, success = _strongest(res)
        if best is None:
            continue
        _, content = _strongest(res, "content_recovery")
        points.append({"factor": factor, "value": setting[param], "privacy": 1.0 - success,
                       "content_privacy": None if content is None else 1.0 - content, "strongest_attack": best,
                       "attacks": {n: r["success"] for n, r in res.items()},
                       "utility": frontier_utility(config.frontier, config.n_bottom_layers, setting,
                                                   config.privatizer)})
    return {"parameter": param, "chosen": mechanism[param], "attacks": list(CURVE_ATTACKS[depth]), "points": points}


def _step(config: AuditConfig, what: str) -> None:
    if config.progress:
        from tqdm.auto import tqdm

        tqdm.write(f"audit: {what}")


def _label_section(config: AuditConfig, evaluation) -> dict | None:
    from splitpriv.audit.leakage import label_leakage

    if evaluation.data.labels is None:
        return None
    if config.privatizer is not None:
        return {"note": "label leakage not measured: the attack suite's simulated training run takes no privatizer "
                        "yet"}
    _step(config, "label leakage: a short simulated training run, attacked from its wire")
    try:
        return label_leakage(evaluation, attack_options("label", config.attack_options), config.label_limit)
    except ValueError as exc:
        return {"note": f"label leakage not measured: {exc}"}


def _attribute_section(config: AuditConfig, evaluation) -> dict | None:
    from splitpriv.audit.leakage import attribute_advantage

    if not config.attribute_column:
        return None
    _step(config, f"attribute advantage: {config.attribute_column!r}")
    try:
        return attribute_advantage(evaluation, config.attribute_column)
    except ValueError as exc:
        return {"attribute": config.attribute_column, "note": f"attribute advantage not measured: {exc}"}


def run_audit(config: AuditConfig, loaded=None) -> dict:
    """The audit as a JSON-able dict (``audit.json``); ``loaded``: an already loaded ``(model, tokenizer)``."""
    from splitpriv.attacks.registry import ATTACKS, names_of_kind
    from splitpriv.attacks.runner import _jsonable
    from splitpriv.models import load_model

    t0 = time.perf_counter()
    check_options(config)
    declared = {o for n in names_of_kind("inversion") for o in ATTACKS.get(n).option_names()}
    config = replace(config, attack_options={**{k: v for k, v in TRAINING_DEFAULTS.items() if k in declared},
                                             **config.attack_options})
    data = load_customer_file(config)
    loaded = loaded or load_model(config.model)
    evaluation = _evaluation(config, data, loaded)
    names, skipped = applicable_inversion(evaluation, config.attacks)
    if not names:
        raise ValueError(f"no inversion attack applies to this setting: {skipped}")
    results = run_attacks(evaluation, names, config.attack_options, progress=config.progress,
                          desc="audit: attacks")
    strongest, success = _strongest(results)
    described = evaluation.describe()
    if "floor" in results:
        floor, floor_source = results["floor"]["success"], "floor"
    else:
        floor, floor_source = described["chance_recovery"], "chance (the most frequent token)"
    audit = {
        "file": str(Path(config.file)), "n_texts": len(data), "text_column": config.text_column,
        "label_column": config.label_column, "attribute_column": config.attribute_column,
        "setting": {"n_bottom_layers": config.n_bottom_layers, "mechanism": described["mechanism"],
                    "privatizer": config.privatizer, "cti": config.cti, "model": evaluation.model_source,
                    "seed": config.seed, "limit": config.limit, "attack_options": config.attack_options},
        "empirical_privacy": 1.0 - success, "success": success, "strongest_attack": strongest,
        "floor": floor, "floor_source": floor_source, "advantage_over_floor": success - floor,
        "attacks": {n: r["success"] for n, r in results.items()}, "results": results, "skipped": skipped,
        "figures": figures(results), "verdict": verdict(success, floor),
        "chance_recovery": described["chance_recovery"],
        "n_task_words": len(evaluation.task_words) if evaluation.task_words is not None else None,
        "task_words": _task_words(evaluation),
        "sample": _sample(evaluation, results, config.sample_size),
    }
    audit["curve"] = (privacy_curve(config, data, loaded, evaluation, results) if config.curve
                      else {"parameter": None, "points": [], "note": "not computed (--no-curve)"})
    audit["frontier"] = frontier_utility(config.frontier, config.n_bottom_layers, described["mechanism"],
                                         config.privatizer, explain=True)
    audit["labels"] = _label_section(config, evaluation)
    audit["attribute"] = _attribute_section(config, evaluation)
    audit["config"] = {f.name: getattr(config, f.name) for f in fields(config) if f.name != "model"}
    audit["config"]["model_name"] = config.model if isinstance(config.model, str) else None
    audit["seconds"] = time.perf_counter() - t0
    return _jsonable(audit)
