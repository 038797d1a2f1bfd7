"""results/frontier.json: paired loss test, privatizer points attacked through their final weights."""

import json

import numpy as np
import pytest

from splitpriv.experiments.frontier import FIELDS, best_point, paired_loss, train_args, write_frontier
from splitpriv.experiments.cache import trained_bottom_dir
from splitpriv.experiments.grid import run_config, run_experiment


def _bits(rng, p, n):
    return "".join("1" if x else "0" for x in rng.random(n) < p)


def test_paired_loss_interval_has_the_width_and_coverage_of_the_mean():
    """d_i = c_b - c_p per sentence: the 95% bootstrap interval of its mean is ±1.96 sd/√n (to a few % at n =
    2000) and covers the true loss (here 5 points) in about 95% of repetitions; 40 repetitions must cover it at
    least 33 times (binomial(40, 0.95): P(< 34) ≈ 1.5%)."""
    n, covered = 2000, 0
    for rep in range(40):
        rng = np.random.default_rng(rep)
        base = rng.random(n) < 0.9
        # the private run is wrong on a fixed 5% more of the sentences, elsewhere it agrees with the baseline
        flip = rng.random(n) < 0.05 / 0.9
        priv = base & ~flip
        out = paired_loss(["".join("1" if x else "0" for x in base)], ["".join("1" if x else "0" for x in priv)],
                          n_boot=2000, seed=rep)
        d = base.astype(float) - priv.astype(float)
        half = 1.96 * d.std() / np.sqrt(n) * 100
        lo, hi = out["loss_ci95_pts"]
        assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)
        assert out["loss_pts"] == pytest.approx(100 * d.mean())
        covered += lo <= 5.0 <= hi
    assert covered >= 33


def test_paired_loss_identical_runs_and_bad_input():
    rng = np.random.default_rng(0)
    runs = [_bits(rng, 0.8, 500) for _ in range(3)]
    out = paired_loss(runs, runs)
    assert out["loss_pts"] == 0 and out["loss_ci95_pts"] == [0.0, 0.0] and out["within_1pt"]
    with pytest.raises(ValueError, match="same sentences"):
        paired_loss(["0101"], ["010"])
    with pytest.raises(ValueError, match="one baseline and one private"):
        paired_loss(runs, runs[:2])


def test_best_point_is_the_most_private_within_one_point():
    points = [{"privacy": 0.0, "loss_pts": 0.1, "within_1pt": True},
              {"privacy": 0.5, "loss_pts": 0.8, "within_1pt": True},
              {"privacy": 0.6, "loss_pts": 0.9, "within_1pt": False},
              {"privacy": 0.9, "loss_pts": 12.0, "within_1pt": False}]
    assert best_point(points)["privacy"] == 0.5
    assert best_point([dict(p, within_1pt=False) for p in points])["privacy"] == 0.6


def test_privatizer_point_end_to_end_attacked_with_its_trained_weights(tmp_path, data_dir, monkeypatch):
    """A customer-trained bottleneck point: the bottom it trained is kept outside results/, the attacks run on
    it (the nearest-neighbour attack against the *final* projection's image of the vocabulary), and the point
    lands in frontier.json with every contract field and a paired test."""
    monkeypatch.setenv("SPLITPRIV_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "priv.json"
    config.write_text(json.dumps({
        "name": "priv", "base": {"dataset": "sst2", "train_limit": 64, "eval_limit": 32, "bottom_layers": 0,
                                 "privacy": {"mechanism": "dchi", "eta": 50,
                                             "privatizer": {"name": "bottleneck", "r": 8}},
                                 "train": {"batch_size": 16, "noise_seed": 0, "bottom": "trained",
                                           "privatizer_lr": 0.05}},
        "grid": {"privacy.eta": [50]}, "seeds": [0], "attacks": ["nn", "floor"], "attack_limit": 8}))
    (record,) = run_experiment(config, results_dir=tmp_path / "results", progress=False, log=lambda *_: None)
    folder = trained_bottom_dir(run_config(record["config"]))
    assert (folder / "bottom.safetensors").is_file() and not list((tmp_path / "results").rglob("*.safetensors"))

    from safetensors.torch import load_file

    from splitpriv.attacks.runner import run_attack
    from splitpriv.models import load_model
    from splitpriv.parts import split_model

    trained = load_file(str(folder / "bottom.safetensors"))
    fresh = split_model(load_model()[0], 0, privatizer={"name": "bottleneck", "r": 8}).bottom.privatizer
    name = next(k for k in trained if k.endswith("proj.weight"))
    assert not np.allclose(trained[name].numpy(), fresh.proj.weight.detach().numpy()), "the projection trained"
    from splitpriv.parts import load_bottom

    direct = run_attack("nn", mechanism={"name": "dchi", "eta": 50}, limit=8, seed=0, progress=False,
                        bottom=load_bottom(folder), privatizer={"name": "bottleneck", "r": 8, "clip": 1.0,
                                                                "normalize": False})
    assert record["privacy"]["attacks"]["nn"]["success"] == pytest.approx(direct["success"])

    path = write_frontier(tmp_path / "results", ["priv"])
    data = json.loads(path.read_text())
    (point,) = data["points"]
    assert set(FIELDS) <= set(point) and point["seeds"] == [0] and point["strongest_attack"] in ("nn", "floor")
    assert point["loss_ci95_pts"] is not None and len(point["loss_ci95_pts"]) == 2
    assert "--privatizer bottleneck:r=8" in point["train_args"] and "--privatizer-lr 0.05" in point["train_args"]
    assert data["best"] is None or data["best"]["setting"] == point["setting"]


def test_train_args_reproduce_a_plain_dchi_point():
    config = run_config({"dataset": "sst2", "train_limit": 20000, "privacy": {"mechanism": "dchi", "eta": 10},
                         "train": {"epochs": 2}}).to_dict()
    args = train_args(config)
    assert args.startswith("splitpriv train --dataset sst2") and "--mechanism dchi --eta 10" in args and "--epochs 2" in args


def test_attack_cli_on_a_finished_run_uses_its_trained_privatizer(tmp_path, data_dir):
    from typer.testing import CliRunner

    from splitpriv.cli import app

    runner = CliRunner()
    out = tmp_path / "run"
    trained = runner.invoke(app, ["train", "--dataset", "sst2", "--train-limit", "32", "--eval-limit", "16",
                                  "--batch-size", "16", "--mechanism", "dchi", "--eta", "50", "--privatizer",
                                  "bottleneck:r=8", "--bottom", "trained", "--privatizer-lr", "0.05",
                                  "--noise-seed", "0", "--no-progress", "--out", str(out)])
    assert trained.exit_code == 0, trained.output
    args = ["attack", "--attack", "nn", "--limit", "8", "--no-progress", "--json"]
    result = runner.invoke(app, [*args, "--run", str(out)])
    assert result.exit_code == 0, result.output
    via_run = json.loads(result.output.strip().splitlines()[-1])
    from splitpriv.attacks.runner import run_attack
    from splitpriv.parts import load_bottom

    direct = run_attack("nn", mechanism={"name": "dchi", "eta": 50}, limit=8, seed=0, progress=False,
                        bottom=load_bottom(out / "customer"))
    assert via_run["success"] == pytest.approx(direct["success"])
    clash = runner.invoke(app, [*args, "--run", str(out), "--mechanism", "dchi", "--eta", "5"])
    assert clash.exit_code != 0 and "either --run or" in clash.output
    missing = runner.invoke(app, [*args, "--run", str(tmp_path / "nowhere")])
    assert missing.exit_code != 0 and "not a finished run folder" in missing.output
