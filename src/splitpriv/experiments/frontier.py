r"""``results/frontier.json``: the accuracy–privacy frontier of the experiment records, each point with a paired test.

A *point* is one setting of one experiment (its grid values), aggregated over its seeds: ``accuracy`` and
``baseline`` are means over seeds (the baseline is the centralized non-private run on the same data, budget and
seed); ``loss_pts`` = 100 × (baseline − accuracy). Privacy figures are the means over seeds of what the attacks
measured: ``privacy`` = 1 − the strongest inversion attack's token recovery, ``content_privacy`` and
``contributing_privacy`` the same on content words and CTI's contributing words, ``floor`` the prior-only guess.

The paired test behind "within 1 point": with :math:`c^{b}_{s,i}, c_{s,i} \in \{0, 1\}` the correctness of the
baseline and of the private run of seed :math:`s` on dev sentence :math:`i`, the per-sentence loss
:math:`d_i = \frac{1}{S}\sum_s (c^{b}_{s,i} - c_{s,i})` is resampled over sentences (bootstrap, ``n_boot`` draws of
an explicit generator); ``loss_ci95_pts`` is its 95% interval and ``within_1pt`` holds when its upper end is at
most one point. ``best`` is, among the private points (privacy > 0) where the customer holds at most a third of
the blocks (``customer_blocks`` ≤ ``total_blocks`` / 3), the most private point within 1 point by that test against
the equal-passes reference where the point has one (ties: the smaller loss); when no such point passes, the most
private one whose *estimated* loss is at most one point, flagged ``"within_1pt": false``.

Every point also says what the customer holds and gets (:func:`_holdings`): ``disclosure``, ``customer_blocks``,
``total_blocks``, ``customer_compute_share`` (:mod:`~splitpriv.experiments.accounting`), ``local_only_accuracy``
(the customer alone, :mod:`~splitpriv.experiments.local_only`), ``vendor_gain_pts`` = accuracy − local-only,
``headroom_pts`` = the equal-passes baseline (the 1-epoch one without a warm start) − the clean local-only model,
``set_recovery`` / ``set_floor`` (the set-level attack and its public-frequency guess), ``label_attack`` (the label
attack's success) and ``skipped_attacks``. Runs that warm-start a privatizer at home read each sentence
``warm_start`` more times than their epochs over the wire; their points also carry ``passes_baseline`` (the
reference trained ``passes_baseline_epochs`` = warm start + epochs) and the same paired test against it
(``passes_loss_pts``, ``passes_loss_ci95_pts``, ``passes_within_1pt``).
"""

from __future__ import annotations

import json
import shlex
from collections import defaultdict
from pathlib import Path

import numpy as np

FRONTIER_FILE = "frontier.json"
FIELDS = ("experiment", "setting", "train_args", "accuracy", "baseline", "loss_pts", "privacy", "content_privacy",
          "contributing_privacy", "floor", "strongest_attack", "seeds", "disclosure", "customer_blocks", "total_blocks",
          "customer_compute_share", "local_only_accuracy", "vendor_gain_pts", "headroom_pts", "set_recovery",
          "set_floor", "label_attack")


def paired_loss(baseline: list[str], private: list[str], *, n_boot: int = 10_000, seed: int = 0) -> dict:
    """Bootstrap over evaluation sentences of the seed-averaged accuracy loss, in points (module docstring).

    ``baseline``/``private``: one ``"0101…"`` correctness string per seed, paired by position."""
    if len(baseline) != len(private) or not baseline:
        raise ValueError("paired_loss needs one baseline and one private correctness string per seed")
    as_array = lambda runs: np.array([[c == "1" for c in r] for r in runs], dtype=float)  # noqa: E731
    b, p = as_array(baseline), as_array(private)
    if b.shape != p.shape:
        raise ValueError(f"paired runs must be scored on the same sentences: {b.shape} vs {p.shape}")
    d = (b - p).mean(axis=0)
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"loss_pts": 100 * float(d.mean()), "loss_ci95_pts": [100 * float(lo), 100 * float(hi)],
            "within_1pt": bool(100 * hi <= 1.0), "n_eval": int(d.size)}


def train_args(config: dict) -> str:
    """The ``splitpriv train`` arguments that reproduce a record's run (``config``: ``RunConfig.to_dict()``)."""
    p, t = config["privacy"], config["train"]
    args = ["--dataset", config["dataset"], "--method", config["method"], "--bottom-layers", config["bottom_layers"],
            "--lr", config["lr"]]
    if config.get("train_limit") is not None:
        args += ["--train-limit", config["train_limit"]]
    if config.get("eval_limit") is not None:
        args += ["--eval-limit", config["eval_limit"]]
    if config["method"] == "lora" and config.get("method_params", {}).get("r") is not None:
        args += ["--lora-r", config["method_params"]["r"]]
    mechanism = p["mechanism"] if isinstance(p["mechanism"], dict) else {"name": p["mechanism"]}
    args += ["--mechanism", mechanism["name"]]
    for key, value in {**mechanism, **(p.get("mechanism_params") or {})}.items():
        if key != "name" and value is not None:
            args += [f"--{key.replace('_', '-')}", value]
    for key in ("eta", "sigma", "scale"):
        if p.get(key) is not None and f"--{key}" not in args:
            args += [f"--{key}", p[key]]
    if p.get("cti"):
        args += ["--cti"]
    if p.get("noise") not in (None, "auto"):
        args += ["--noise", p["noise"]]
    if p.get("privatizer"):
        spec = p["privatizer"]
        args += ["--privatizer", spec["name"] + ":" + ",".join(f"{k}={v}" for k, v in spec.items() if k != "name")]
    if config.get("denoise", "none") != "none":
        args += ["--denoise", config["denoise"]]
    args += ["--epochs", t["epochs"], "--batch-size", t["batch_size"], "--bottom", t["bottom"], "--seed", t["seed"]]
    if t["bottom"] == "trained":
        args += ["--bottom-lr", t["bottom_lr"]]
        if t.get("privatizer_lr") is not None:
            args += ["--privatizer-lr", t["privatizer_lr"]]
    if t.get("privatizer_warm_start"):
        args += ["--privatizer-warm-start", t["privatizer_warm_start"]]
        if t["bottom"] != "trained" and t.get("privatizer_lr") is not None:
            args += ["--privatizer-lr", t["privatizer_lr"]]
        if t.get("warm_start_blocks"):
            args += ["--warm-start-blocks", "--bottom-lr", t["bottom_lr"]]
    if t.get("noise_seed") is not None:
        args += ["--noise-seed", t["noise_seed"]]
    return "splitpriv train " + " ".join(shlex.quote(str(a)) for a in args) + " --baseline"


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _point(experiment: str, setting: dict, records: list[dict]) -> dict:
    from splitpriv.attacks.registry import names_of_kind
    from splitpriv.attacks.runner import summary

    records = sorted(records, key=lambda r: r["seed"])
    utility = [r["utility"] for r in records]
    privacy = [r.get("privacy", {}) for r in records]
    sums = [summary(p.get("attacks", {})) if p.get("attacks") else {} for p in privacy]
    point = {"experiment": experiment, "setting": setting, "train_args": train_args(records[0]["config"]),
             "accuracy": _mean(u["accuracy"] for u in utility),
             "accuracy_std": float(np.std([u["accuracy"] for u in utility])),
             "baseline": _mean(u["baseline_accuracy"] for u in utility),
             "privacy": _mean(p.get("empirical_privacy") for p in privacy),
             "privacy_min": min((p["empirical_privacy"] for p in privacy if "empirical_privacy" in p), default=None),
             "content_privacy": _mean(s.get("content_privacy") for s in sums),
             "contributing_privacy": _mean(s.get("contributing_privacy") for s in sums),
             "floor": _mean(s.get("floor") for s in sums),
             "top5_recovery": _mean(s.get("top5_recovery") for s in sums),
             "seeds": [r["seed"] for r in records], "n_train": utility[0].get("n_train"),
             "n_eval": utility[0].get("n_eval"),
             "wall_time_s": _mean(r.get("wall_time_s") for r in records)}
    successes = defaultdict(list)
    for p in privacy:
        for name, result in p.get("attacks", {}).items():
            successes[name].append(result["success"])
    kinds = set(names_of_kind("inversion"))
    inversion = {n: float(np.mean(v)) for n, v in successes.items() if n.split("-")[0] in kinds}
    point["strongest_attack"] = max(inversion, key=inversion.get) if inversion else None
    point["attacks"] = {n: float(np.mean(v)) for n, v in successes.items()}
    baselines = [u.get("baseline_correct") for u in utility]
    corrects = [u.get("correct") for u in utility]
    if all(baselines) and all(corrects):
        point.update(paired_loss(baselines, corrects))
    else:  # records written before per-sentence correctness was kept: the estimate only, no test
        point.update(loss_pts=100 * (point["baseline"] - point["accuracy"]), loss_ci95_pts=None, within_1pt=None)
    point.update(_holdings(records, point))
    passes = [u.get("passes_baseline_correct") for u in utility]
    if all(passes) and all(corrects):  # against the reference that also read the data as often as the warm start
        point["passes_baseline"] = _mean(u["passes_baseline_accuracy"] for u in utility)
        point["passes_baseline_epochs"] = utility[0]["passes_baseline_epochs"]
        point.update({f"passes_{k}": v for k, v in paired_loss(passes, corrects).items() if k != "n_eval"})
    return point


def _holdings(records: list[dict], point: dict) -> dict:
    """What the customer holds and does (:mod:`splitpriv.experiments.accounting`), what it gets alone, and the
    set-level and label attacks, means over seeds (None where a record did not measure them)."""
    from splitpriv.experiments.accounting import accounting

    utility = [r["utility"] for r in records]
    privacy = [r.get("privacy", {}) for r in records]
    local = _mean(u.get("local_only_accuracy") for u in utility)
    clean = _mean(u.get("local_only_clean_accuracy") for u in utility)
    # the local model reads the data warm start + epochs times: its centralized reference is the equal-passes one
    reference = _mean(u.get("passes_baseline_accuracy") for u in utility) or point["baseline"]
    out = {**accounting(records[0]["config"]), "local_only_accuracy": local,
           "local_only_clean_accuracy": clean,
           "vendor_gain_pts": None if local is None else 100 * (point["accuracy"] - local),
           "headroom_pts": None if clean is None else 100 * (reference - clean),
           "set_recovery": _mean(p.get("set_recovery") for p in privacy),
           "set_floor": _mean(p.get("set_floor") for p in privacy),
           "label_attack": _mean(p.get("label_attack") for p in privacy)}
    skipped = {}
    for p in privacy:
        skipped.update(p.get("skipped") or {})
    out["skipped_attacks"] = skipped
    return out


def frontier_points(results_dir: str | Path, experiments: list[str], *, quick: bool = False) -> list[dict]:
    """One point per (experiment, grid setting) of the records under ``results_dir/runs``, with utility."""
    runs = Path(results_dir) / ("runs-quick" if quick else "runs")
    points = []
    for name in experiments:
        groups = defaultdict(list)
        for path in sorted((runs / name).glob("*.json")):
            record = json.loads(path.read_text())
            if "utility" in record:
                groups[json.dumps(record["grid"], sort_keys=True)].append(record)
        points += [_point(name, json.loads(key), records) for key, records in sorted(groups.items())]
    return points


def best_loss(p: dict) -> float:
    """A point's loss in points against its equal-passes reference where it has one, else against 1 epoch."""
    return p["passes_loss_pts"] if p.get("passes_loss_pts") is not None else p["loss_pts"]


# the frontier goal's margins beyond privacy and loss (issue 33): set-level recovery within SET_MARGIN_PTS of its
# public guess, the customer at most a third of the blocks and of the compute, the vendor MIN_VENDOR_GAIN_PTS above
# the customer's local-only model
SET_MARGIN_PTS = 5.0
MIN_VENDOR_GAIN_PTS = 3.0


def _within_block_cap(p: dict) -> bool:
    return p.get("customer_blocks", 0) <= p.get("total_blocks", 0) / 3


def _capped(points: list[dict]) -> list[dict]:
    """Private points (privacy > 0: a setting that sends clean vectors is a reference, not a candidate) where the
    customer holds at most a third of the blocks."""
    return [p for p in points if p.get("privacy") and _within_block_cap(p)]


def best_point(points: list[dict]) -> dict | None:
    """The most private point within 1 point of loss (module docstring) among the private ones where the customer
    holds at most a third of the blocks; the loss is against the equal-passes reference where the point has one."""
    def within(p):
        return p["passes_within_1pt"] if p.get("passes_within_1pt") is not None else p.get("within_1pt")

    capped = _capped(points)
    tested = [p for p in capped if within(p)]
    pool = tested or [p for p in capped if best_loss(p) <= 1.0]
    if not pool:
        return None
    return max(pool, key=lambda p: (round(p["privacy"], 6), -best_loss(p)))


def goal_misses(p: dict, *, min_privacy_percent: float = 90.0, max_loss_points: float = 1.0) -> list[str]:
    """What keeps point ``p`` from the frontier goal (issue 33): ≥ 90% token privacy, ``set_recovery`` within 5
    points of ``set_floor``, ≤ 1 point of loss against the equal-passes reference, the customer at most a third of the
    blocks and of the training FLOPs, and ≥ 3 points above its local-only model; an unmeasured figure is a miss."""
    misses = []
    if 100 * p["privacy"] < min_privacy_percent:
        misses.append(f"privacy {_pct(p['privacy'])}% < {min_privacy_percent:g}%")
    if best_loss(p) > max_loss_points:
        misses.append(f"loss {best_loss(p):.1f} > {max_loss_points:g} pt")
    if p.get("set_recovery") is None:
        misses.append("set-level attack not run")
    elif 100 * (p["set_recovery"] - p["set_floor"]) > SET_MARGIN_PTS:
        misses.append(f"set-level {_pct(p['set_recovery'])}% > floor {_pct(p['set_floor'])}% + {SET_MARGIN_PTS:g}")
    if not _within_block_cap(p):
        misses.append(f"customer holds {p['customer_blocks']}/{p['total_blocks']} blocks")
    if p.get("customer_compute_share") is None or p["customer_compute_share"] > 1 / 3 + 1e-9:
        misses.append(f"customer compute {_pct(p.get('customer_compute_share'))}% > 33.3%")
    if p.get("vendor_gain_pts") is None:
        misses.append("local-only model not measured")
    elif p["vendor_gain_pts"] < MIN_VENDOR_GAIN_PTS:
        misses.append(f"vendor gain {p['vendor_gain_pts']:.1f} < {MIN_VENDOR_GAIN_PTS:g} pts over local-only")
    return misses


def write_frontier(results_dir: str | Path, experiments: list[str], *, quick: bool = False) -> Path:
    """Write ``results_dir/frontier.json`` (``{"points": [...], "best": {...}}``) from the experiments' records."""
    points = frontier_points(results_dir, experiments, quick=quick)
    out = Path(results_dir) / (FRONTIER_FILE if not quick else "frontier-quick.json")
    out.write_text(json.dumps({"experiments": experiments, "points": points, "best": best_point(points)}, indent=2))
    return out


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def frontier_section(results_dir: str | Path, *, quick: bool = False) -> list[str]:
    """The report's lines for ``frontier.json`` (none when it has not been written)."""
    path = Path(results_dir) / (FRONTIER_FILE if not quick else "frontier-quick.json")
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    lines = [f"## Frontier (`{path.name}`: `splitpriv frontier {' '.join(data['experiments'])}`)", "",
             "One row per setting, means over seeds; loss with the 95% paired-bootstrap interval over dev sentences "
             "(\"≤1\": its upper end is within one point). Privacy = 1 − the strongest attack, on all tokens, content "
             "words and CTI's contributing words; floor = the prior-only guess's recovery; set = content words the "
             "set-level attack names vs its public-frequency guess; label = the label attack's accuracy; held = "
             "blocks at home / all, disclosure and compute share; local = the customer alone (– where not measured).",
             "", "| experiment: setting | n train | seeds | accuracy % | baseline % | loss (pts) [95% CI] | ≤1 "
             "| privacy % | content % | floor % | strongest | set % (floor) | label % | held | local % | wall s |",
             "|" + "---|" * 16]
    for p in sorted(data["points"], key=lambda p: (p["experiment"], p["loss_pts"])):
        ci = p.get("loss_ci95_pts")
        loss = f"{p['loss_pts']:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")
        setting = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in p["setting"].items()) or "–"
        lines.append(f"| {p['experiment']}: {setting} | {p.get('n_train')} | {len(p['seeds'])} | {_pct(p['accuracy'])} "
                     f"| {_pct(p['baseline'])} | {loss} | {_yes_no(p.get('within_1pt'))} "
                     f"| {_pct(p['privacy'])} | {_pct(p['content_privacy'])} "
                     f"| {_pct(p['floor'])} | {p['strongest_attack'] or '–'} "
                     f"| {_pct(p.get('set_recovery'))} ({_pct(p.get('set_floor'))}) | {_pct(p.get('label_attack'))} "
                     f"| {_held(p)} | {_pct(p.get('local_only_accuracy'))} | {p.get('wall_time_s') or 0:.0f} |")
    best = data.get("best")
    if best:
        lines += ["", "Most private point within 1 point of loss under the block cap: "
                  f"**{best['experiment']}: {best['setting']}**, privacy {_pct(best['privacy'])}% (strongest attack: "
                  f"{best['strongest_attack']}), loss "
                  f"{best['loss_pts']:.2f} pts{'' if best.get('within_1pt') else ' (estimate; the paired test does not confirm it)'}. "
                  f"Reproduce: `{best['train_args']}`."]
    return lines + [""]


def headline(results_dir: str | Path, *, min_privacy_percent: float, max_loss_points: float,
             quick: bool = False) -> list[str] | None:
    """The report's headline from ``frontier.json``'s ``best`` (the same choice as the frontier's: a private point,
    customer at most a third of the blocks, loss against the equal-passes reference), with the goal's verdict
    (:func:`goal_misses`); without a best, the capped private point of least loss. None without the file."""
    path = Path(results_dir) / (FRONTIER_FILE if not quick else "frontier-quick.json")
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    best = data.get("best")
    rule = ("the most private point within 1 point of its equal-passes reference where the customer holds at most a "
            "third of the blocks, from `frontier.json`")
    goal = (f"Goal: ≥ {min_privacy_percent:g}% privacy, set-level within {SET_MARGIN_PTS:g} points of its floor, "
            f"≤ {max_loss_points:g} point of loss, the customer within a third of the blocks and of the compute, "
            f"≥ {MIN_VENDOR_GAIN_PTS:g} points above its local-only model: ")
    shown = best or min(_capped(data.get("points", [])), key=best_loss, default=None)
    if shown is None:
        return [f"Best frontier point ({rule}): none, and no private point under the cap. {goal}**not met**.", ""]
    misses = goal_misses(shown, min_privacy_percent=min_privacy_percent, max_loss_points=max_loss_points)
    setting = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in shown["setting"].items()) or "–"
    lead = (f"Best frontier point ({rule}): " if best else
            f"Best frontier point ({rule}): none; the private point under the cap with the least loss is ")
    return [f"{lead}**{shown['experiment']}: {setting}**, empirical privacy {_pct(shown['privacy'])}% (strongest "
            f"attack: {shown['strongest_attack']}) at {best_loss(shown):.1f} points of loss (the customer's blocks, "
            f"disclosure and compute share: {_held(shown)}). {goal}"
            + ("**met**." if not misses else f"**not met** ({'; '.join(misses)})."), ""]


def _held(p: dict) -> str:
    if p.get("total_blocks") is None:
        return "–"
    return (f"{p['customer_blocks']}/{p['total_blocks']}, {_pct(p['disclosure'])}%, "
            f"{_pct(p['customer_compute_share'])}%")


def _yes_no(flag) -> str:
    return "–" if flag is None else ("yes" if flag else "no")


def _short(value) -> str:
    if isinstance(value, dict):
        return value.get("name", "") + ":" + ",".join(f"{k}={v}" for k, v in value.items() if k != "name")
    return str(value)
