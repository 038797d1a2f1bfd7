"""The main job's pipeline on a tiny scale, offline: train with a baseline, attack the finished run with every
attack that applies (the attacker reading the embedded public text and the rows the customer did not use), the
label attack, then the summary, whose every figure must be the records'."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from splitpriv.cli import app
from splitpriv.runs.summary import summary_lines

TINY_ADAPTIVE = ["--n-public", "48", "--n-unused-train", "48", "--adaptive-epochs", "1", "--adaptive-holdout", "16",
                 "--adaptive-width", "64", "--adaptive-layers", "1", "--linear-draws", "1"]


@pytest.fixture(scope="module")
def attacked_run(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.delenv("SPLITPRIV_DATA_DIR", raising=False)
    mp.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path_factory.mktemp("main") / "run"
    cli = CliRunner()
    try:
        trained = cli.invoke(app, ["train", "--dataset", "sst2-sample", "--train-limit", "64", "--eval-limit", "32",
                                   "-k", "1", "--mechanism", "dchi", "--eta", "4", "--privatizer",
                                   "bottleneck:r=4,clip=1", "--privatizer-warm-start", "1", "--warm-start-blocks",
                                   "--baseline", "--no-progress", "--out", str(out)])
        assert trained.exit_code == 0, trained.output
        tokens = cli.invoke(app, ["attack", "--run", str(out), "--attack", "all", "--limit", "8", "--no-progress",
                                  "--json", *TINY_ADAPTIVE])
        assert tokens.exit_code == 0, tokens.output
        (out / "privacy.json").write_text(tokens.output.strip().splitlines()[-1])
        labels = cli.invoke(app, ["attack", "--run", str(out), "--attack", "label", "--limit", "16", "--no-progress",
                                  "--json"])
        assert labels.exit_code == 0, labels.output
        (out / "labels-attack.json").write_text(labels.output.strip().splitlines()[-1])
    finally:
        mp.undo()
    return out


def test_the_attack_reads_the_run_and_the_public_text_it_may(attacked_run):
    p = json.loads((attacked_run / "privacy.json").read_text())
    assert p["dataset"] == "sst2-sample" and p["n_bottom_layers"] == 1 and p["privatized"]
    assert p["public_text"] == "embedded sample" and p["customer_train_limit"] == 64
    assert {"floor", "adaptive", "set", "linear"} <= set(p["results"]) and "opt" in p["skipped"]
    assert p["results"]["adaptive"]["n_train_texts"] == 48 + 48 - 16  # WikiText + unused rows - held out


def test_summary_lines_carry_the_records_figures(attacked_run):
    m = json.loads((attacked_run / "metrics.json").read_text())
    p = json.loads((attacked_run / "privacy.json").read_text())
    labels = json.loads((attacked_run / "labels-attack.json").read_text())
    lines = summary_lines(attacked_run)
    assert lines[0].startswith(f"main job: accuracy {m['accuracy']:.4f} vs centralized {m['baseline_accuracy']:.4f}")
    assert f"empirical privacy {100 * p['empirical_privacy']:.1f}% of tokens" in lines[0]
    text = "\n".join(lines)
    assert f"set-level attack names {100 * p['set_recovery']:.1f}%" in text
    assert f"(public-frequency guess {100 * p['set_floor']:.1f}%)" in text
    assert "1 of 6 blocks" in text and "embedded sample" in text and "outside the customer's 64" in text
    assert f"the label attack reads {100 * labels['success']:.1f}%" in text and "vendor-held head, no label DP" in text
