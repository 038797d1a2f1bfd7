r"""The adaptive inverter's learning curve at a frontier point: a privacy figure counts only where it has flattened.

An attack that is still improving when its training stops measures its budget, not the privatizer. At one point of
an experiment (the customer's *final* bottom, as the grid kept it,
:func:`~splitpriv.experiments.cache.trained_bottom_dir`) the adaptive inverter (:mod:`splitpriv.attacks.adaptive`) is retrained from scratch with ¼, ½ and all of the
attacker's public text at the default steps, then with all of it at 2× and 4× the epochs, and scored on the same
dev sentences. ``flattened``: the last doubling of the text and of the steps each moved recovery by less than
``tolerance`` (default two standard errors of a recovery rate on these tokens, :math:`2\sqrt{p(1-p)/n}`).

    python -m splitpriv.experiments.learning_curve experiments/configs/privatizer_depth_fp.json --seed 0

Writes ``results/learning_curve_<experiment>.json`` (one record per curve point, committed as it goes).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

CURVE = ((0.25, 1), (0.5, 1), (1.0, 1), (1.0, 2), (1.0, 4))


def curve_point(config, fraction: float, steps: int, *, limit: int, options: dict) -> dict:
    """The adaptive attack at ``config``'s final bottom with ``fraction`` of each public-text budget and ``steps``×
    the epochs."""
    from splitpriv.attacks.adaptive import AdaptiveOptions
    from splitpriv.attacks.runner import run_attack
    from splitpriv.experiments.cache import trained_bottom_dir
    from splitpriv.parts import load_bottom

    base = AdaptiveOptions(**options)
    scaled = {k: max(1, round(fraction * getattr(base, k))) if getattr(base, k) else 0
              for k in ("n_public", "n_in_domain", "n_unused_train", "n_other_public")}
    p = config.privacy
    started = time.perf_counter()
    r = run_attack("adaptive", dataset=config.dataset, split=config.eval_split, n_bottom_layers=config.bottom_layers,
                   mechanism=p.mechanism_config, limit=limit, seed=config.train.seed, model=config.model,
                   progress=False, bottom=load_bottom(trained_bottom_dir(config)), privatizer=p.privatizer,
                   customer_train_limit=config.train_limit, **{**options, **scaled,
                                                              "adaptive_epochs": base.adaptive_epochs * steps})
    return {"fraction": fraction, "steps": steps, **scaled, "adaptive_epochs": base.adaptive_epochs * steps,
            "recovery": r["success"], "content_recovery": r.get("content_recovery"), "n_tokens": r["n_tokens"],
            "n_train_texts": r["n_train_texts"], "n_train_steps": r["n_train_steps"], "prior_mix": r["prior_mix"],
            "wall_s": time.perf_counter() - started}


def flattened(points: list[dict], tolerance: float | None = None) -> bool:
    """Whether the last doubling of text (½ → all) and of steps (2× → 4×) each moved recovery by < tolerance."""
    at = {(p["fraction"], p["steps"]): p["recovery"] for p in points}
    if not {(0.5, 1), (1.0, 1), (1.0, 2), (1.0, 4)} <= set(at):
        return False
    full = at[(1.0, 4)]
    n = points[-1]["n_tokens"]
    tol = tolerance if tolerance is not None else 2 * math.sqrt(max(full * (1 - full), 1e-4) / n)
    return abs(at[(1.0, 1)] - at[(0.5, 1)]) < tol and abs(at[(1.0, 4)] - at[(1.0, 2)]) < tol


def main(argv=None) -> None:
    from splitpriv.experiments.grid import load_experiment, run_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", type=Path, help="an experiment config (its first grid point is used)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="dev sentences attacked (default: the experiment's)")
    ap.add_argument("--results", type=Path, default=Path("results"))
    a = ap.parse_args(argv)
    exp = load_experiment(a.config)
    point = next(r for r in exp.runs() if r["seed"] == a.seed)
    config = run_config(point["config"])
    options = next((dict((k, v) for k, v in spec.items() if k != "attack") for spec in exp.attacks
                    if isinstance(spec, dict) and spec.get("attack") == "adaptive"), {})
    out = a.results / f"learning_curve_{exp.name}.json"
    record = {"experiment": exp.name, "grid": point["grid"], "seed": a.seed, "points": []}
    for fraction, steps in CURVE:
        record["points"].append(curve_point(config, fraction, steps, limit=a.limit or exp.attack_limit,
                                            options=options))
        record["flattened"] = flattened(record["points"])
        out.write_text(json.dumps(record, indent=2))
        print(json.dumps(record["points"][-1]), flush=True)


if __name__ == "__main__":
    main()
