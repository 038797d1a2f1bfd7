"""Vendor-side noise adaptation of the top on public text (splitpriv.roles.vendor.robust_top), with the real MiniLM and
the real WikiText-2 slice."""

import json
from dataclasses import replace

import pytest
import torch

from splitpriv.config import PrivacyConfig, TrainConfig
from splitpriv.roles.vendor.robust_top import META_FILE, RobustTopConfig, adaptation_of
from splitpriv.runs.run import RunConfig

DCHI = PrivacyConfig(mechanism="dchi", eta=5.0)
TINY = {"steps": 6, "batch_size": 16, "max_length": 32, "lr": 1e-3, "n_public": 64, "n_heldout": 32}


@pytest.mark.parametrize(
    "options, privacy, message",
    [
        ({}, PrivacyConfig(), "needs a privacy mechanism"),
        ({"steps": 0}, DCHI, "steps must be a positive integer"),
        ({"lr": float("nan")}, DCHI, "lr must be a finite number"),
        ({"n_public": 4}, DCHI, "n_public must be an integer >= batch_size"),
        ({"warmup_ratio": 1.0}, DCHI, "warmup_ratio"),
        ({"eta": 3}, DCHI, "unknown robust_top options"),
    ],
)
def test_bad_config_is_refused(options, privacy, message):
    with pytest.raises(ValueError, match=message):
        RobustTopConfig.for_run(options, privacy, 0)


def test_denoised_adaptation_needs_k0():
    with pytest.raises(ValueError, match="needs k = 0"):
        RobustTopConfig.for_run({}, DCHI, 2, "map")
    with pytest.raises(ValueError, match="denoise must be one of"):
        RobustTopConfig.for_run({}, DCHI, 0, "median")


def test_run_config_refuses_a_remote_or_centralized_vendor():
    with pytest.raises(ValueError, match="splitpriv serve --model"):
        RunConfig(privacy=DCHI, robust_top={}, vendor_url="http://127.0.0.1:1").validate()
    with pytest.raises(ValueError, match="splitpriv serve --model"):
        RunConfig(privacy=DCHI, robust_top={}, centralized=True).validate()


def test_adapted_model_keeps_the_bottom_and_trains_on_it(tmp_path, monkeypatch, minilm, data_dir):
    """The adapted folder is an ordinary model: bottom bit-identical to the original (so what customers send and
    every attack on it are unchanged), top blocks moved, held-out representation error lower; a split run uses it
    from the cache, and its baseline is still the original model."""
    from splitpriv.models import load_model
    from splitpriv.runs.run import load_data, train_split
    from splitpriv.parts import split_model

    monkeypatch.setenv("SPLITPRIV_CACHE", str(tmp_path))
    config = RunConfig(dataset="sst2", train_limit=32, eval_limit=32, privacy=DCHI, robust_top=TINY,
                       train=TrainConfig(batch_size=16, max_length=32, noise_seed=0)).validate()
    folder = config.vendor_model(progress=False)
    meta = adaptation_of(folder)
    assert meta == json.loads((tmp_path / "robust_top" / folder.split("/")[-1] / META_FILE).read_text())
    assert meta["config"]["privacy"]["mechanism"] == {"name": "dchi", "eta": 5.0} and meta["config"]["n_bottom_layers"] == 0
    assert meta["heldout_error_after"] < meta["heldout_error_before"]

    original = split_model(minilm[0], 0)
    adapted = split_model(load_model(folder)[0], 0)
    for name, tensor in original.bottom.state_dict().items():
        assert torch.equal(tensor, adapted.bottom.state_dict()[name]), name
    moved = [n for n, t in original.top.state_dict().items()
             if n.startswith("bert.encoder") and not torch.equal(t, adapted.top.state_dict()[n])]
    assert moved, "no block of the top changed"

    assert config.vendor_model() == folder  # cached: no second distillation
    train, evaluation = load_data(config)
    result = train_split(config, train, evaluation, progress=False)
    assert len(result["losses"]) == 2 and 0 <= result["accuracy"] <= 1
    assert replace(config, robust_top=None).vendor_model() is None


def test_cli_writes_a_servable_folder_and_names_bad_input(tmp_path, data_dir):
    from typer.testing import CliRunner

    from splitpriv.cli import app
    from splitpriv.roles.vendor import Vendor

    runner = CliRunner()
    bad = runner.invoke(app, ["robust-top", "--out", str(tmp_path / "m"), "--mechanism", "none"])
    assert bad.exit_code == 2 and "needs a privacy mechanism" in bad.output and not (tmp_path / "m").exists()
    bad = runner.invoke(app, ["robust-top", "--out", str(tmp_path / "m"), "--eta", "10", "-k", "6"])
    assert bad.exit_code == 2 and "nothing to adapt" in bad.output

    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    bad = runner.invoke(app, ["robust-top", "--out", str(keep), "--eta", "10", "--steps", "1"])
    assert bad.exit_code == 2 and "refusing to overwrite" in bad.output
    assert (keep / "notes.txt").read_text() == "mine"

    out = tmp_path / "m"
    ok = runner.invoke(app, ["robust-top", "--out", str(out), "--eta", "10", "--steps", "2", "--batch-size", "8",
                             "--max-length", "16", "--no-progress"])
    assert ok.exit_code == 0, ok.output
    assert "held-out representation error" in ok.output and adaptation_of(out)["config"]["steps"] == 2
    Vendor(str(out))  # the service loads it like any model folder
    again = runner.invoke(app, ["robust-top", "--out", str(out), "--eta", "10", "--steps", "1", "--batch-size", "8",
                                "--max-length", "16", "--no-progress"])
    assert again.exit_code == 0 and adaptation_of(out)["config"]["steps"] == 1  # an adapted folder is replaced
