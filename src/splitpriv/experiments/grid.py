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
import hashlib
import itertools
import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from splitpriv.config import LEGACY_PARAMETERS, PrivacyConfig, TrainConfig
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

# RunConfig fields added after records were first written, with their default. At the default they do not change
# what a run computes, so they are left out of its key: existing records and caches stay valid.
_NEUTRAL_DEFAULTS = {"denoise": "none", "robust_top": None, "task": "sequence-classification", "tail_layers": 0,
                     "eval_before": False, "vendor_pretrain": None}


def _config_key(config: RunConfig) -> dict:
    key = {**config.to_dict(), "privacy": config.privacy.legacy_layout()}
    key["train"] = {k: v for k, v in key["train"].items() if (k, v) not in (("privatizer_lr", None),
                                                                          ("privatizer_warm_start", 0),
                                                                          ("warm_start_blocks", False))}
    return {k: v for k, v in key.items() if not (k in _NEUTRAL_DEFAULTS and v == _NEUTRAL_DEFAULTS[k])}


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _setting(config: RunConfig):
    from splitpriv.attacks.registry import Setting

    return Setting(n_bottom_layers=config.bottom_layers, cti=config.privacy.cti,
                   mechanism=config.privacy.build_mechanism(), privatized=config.privacy.privatizer is not None,
                   task=config.task)


def _attack_specs(attacks: list, config: RunConfig) -> list[dict]:
    """The registered attacks of the config that apply to the point (options checked by the attack registry)."""
    from splitpriv.attacks.runner import attack_specs

    return attack_specs(attacks, _setting(config))


def _skipped(attacks: list, config: RunConfig) -> dict[str, str]:
    """The config's attacks that do not apply to the point, with the reason (recorded, never silently dropped)."""
    from splitpriv.attacks.runner import skipped_specs

    return skipped_specs(attacks, _setting(config))


CACHE_DIRS = ("baselines", "utility", "attacks", "local_only")


def trained_bottom_dir(config: RunConfig) -> Path:
    """Where a privatizer point keeps its customer's final bottom (privatizer included) for the attacks:
    ``$SPLITPRIV_CACHE/bottoms/<utility key>`` (weights stay out of ``results/``)."""
    import os

    root = Path(os.environ.get("SPLITPRIV_CACHE", Path.home() / ".cache" / "splitpriv"))
    return root / "bottoms" / _key(_config_key(config))


def write_json(path: Path, obj) -> None:
    import os
    import secrets

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(3)}.tmp")  # concurrent runs write caches
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)


def _cached(path: Path | None, compute, force: bool = False, complete=lambda value: True):
    """``compute()``, stored as JSON at ``path``; read back instead when it is there, ``complete(stored)`` holds
    and not ``force``."""
    if path is not None and path.is_file() and not force:
        stored = json.loads(path.read_text())
        if complete(stored):
            return stored
    value = compute()
    if path is not None:
        write_json(path, value)
    return value


def measure_privacy(config: RunConfig, specs: list[dict], limit: int, *, progress=False,
                    cache_dir: Path | None = None, force: bool = False, skipped: dict | None = None) -> dict:
    """Run the attacks on the setting's eval data; empirical privacy = 1 − the strongest inversion attack.

    The attacked representations come from the *initial* bottom, which the attacker knows exactly; with a trained
    bottom the customer really sends representations of its updated bottom, unknown to the attacker, so the
    figure is conservative (privacy is at least this). With a privatizer the attacks run on the run's *final*
    bottom and privatizer (:func:`trained_bottom_dir`): the attacker is handed the trained weights, as the threat
    model demands. An attack's result depends only on what the vendor observes
    (data, k, mechanism, CTI, seed) and on the attack's options, so with ``cache_dir`` each one is stored under a
    hash of exactly those and shared by every grid point with the same view (e.g. frozen and trained bottom, or
    every tuning method at one η)."""
    from splitpriv.attacks.runner import run_attack

    p = config.privacy
    common = dict(dataset=config.dataset if config.dataset != "sst2-sample" else "sst2",
                  split=config.eval_split, n_bottom_layers=config.bottom_layers, cti=p.cti,
                  cti_multiplier=p.cti_multiplier, limit=limit, seed=config.train.seed, model=config.model)
    if config.dataset != "sst2-sample":  # the rest of the train split is public in-domain text
        common["customer_train_limit"] = config.train_limit
    legacy = p.legacy_layout()
    mech_key = ({k: legacy[k] for k in ("mechanism", *LEGACY_PARAMETERS)} if isinstance(legacy["mechanism"], str)
                else {"mechanism": p.mechanism_config})
    shipped = {}
    if p.privatizer is not None:
        from splitpriv.parts import load_bottom

        folder = trained_bottom_dir(config)
        if not (folder / "bottom.json").is_file():
            raise FileNotFoundError(f"the trained bottom of this privatizer point is not at {folder}: re-run the "
                                    "point's training (splitpriv experiment --force) before attacking it")
        mech_key = {**mech_key, "bottom": folder.name}
        shipped = {"bottom": load_bottom(folder), "privatizer": p.privatizer}
    results = {}
    for spec in specs:
        kw = {**common, **{k: v for k, v in spec.items() if k != "attack"}}
        if spec["attack"] == "label":
            # the label attack trains its own short split run: same head, label DP and tuning method as the setting
            kw.update(head=config.head, label_dp_epsilon=p.label_dp_epsilon, method=config.method)
        if spec["attack"] == "response":
            # a short causal-LM split run of the point's shape and gradient defence, attacked through its tail
            kw.update(tail_layers=config.tail_layers, method=config.method, batch_size=config.train.batch_size,
                      grad_clip=p.grad_clip, grad_sigma=p.grad_sigma)
        if spec["attack"] == "average":
            # the vendor gets one look per epoch; noise drawn fresh each step or once per sample, as in training
            kw.update(epochs=max(config.train.epochs, 2), noise="once" if p.noise == "once" else "fresh")
        name = spec["attack"] + "".join(f"-{v}" for k, v in spec.items() if k != "attack")
        path = cache_dir / f"{_key({'attack': spec['attack'], **kw, **mech_key})}.json" if cache_dir is not None else None
        results[name] = _cached(path, lambda: run_attack(spec["attack"], progress=progress,
                                                         mechanism=p.mechanism_config, **kw, **shipped), force)
    from splitpriv.attacks.registry import names_of_kind

    inversion = {k: v for k, v in results.items() if k.split("-")[0] in names_of_kind("inversion")}
    out = {"attacks": results, "skipped": skipped or {}}
    sets = [v for k, v in results.items() if k.split("-")[0] in names_of_kind("set")]
    if sets:
        out.update(set_recovery=max(v["set_recovery"] for v in sets), set_floor=sets[0]["set_floor"])
    labels = [v for k, v in results.items() if k.split("-")[0] in (*names_of_kind("label"),
                                                                     *names_of_kind("response"))]
    if labels:
        out["label_attack"] = max(v["success"] for v in labels)
    if inversion:
        best = max(inversion, key=lambda k: inversion[k]["success"])
        out.update(strongest_attack=best, max_success=inversion[best]["success"],
                   empirical_privacy=1.0 - inversion[best]["success"])
    return out


def _baseline(config: RunConfig, runs_dir: Path, progress: bool, *, equal_passes: bool = False) -> dict:
    from splitpriv.runs.run import reference_config, run

    base = reference_config(config, equal_passes=equal_passes)

    def compute():
        metrics = run(base, progress=progress)
        record = {k: metrics[k] for k in ("train_samples_per_s", "wall_time_s", "n_train", "n_eval")}
        return {**task_of(base.task).utility(metrics), **record, "config": base.to_dict()}

    # an older record without per-sentence correctness allows no paired interval: recomputed
    return _cached(runs_dir / "baselines" / f"{_key(_config_key(base))}.json", compute,
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

        key = _key({"local_only": _config_key(config), "noise": noise})
        out[name] = _cached(runs_dir / "local_only" / f"{key}.json", compute)["accuracy"]
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

    return _cached(runs_dir / "utility" / f"{_key(_config_key(config))}.json", compute, force, complete)


def run_one(exp: Experiment, point: dict, runs_dir: Path, *, quick: bool, progress: bool, force: bool = False) -> dict:
    config = run_config(point["config"])
    specs = _attack_specs(exp.attacks, config)
    key = _key({"config": _config_key(config), "attacks": specs, "attack_limit": exp.attack_limit})
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
                                            skipped=_skipped(exp.attacks, config))
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
