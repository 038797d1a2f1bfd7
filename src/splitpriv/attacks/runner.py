"""``run_attack``: one attack (or all applicable inversion attacks) on one setting, as a JSON-able dict.

The runner is the evaluator and plays both sides (:class:`~splitpriv.attacks.evaluation.Evaluation`: it
simulates the customer, hands the attacks only the vendor's view and scores their guesses against the truth).
Empirical privacy of a setting is ``1 − max(success)`` over the applicable inversion attacks, the prior-only floor
among them (it sets the max only when no attack beats a blind guess); ``"all"`` also reports the floor, each attack's
advantage over it, and the privacy of content words and of CTI's contributing words (:func:`summary`).

Attacks come from the registry (:mod:`splitpriv.attacks.registry`): each declares its kind, its options and what
it applies to. ``"all"`` runs every registered inversion attack that applies (token recovery is comparable across
them) and the set-level attack (reported as ``set_recovery`` beside ``set_floor``, never in the token figure), and
lists the attacks it skipped with the reason (``skipped``); attribute and label inference measure something else
and are run on their own.

Keywords of :func:`run_attack`: the setting (``dataset``, ``split``, ``n_bottom_layers``, ``mechanism`` as a name,
a config dict ``{"name": "dchi", "eta": 10}`` or a built mechanism, ``cti``, ``cti_multiplier``, ``limit``,
``seed``, ``model``, ``max_length`` (tokenizer truncation), ``public_splits`` (the WikiText-2 splits the vendor
holds)); any parameter a registered mechanism declares (``eta=10``; ``None`` is ignored); and the options of the
attack (:func:`~splitpriv.attacks.registry.attack_option_help` lists them; with ``"all"`` each attack takes its own).

Command line (prints JSON; ``--table`` runs the grid of the report)::

    python -m splitpriv.attacks.runner all --k 0 --mechanism dchi --eta 10 --limit 200
    python -m splitpriv.attacks.runner --table --limit 200
"""

from __future__ import annotations

import inspect
import json
import math
import time

import torch

from splitpriv.attacks.base import AttackResult
from splitpriv.attacks.evaluation import Evaluation
from splitpriv.attacks.registry import ATTACKS as REGISTRY
from splitpriv.attacks.registry import Setting, attack_option_help, names_of_kind

__all__ = ["Evaluation", "applicable", "attack_option_help", "attack_specs", "evaluate", "run_attack",
           "run_label_attack", "skipped_specs", "summary"]


def __getattr__(name: str):
    """``ATTACKS`` / ``INVERSION_ATTACKS`` / ``OTHER_ATTACKS``: attack names, computed from the registry."""
    if name == "INVERSION_ATTACKS":
        return tuple(names_of_kind("inversion"))
    if name == "OTHER_ATTACKS":
        return tuple(n for n, entry in REGISTRY.items() if entry.kind != "inversion")
    if name == "ATTACKS":
        return (*REGISTRY.names(), "all")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def applicable(attack: str, n_bottom_layers: int, cti: bool, mechanism=None) -> bool:
    """Whether ``attack`` applies to a setting (its registry entry's ``applies``)."""
    return REGISTRY.get(attack).applies(Setting(int(n_bottom_layers), bool(cti), mechanism)) is None


def _jsonable(x):
    if isinstance(x, float):
        return None if math.isnan(x) or math.isinf(x) else x
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _jsonable(x.tolist())
    return x


SETTING_KEYS = tuple(p for p in inspect.signature(Evaluation.__init__).parameters if p != "self")


def _per_attack(attack: str, options: dict) -> dict[str, dict]:
    """``{attack name: its options}``; ``"all"`` gives every inversion attack the options it declares (an option
    that none declares is an error)."""
    if attack != "all":
        return {REGISTRY.canonical(attack): options}
    names = names_of_kind("inversion") + names_of_kind("set")
    accepted = sorted({o for n in names for o in REGISTRY.get(n).option_names()})
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"attack 'all': unknown option(s) {unknown}; accepted: {accepted}")
    return {n: {k: v for k, v in options.items() if k in REGISTRY.get(n).option_names()} for n in names}


def _prepare(attack: str, setting_kw: dict, kw: dict):
    """The evaluation, ``{attack name: options}`` of the attacks to run (``"all"``: those that apply) and
    ``{attack name: why it does not apply}`` of those ``"all"`` skips."""
    from splitpriv.privacy import build_mechanism, mechanism_parameters

    declared = mechanism_parameters()
    params = {k: kw.pop(k) for k in list(kw) if k in declared}
    setting_kw["mechanism"] = build_mechanism(setting_kw.get("mechanism"),
                                              **{k: v for k, v in params.items() if v is not None})
    evaluation = Evaluation(**setting_kw)
    options = {n: REGISTRY.get(n).options(o) for n, o in _per_attack(attack, kw).items()}
    reasons = {n: REGISTRY.get(n).applies(evaluation) for n in options}
    if attack == "all":
        return (evaluation, {n: o for n, o in options.items() if reasons[n] is None},
                {n: r for n, r in reasons.items() if r is not None})
    ((name, reason),) = reasons.items()
    if reason is not None:
        raise ValueError(f"attack {name!r} does not apply to k={evaluation.n_bottom_layers}, cti={evaluation.cti}"
                         f"{', privatized' if evaluation.privatized else ''}: {reason}")
    return evaluation, options, {}


def _run(evaluation: Evaluation, name: str, options) -> dict:
    t0 = time.perf_counter()
    out = REGISTRY.get(name).run(evaluation, options).to_dict()
    out["seconds"] = time.perf_counter() - t0
    return out


def evaluate(attack: str, **kw) -> AttackResult:
    """One attack on one setting (the keywords of :func:`run_attack`), as its :class:`AttackResult`."""
    setting_kw = {k: kw.pop(k) for k in SETTING_KEYS if k in kw}
    evaluation, options, _ = _prepare(attack, setting_kw, kw)
    ((name, opts),) = options.items()
    return REGISTRY.get(name).run(evaluation, opts)


def run_label_attack(**kw) -> AttackResult:
    """The label attack (``evaluate("label", **kw)``): a short split training run attacked from its transcript."""
    return evaluate("label", **kw)


def run_attack(attack: str, *, dataset="sst2", split="dev", n_bottom_layers=0, mechanism="none", cti=False,
               cti_multiplier=2.0, limit=200, seed=0, model=None, progress=True, max_length=64,
               public_splits=("valid", "test"), vendor=None, privatizer=None, bottom=None, customer_train_limit=None,
               **kw) -> dict:
    """Run ``attack`` (a registered name or ``"all"``) on ``limit`` texts of ``dataset``/``split``; a JSON-able dict
    with at least ``attack``, ``success`` (0–1) and ``empirical_privacy``; for ``"all"`` also ``results`` (per
    attack) and ``strongest_attack``. ``privatizer`` (a spec, attached fresh) or ``bottom`` (a bottom as shipped, its
    privatizer's final weights included) evaluate a privatized split. ``model`` is a model name/folder (``None`` = MiniLM) or a loaded
    ``(model, tokenizer)`` pair. ``customer_train_limit``: the customer trains on that seeded sample of the train
    split, so the rest of it is public in-domain text. ``kw``: mechanism parameters and attack options (module
    docstring)."""
    setting_kw = dict(dataset=dataset, split=split, n_bottom_layers=n_bottom_layers, mechanism=mechanism, cti=cti,
                      cti_multiplier=cti_multiplier, limit=limit, seed=seed, model=model, progress=progress,
                      max_length=max_length, public_splits=public_splits, vendor=vendor, privatizer=privatizer,
                      bottom=bottom, customer_train_limit=customer_train_limit)
    evaluation, options, skipped = _prepare(attack, setting_kw, dict(kw))
    from tqdm.auto import tqdm

    results = {}
    with tqdm(options.items(), desc="attacks", disable=not progress or len(options) < 2, dynamic_ncols=True) as bar:
        for name, opts in bar:
            bar.set_postfix(attack=name)
            results[name] = _run(evaluation, name, opts)
    if attack != "all":
        (name, result), = results.items()
        if REGISTRY.get(name).kind not in ("inversion", "set"):
            return _jsonable(result)
        return _jsonable({**result, **{k: v for k, v in evaluation.describe().items() if k not in result}})
    tokens = [r for n, r in results.items() if REGISTRY.get(n).kind == "inversion"]
    best = max(tokens, key=lambda r: r["success"])
    return _jsonable({
        "attack": "all", "success": best["success"], "empirical_privacy": 1.0 - best["success"],
        "strongest_attack": best["attack"], "results": results, "skipped": skipped, **summary(results),
        **evaluation.describe(),
    })


def summary(results: dict[str, dict]) -> dict:
    """What ``"all"`` adds over the strongest attack (``results``: per attack, as ``run`` returns them, updated in
    place with ``advantage_over_floor``): the prior-only ``floor``; ``content_privacy`` = 1 − the best content-word
    recovery, ``contributing_privacy`` likewise on CTI's contributing words (when measured), ``top5_recovery`` the
    best top-5 recovery of the attacks that rank candidates."""
    floor = results.get("floor", {}).get("success")
    out = {"floor": floor}
    sets = [r for r in results.values() if r.get("set_floor") is not None]
    if sets:
        best_set = max(sets, key=lambda r: r["set_recovery"])
        out.update(set_recovery=best_set["set_recovery"], set_floor=best_set["set_floor"])
    for r in results.values():
        if r.get("set_floor") is None:
            r["advantage_over_floor"] = None if floor is None else r["success"] - floor
    for words in ("content", "contributing"):
        seen = {n: r[f"{words}_recovery"] for n, r in results.items()
                if isinstance(r.get(f"{words}_recovery"), float) and not math.isnan(r[f"{words}_recovery"])}
        if seen:
            best = max(seen, key=seen.get)
            out[f"{words}_privacy"], out[f"strongest_{words}_attack"] = 1.0 - seen[best], best
    ranked = {n: r["top5_token_recovery"] for n, r in results.items() if r.get("top5_token_recovery") is not None}
    if ranked:
        out["top5_recovery"] = max(ranked.values())
    return out


def skipped_specs(attacks: list, setting) -> dict[str, str]:
    """``{attack name: why it does not apply to setting}`` for the attacks of ``attacks`` (as for
    :func:`attack_specs`) that it drops: what a record lists instead of a silent drop."""
    out = {}
    for item in attacks:
        name = item if isinstance(item, str) else item.get("attack")
        for n in _per_attack(name, {}):
            reason = REGISTRY.get(n).applies(setting)
            if reason is not None:
                out[n] = reason
    return out


def attack_specs(attacks: list, setting) -> list[dict]:
    """The experiment grid's attack list for one setting: each item a name or ``{"attack": name, **keywords}``
    (keywords: setting keys of :func:`run_attack`, mechanism parameters, the attack's options). Every option is
    checked against the attack's ``Options`` (an unknown one is an error naming the attack and the accepted ones);
    attacks that do not apply to ``setting`` (``n_bottom_layers``, ``cti``, ``mechanism``) are dropped; ``"all"``
    stands for every registered inversion and set-level attack. Returns ``{"attack": canonical name,
    **its keywords}``."""
    from splitpriv.privacy import mechanism_parameters

    passthrough = set(SETTING_KEYS) | set(mechanism_parameters())
    specs = []
    for item in attacks:
        spec = {"attack": item} if isinstance(item, str) else dict(item)
        if "attack" not in spec:
            raise ValueError(f"an attack spec needs an 'attack' name, got {item!r}")
        shared = {k: v for k, v in spec.items() if k in passthrough}
        options = {k: v for k, v in spec.items() if k != "attack" and k not in passthrough}
        for name, own in _per_attack(spec["attack"], options).items():
            REGISTRY.get(name).options(own)
            if REGISTRY.get(name).applies(setting) is None:
                specs.append({"attack": name, **shared, **own})
    return specs


# ---------------------------------------------------------------------------------------------------- CLI
TABLE = [dict(n_bottom_layers=0, mechanism={"name": "dchi", "eta": e}) for e in (5.0, 10.0, 20.0)] + [
    dict(n_bottom_layers=k, mechanism="none") for k in (1, 2, 3)]


def _table(limit: int, seed: int, progress: bool, kw: dict) -> list[dict]:
    from splitpriv.models import load_model

    loaded = load_model()
    rows = []
    for setting in TABLE:
        t0 = time.perf_counter()
        out = run_attack("all", **setting, limit=limit, seed=seed, model=loaded, progress=progress, **kw)
        out["seconds"] = time.perf_counter() - t0
        rows.append(out)
        print(_row(out), flush=True)
    return rows


def _row(out: dict) -> str:
    mech = out["mechanism"]
    name = mech["name"] + "".join(f" {k}={v:g}" for k, v in mech.items() if k != "name")
    cells = "  ".join(f"{a}={r['success']:.3f}" for a, r in out["results"].items())
    return (f"k={out['n_bottom_layers']} {name:12s} {cells}  | max={out['success']:.3f} ({out['strongest_attack']}) "
            f"privacy={out['empirical_privacy']:.3f} content={out.get('content_privacy', float('nan')):.3f} "
            f"floor={out['floor'] if out.get('floor') is not None else float('nan'):.3f}  [{out['seconds']:.0f}s]")


def main(argv=None) -> None:
    import argparse

    from splitpriv.privacy import MECHANISMS, mechanism_parameters

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("attack", nargs="?", default="all", choices=[*REGISTRY.names(), "all"])
    ap.add_argument("--table", action="store_true", help="run the report grid (k=0 d_chi η∈{5,10,20}; k∈{1,2,3})")
    ap.add_argument("--dataset", default="sst2")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--k", type=int, default=0)
    ap.add_argument("--mechanism", default="none", choices=MECHANISMS.names())
    for pname in mechanism_parameters():
        ap.add_argument(f"--{pname.replace('_', '-')}", dest=pname, type=float)
    ap.add_argument("--cti", action="store_true")
    ap.add_argument("--cti-multiplier", type=float, default=2.0)
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="attack option, e.g. --set steps=100 --set n_public=1000 (values parsed as JSON)")
    a = ap.parse_args(argv)
    kw = {}
    for item in a.set:
        key, _, value = item.partition("=")
        try:
            kw[key] = json.loads(value)
        except json.JSONDecodeError:
            kw[key] = value
    if a.table:
        result = _table(a.limit, a.seed, not a.no_progress, kw)
    else:
        params = {p: getattr(a, p) for p in mechanism_parameters()}
        result = run_attack(a.attack, dataset=a.dataset, split=a.split, n_bottom_layers=a.k, mechanism=a.mechanism,
                            cti=a.cti, cti_multiplier=a.cti_multiplier, limit=a.limit, seed=a.seed,
                            progress=not a.no_progress, **params, **kw)
    text = json.dumps(result, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
