"""The experiment grid: a JSON config expands into runs; each run trains (utility) and attacks (privacy) and
writes one JSON record. Records are keyed by a hash of everything that determines them, so an interrupted grid
resumes where it stopped and a changed config re-runs only what changed.

Config (``experiments/configs/*.json``)::

    {"name": "eta_sweep", "description": "...",
     "base":   {RunConfig fields; "privacy": {...}, "train": {...}},
     "grid":   {"privacy.eta": [5, 10, null], "dataset": ["sst2", "financial_phrasebank"]},
     "seeds":  [0, 1, 2],
     "attacks": ["nn", "map", "learned"]  or  [{"attack": "aia", "attribute": "gender"}],
     "attack_limit": 200,
     "quick":  {"base": {...overrides}, "grid": {...}, "seeds": [0], "attack_limit": 50}}

A ``null`` η (or sigma/scale) means no noise. Utility is measured against the centralized non-private baseline of
the same method, trainable weights, data and seed (cached under ``runs/baselines``); privacy is 1 − the success
of the strongest attack run on the setting.
"""

from __future__ import annotations

import copy
import itertools
import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from splitpriv.config import PrivacyConfig, TrainConfig
from splitpriv.experiments.cache import cached, config_key, digest, trained_bottom_dir, write_json
from splitpriv.experiments.privacy import attack_specs_of, measure_privacy, skipped_of
from splitpriv.privacy import MECHANISMS
from splitpriv.provenance import git_commit, versions
from splitpriv.runs.run import RunConfig
from splitpriv.tasks import task_of

RESULTS_DIR = Path("results")


@dataclass
class Experiment:
    name: str
    description: str
    base: dict
    grid: dict[str, list]
    seeds: list[int]
    attacks: list
    attack_limit: int = 200
    path: Path | None = None
    extra: dict = field(default_factory=dict)

    def runs(self) -> list[dict]:
        """Every (config dict, attacks) of the grid, seeds included."""
        keys = list(self.grid)
        out = []
        for values in itertools.product(*(self.grid[k] for k in keys)):
            for seed in self.seeds:
                config = copy.deepcopy(self.base)
                for key, value in zip(keys, values):
                    _set(config, key, value)
                _set(config, "train.seed", seed)
                out.append({"config": config, "grid": dict(zip(keys, values)), "seed": seed})
        return out


def _set(config: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_experiment(path: str | Path, *, quick: bool = False) -> Experiment:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"experiment config {path} does not exist")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    missing = [k for k in ("name", "base", "grid") if k not in raw]
    if missing:
        raise ValueError(f"{path}: missing keys {missing}")
    if quick and "quick" in raw:
        q = raw["quick"]
        raw = {**raw, "base": _merge(raw["base"], q.get("base", {})), "grid": {**raw["grid"], **q.get("grid", {})},
               "seeds": q.get("seeds", raw.get("seeds", [0])), "attacks": q.get("attacks", raw.get("attacks", [])),
               "attack_limit": q.get("attack_limit", raw.get("attack_limit", 200))}
    exp = Experiment(name=raw["name"], description=raw.get("description", ""), base=raw["base"], grid=raw["grid"],
                     seeds=raw.get("seeds", [0]), attacks=raw.get("attacks", []),
                     attack_limit=raw.get("attack_limit", 200), path=path,
                     extra={k: v for k, v in raw.items() if k not in {"name", "description", "base", "grid", "seeds",
                                                                       "attacks", "attack_limit", "quick"}})
    for run in exp.runs():  # validate the whole grid before spending any compute
        run_config(run["config"])
    return exp


def run_config(config: dict) -> RunConfig:
    """A validated RunConfig from a grid point. The privacy block takes the mechanism as a name with its parameters
    beside it (``"privacy.eta": 10``) or as a config dict (``"privacy.mechanism": {"name": "dchi", "eta": 10}``); a
    parameter the mechanism requires set to null means no mechanism (the grid's "no noise" point)."""
    config = copy.deepcopy(config)
    privacy = config.pop("privacy", {})
    if not isinstance(privacy, dict):
        raise ValueError(f"privacy must be a mapping, got {privacy!r}")
    mech = privacy.get("mechanism", "none")
    name, params = (mech.get("name"), {k: v for k, v in mech.items() if k != "name"}) if isinstance(mech, dict) \
        else (mech, {})
    params.update({k: privacy.pop(k) for k in list(privacy) if k not in PRIVACY_FIELDS})
    if isinstance(name, str) and name in MECHANISMS and any(
            params.get(f.name, 0) is None for f in fields(MECHANISMS.get(name).Config)):
        name, params, privacy = "none", {}, {**privacy, "cti": False}
    privacy["mechanism"] = {"name": name, **{k: v for k, v in params.items() if v is not None}}
    return RunConfig(privacy=PrivacyConfig.from_dict(privacy), train=TrainConfig(**config.pop("train", {})),
                     **config).validate()


PRIVACY_FIELDS = {f.name for f in fields(PrivacyConfig)}

def _baseline(config: RunConfig, runs_dir: Path, progress: bool, *, equal_passes: bool = False) -> dict:
    from splitpriv.runs.run import reference_config, run

    base = reference_config(config, equal_passes=equal_passes)

    def compute():
        metrics = run(base, progress=progress)
        record = {k: metrics[k] for k in ("train_samples_per_s", "wall_time_s", "n_train", "n_eval")}
        return {**task_of(base.task).utility(metrics), **record, "config": base.to_dict()}

    # an older record without per-sentence correctness allows no paired interval: recomputed
    return cached(runs_dir / "baselines" / f"{digest(config_key(base))}.json", compute,
                   complete=lambda stored: "correct" in stored)


def _baseline_fields(baseline: dict, accuracy: float) -> dict:
    return {"baseline_accuracy": baseline["accuracy"], "baseline_macro_f1": baseline["macro_f1"],
            "baseline_correct": baseline.get("correct"), "accuracy_loss": baseline["accuracy"] - accuracy}


def _passes_fields(config: RunConfig, runs_dir: Path, progress: bool, accuracy: float) -> dict:
    """Against the equal-passes reference (:func:`~splitpriv.runs.run.reference_config`), for runs with a warm start
    at home (which reads the data more often than the reference's epochs); none for the others."""
    if not config.train.privatizer_warm_start:
        return {}
    passes = _baseline(config, runs_dir, progress, equal_passes=True)
    return {"passes_baseline_accuracy": passes["accuracy"], "passes_baseline_correct": passes["correct"],
            "passes_baseline_epochs": passes["config"]["train"]["epochs"],
            "passes_accuracy_loss": passes["accuracy"] - accuracy}


def _local_only_fields(config: RunConfig, runs_dir: Path) -> dict:
    """The customer alone (:mod:`splitpriv.experiments.local_only`), with the point's noise and without (cached by
    the config: every point with the same bottom, privatizer, data and passes shares it)."""
    from splitpriv.experiments.local_only import local_only_accuracy
    from splitpriv.runs.run import load_data

    out = {}
    for noise, name in ((True, "local_only_accuracy"), (False, "local_only_clean_accuracy")):
        def compute(noise=noise):
            train, evaluation = load_data(config)
            started = time.perf_counter()
            return {"accuracy": local_only_accuracy(config, train, evaluation, noise=noise),
                    "wall_time_s": time.perf_counter() - started}

        key = digest({"local_only": config_key(config), "noise": noise})
        out[name] = cached(runs_dir / "local_only" / f"{key}.json", compute)["accuracy"]
    return out


def _adaptation(config: RunConfig) -> dict:
    """How the vendor adapted its top (and privatizer) to the noise (distilled by the run, read from the cache)."""
    from splitpriv.roles.vendor.robust_top import adaptation_of

    name = "robust_top" if config.robust_top is not None else "vendor_pretrain"
    meta = adaptation_of(config.vendor_model()) if getattr(config, name) is not None else None
    return {} if meta is None else {name: {k: meta.get(k) for k in (
        "heldout_error", "heldout_error_before", "heldout_error_after", "final_loss", "n_train_sentences",
        "wall_time_s")}}


def _utility(config: RunConfig, runs_dir: Path, progress: bool, force: bool) -> dict:
    """Split training and private evaluation of one config (cached by the config: experiments share it)."""
    from splitpriv.runs.run import load_data, train_split

    def compute():
        train, evaluation = load_data(config)
        started = time.perf_counter()
        result = train_split(config, train, evaluation, progress=progress)
        customer = result.pop("_customer")
        if config.privacy.privatizer is not None:
            customer.save(trained_bottom_dir(config))
        return {**task_of(config.task).utility(result), "wall_time_s": time.perf_counter() - started,
                "train_samples_per_s": result["train_samples_per_s"], "n_train": len(train),
                "n_eval": len(evaluation), "final_loss": sum(result["losses"][-10:]) / len(result["losses"][-10:]),
                **_adaptation(config)}

    def complete(stored) -> bool:
        # a privatizer point's attacks need its trained bottom, kept outside results/: retrain (deterministic)
        # when this machine lacks it
        return config.privacy.privatizer is None or (trained_bottom_dir(config) / "bottom.json").is_file()

    return cached(runs_dir / "utility" / f"{digest(config_key(config))}.json", compute, force, complete)


def run_one(exp: Experiment, point: dict, runs_dir: Path, *, quick: bool, progress: bool, force: bool = False) -> dict:
    config = run_config(point["config"])
    specs = attack_specs_of(exp.attacks, config)
    key = digest({"config": config_key(config), "attacks": specs, "attack_limit": exp.attack_limit})
    path = runs_dir / exp.name / f"{key}.json"
    want_utility = exp.extra.get("utility", True)
    if path.is_file() and not force:
        record = json.loads(path.read_text())
        utility = record.get("utility")
        if want_utility and utility is not None:  # completed, as a privacy-only record is, with what it lacks
            missing = {}
            if utility.get("baseline_correct") is None:  # a paired interval needs per-sentence results
                missing.update(_baseline_fields(_baseline(config, runs_dir, progress), utility["accuracy"]))
            if "passes_baseline_accuracy" not in utility:
                missing.update(_passes_fields(config, runs_dir, progress, utility["accuracy"]))
            if exp.extra.get("local_only") and "local_only_accuracy" not in utility:
                missing.update(_local_only_fields(config, runs_dir))
            if missing:
                record["utility"] = {**utility, **missing}
                write_json(path, record)
        if "utility" in record or not want_utility:  # a privacy-only record is completed, not trusted as whole
            return record
    started = time.perf_counter()
    record = {"experiment": exp.name, "run_id": key, "quick": quick, "grid": point["grid"], "seed": point["seed"],
              "config": config.to_dict(), "versions": versions(), "git_commit": git_commit()}
    if want_utility:
        baseline = _baseline(config, runs_dir, progress)
        utility = _utility(config, runs_dir, progress, force)
        record["utility"] = {**utility, **_baseline_fields(baseline, utility["accuracy"]),
                             **_passes_fields(config, runs_dir, progress, utility["accuracy"]),
                             **(_local_only_fields(config, runs_dir) if exp.extra.get("local_only") else {})}
    if specs:
        record["privacy"] = measure_privacy(config, specs, exp.attack_limit, progress=progress,
                                            cache_dir=runs_dir / "attacks", force=force,
                                            skipped=skipped_of(exp.attacks, config))
    record["wall_time_s"] = time.perf_counter() - started
    write_json(path, record)
    return record


def run_experiment(path: str | Path, *, results_dir: str | Path = RESULTS_DIR, quick: bool = False,
                   progress: bool = True, force: bool = False, log=print, ray_address: str | None = None) -> list[dict]:
    """Every point of the experiment at ``path`` (finished ones are read back); with ``ray_address`` ("auto", an
    address, or "local" for a Ray instance of this machine's CPUs) the points run as Ray tasks
    (:mod:`splitpriv.experiments.parallel`) and write the same records."""
    exp = load_experiment(path, quick=quick)
    runs_dir = Path(results_dir) / ("runs-quick" if quick else "runs")
    points = exp.runs()
    if ray_address is not None:
        from splitpriv.experiments.parallel import run_points

        results = run_points(exp, points, runs_dir, run_one=run_one, write_json=write_json, quick=quick, force=force,
                             address=ray_address)
    else:
        results = (run_one(exp, point, runs_dir, quick=quick, progress=progress, force=force) for point in points)
    records = []
    t = time.perf_counter()
    for i, (point, record) in enumerate(zip(points, results), 1):
        records.append(record)
        u, p = record.get("utility", {}), record.get("privacy", {})
        log(f"[{exp.name} {i}/{len(points)}] {point['grid']} seed={point['seed']}: "
            f"acc={u.get('accuracy', float('nan')):.4f} loss={u.get('accuracy_loss', float('nan')):+.4f} "
            f"privacy={p.get('empirical_privacy', float('nan')):.3f} ({time.perf_counter() - t:.0f}s)")
        t = time.perf_counter()
    return records
