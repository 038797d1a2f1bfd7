import json
from pathlib import Path

import pytest

from splitpriv.experiments.grid import load_experiment, run_config, run_experiment
from splitpriv.experiments.report import aggregate, frontier_point, load_records, pareto_front, write_report

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "experiments" / "configs").glob("*.json"))
# grids under way: validated like the others; their records land with them when they move up to configs/
PENDING = sorted((Path(__file__).resolve().parents[2] / "experiments" / "configs" / "pending").glob("*.json"))


@pytest.mark.parametrize("path", CONFIGS + PENDING, ids=lambda p: p.stem)
def test_checked_in_configs_expand_and_validate(path):
    for quick in (False, True):
        exp = load_experiment(path, quick=quick)
        runs = exp.runs()
        assert runs and all(run_config(r["config"]) for r in runs)
    assert len(load_experiment(path, quick=True).runs()) <= len(load_experiment(path).runs())


def test_null_eta_means_no_noise():
    config = run_config({"privacy": {"mechanism": "dchi", "eta": None, "cti": True}})
    assert config.privacy.mechanism == "none" and not config.privacy.cti


def test_bad_config_is_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "base": {"method": "prefix"}, "grid": {}}))
    with pytest.raises(ValueError, match="unknown tuning method 'prefix'"):
        load_experiment(bad)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_experiment(tmp_path / "broken.json")


def test_tiny_grid_end_to_end_resumes_and_reports(tmp_path, data_dir):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({
        "name": "tiny", "base": {"dataset": "sst2", "train_limit": 32, "eval_limit": 16, "bottom_layers": 0,
                                 "privacy": {"mechanism": "dchi"}, "train": {"batch_size": 16, "noise_seed": 0}},
        "grid": {"privacy.eta": [None, 10]}, "seeds": [0], "attacks": ["nn"], "attack_limit": 8}))
    logs = []
    records = run_experiment(config, results_dir=tmp_path / "results", progress=False, log=logs.append)
    assert len(records) == 2 and len(logs) == 2
    clean, noisy = sorted(records, key=lambda r: r["grid"]["privacy.eta"] is not None)
    for r in records:
        assert {"accuracy", "baseline_accuracy", "accuracy_loss"} <= set(r["utility"])
        assert r["privacy"]["empirical_privacy"] == pytest.approx(1 - r["privacy"]["max_success"])
        assert r["versions"]["torch"] and "git_commit" in r
    # without noise the nearest-neighbour attack inverts k = 0 exactly: no privacy
    assert clean["privacy"]["empirical_privacy"] < 0.02
    assert noisy["privacy"]["empirical_privacy"] > clean["privacy"]["empirical_privacy"]

    again = run_experiment(config, results_dir=tmp_path / "results", progress=False, log=logs.append)
    assert [r["wall_time_s"] for r in again] == [r["wall_time_s"] for r in records], "finished points are reused"

    # another experiment with a point of the same setting reuses its training and attack results
    cache = tmp_path / "results" / "runs"
    cached = sorted(p.name for d in ("utility", "attacks", "baselines") for p in (cache / d).glob("*.json"))
    assert len(cached) == 2 + 2 + 1
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**json.loads(config.read_text()), "name": "other", "grid": {"privacy.eta": [10]}}))
    (shared,) = run_experiment(other, results_dir=tmp_path / "results", progress=False, log=logs.append)
    assert shared["utility"] == noisy["utility"] and shared["privacy"] == noisy["privacy"]
    assert sorted(p.name for d in ("utility", "attacks", "baselines") for p in (cache / d).glob("*.json")) == cached

    # a record from before per-sentence correctness is completed with a recomputed baseline, nothing else rerun
    (baseline_file,) = (cache / "baselines").glob("*.json")
    old_baseline = json.loads(baseline_file.read_text())
    baseline_file.write_text(json.dumps({k: v for k, v in old_baseline.items() if k != "correct"}))
    record_file = next(p for p in (cache / "tiny").glob("*.json")
                       if json.loads(p.read_text())["run_id"] == noisy["run_id"])
    aged = json.loads(record_file.read_text())
    aged["utility"]["baseline_correct"] = None
    record_file.write_text(json.dumps(aged))
    completed = next(r for r in run_experiment(config, results_dir=tmp_path / "results", progress=False,
                                               log=logs.append) if r["run_id"] == noisy["run_id"])
    assert completed["utility"]["baseline_correct"] == old_baseline["correct"]
    assert completed["wall_time_s"] == noisy["wall_time_s"] and completed["privacy"] == noisy["privacy"]
    assert json.loads(baseline_file.read_text())["correct"] == old_baseline["correct"]

    report = write_report(tmp_path / "results")
    text = report.read_text()
    assert "## tiny" in text and "## other" in text and "Best frontier point" in text
    assert (tmp_path / "results" / "figures" / "frontier.png").stat().st_size > 1000
    rows = aggregate(load_records(tmp_path / "results" / "runs"))["tiny"]
    assert frontier_point(rows) is not None


def test_pareto_front_keeps_only_undominated_points():
    nan = float("nan")
    points = {"a": (0.00, 0.001), "b": (0.05, 0.15), "c": (0.06, 0.10), "d": (0.13, 0.49), "e": (0.31, 0.82),
              "f": (0.30, 0.49), "g": (0.10, nan)}
    rows = [{"name": n, "accuracy_loss": loss, "empirical_privacy": priv} for n, (loss, priv) in points.items()]
    assert [r["name"] for r in pareto_front(rows)] == ["a", "b", "d", "e"]


def test_committed_records_keep_their_keys():
    """Every point of every committed grid finds its record: refactors of the config layout must not orphan the
    results (they take hours to recompute)."""
    from splitpriv.experiments.cache import config_key, digest
    from splitpriv.experiments.grid import load_experiment
    from splitpriv.experiments.privacy import attack_specs_of

    root = Path(__file__).resolve().parents[2]
    missing = []
    for path in sorted((root / "experiments" / "configs").glob("*.json")):
        exp = load_experiment(path)
        for point in exp.runs():
            config = run_config(point["config"])
            key = digest({"config": config_key(config), "attacks": attack_specs_of(exp.attacks, config),
                          "attack_limit": exp.attack_limit})
            if not (root / "results" / "runs" / exp.name / f"{key}.json").is_file():
                missing.append((exp.name, point["grid"], point["seed"]))
    assert not missing


def test_a_warm_started_run_is_also_compared_with_a_reference_of_equal_passes(tmp_path, data_dir):
    """A run that warm-starts its privatizer at home reads each sentence ``warm_start + epochs`` times; the
    stricter reference trains that many epochs, and old records gain it when their config is run again."""
    from splitpriv.experiments.frontier import frontier_points

    config = tmp_path / "warm.json"
    config.write_text(json.dumps({
        "name": "warm", "base": {"dataset": "sst2", "train_limit": 32, "eval_limit": 16, "bottom_layers": 1,
                                 "privacy": {"mechanism": "dchi", "eta": 4,
                                             "privatizer": {"name": "bottleneck", "r": 4}},
                                 "train": {"batch_size": 16, "noise_seed": 0, "privatizer_warm_start": 1,
                                           "warm_start_blocks": True}},
        "grid": {}, "seeds": [0], "attacks": []}))
    results = tmp_path / "results"
    (record,) = run_experiment(config, results_dir=results, progress=False, log=lambda _: None)
    u = record["utility"]
    assert u["passes_baseline_epochs"] == 2 and len(u["passes_baseline_correct"]) == 16
    assert u["passes_accuracy_loss"] == pytest.approx(u["passes_baseline_accuracy"] - u["accuracy"])
    (point,) = frontier_points(results, ["warm"])
    assert point["passes_loss_pts"] == pytest.approx(100 * u["passes_accuracy_loss"])
    (path,) = (results / "runs" / "warm").glob("*.json")
    aged = json.loads(path.read_text())
    aged["utility"] = {k: v for k, v in aged["utility"].items() if not k.startswith("passes_")}
    path.write_text(json.dumps(aged))
    (again,) = run_experiment(config, results_dir=results, progress=False, log=lambda _: None)
    assert again["utility"] == u and again["wall_time_s"] == record["wall_time_s"]


def test_the_report_headline_is_the_frontiers_capped_best(tmp_path):
    """The headline states frontier.json's ``best`` (block cap, equal-passes loss) and its verdict, so the report
    can never call a point the best that the frontier excluded for holding the model at the customer."""
    from splitpriv.experiments.frontier import headline

    assert headline(tmp_path, min_privacy_percent=90, max_loss_points=1) is None
    best = {"experiment": "deep", "setting": {"privacy.eta": 4}, "privacy": 0.92, "strongest_attack": "adaptive",
            "loss_pts": 0.2, "passes_loss_pts": 1.9, "customer_blocks": 2, "total_blocks": 6, "disclosure": 0.68,
            "customer_compute_share": 0.71}
    (tmp_path / "frontier.json").write_text(json.dumps({"experiments": ["deep"], "points": [best], "best": best}))
    (line, _) = headline(tmp_path, min_privacy_percent=90, max_loss_points=1)
    assert "**deep: eta=4**" in line and "92.0%" in line and "at 1.9 points" in line and "**not met**" in line
    assert "loss 1.9 > 1 pt" in line and "compute 71.0% > 33.3%" in line and "set-level attack not run" in line
    assert "blocks" not in line.split("**not met**")[1]  # 2 of 6 is within the cap
    (tmp_path / "frontier.json").write_text(json.dumps({"experiments": [], "points": [best], "best": None}))
    (line, _) = headline(tmp_path, min_privacy_percent=90, max_loss_points=1)
    assert "none; the private point under the cap with the least loss is **deep: eta=4**" in line
    (tmp_path / "frontier.json").write_text(json.dumps({"experiments": [], "points": [], "best": None}))
    assert headline(tmp_path, min_privacy_percent=90, max_loss_points=1)[0].endswith("**not met**.")


def test_the_goal_verdict_needs_every_condition():
    """A point that meets privacy and loss but not the compute cap or the vendor's worth is not the goal."""
    from splitpriv.experiments.frontier import goal_misses

    point = {"privacy": 0.92, "loss_pts": 0.5, "set_recovery": 0.08, "set_floor": 0.07, "customer_blocks": 2,
             "total_blocks": 6, "customer_compute_share": 0.3, "vendor_gain_pts": 4.0}
    assert goal_misses(point) == []
    assert goal_misses({**point, "customer_compute_share": 0.71}) == ["customer compute 71.0% > 33.3%"]
    assert goal_misses({**point, "vendor_gain_pts": -1.2}) == ["vendor gain -1.2 < 3 pts over local-only"]
    assert goal_misses({**point, "set_recovery": 0.2}) == ["set-level 20.0% > floor 7.0% + 5"]
