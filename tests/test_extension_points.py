"""Extension points: a mechanism and an attack, each one file outside the source tree (tests/plugins/), show up in
the command line and the experiment grid with no other edit (the layers: tests/test_architecture.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PLUGINS = Path(__file__).resolve().parent / "plugins"


def _env() -> dict:
    env = dict(os.environ)
    env.update(SPLITPRIV_PLUGINS="toy_shift,toy_guess", PYTHONPATH=f"{PLUGINS}{os.pathsep}{env.get('PYTHONPATH', '')}",
               COLUMNS="400", TERM="dumb", NO_COLOR="1")
    return env


def _cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "splitpriv.cli", *args], capture_output=True, text=True, env=_env(),
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return " ".join(out.stdout.replace("│", " ").split())  # help text as words: rich wraps long option help


def test_plugin_mechanism_and_attack_appear_in_the_cli():
    train = _cli("train", "--help")
    assert "toyshift" in train and "--shift" in train and "constant added to every coordinate" in train
    attack = _cli("attack", "--help")
    assert "toyguess" in attack and "one fixed token at every position" in attack and "--token" in attack
    assert "toyshift" in attack  # the attack command's --mechanism reads the same registry


def test_plugin_mechanism_and_attack_run_in_the_grid(tmp_path):
    config = tmp_path / "toy.json"
    config.write_text(json.dumps({
        "name": "toy", "base": {"dataset": "sst2-sample", "train_limit": 16, "eval_limit": 16,
                                "privacy": {"mechanism": "toyshift"}, "train": {"batch_size": 8, "noise_seed": 0}},
        "grid": {"privacy.shift": [0.5]}, "seeds": [0], "attacks": ["toyguess", "nn"], "attack_limit": 8}))
    script = (f"from splitpriv.experiments.grid import run_experiment; import json; "
              f"print(json.dumps(run_experiment({str(config)!r}, results_dir={str(tmp_path / 'results')!r}, "
              f"progress=False, log=lambda *a: None)))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), timeout=600,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (record,) = json.loads(out.stdout.strip().splitlines()[-1])
    assert record["config"]["privacy"]["mechanism"] == {"name": "toyshift", "shift": 0.5}
    attacks = record["privacy"]["attacks"]
    assert set(attacks) == {"toyguess", "nn"}
    assert 0.0 <= attacks["toyguess"]["success"] <= 1.0 and 0.0 <= record["utility"]["accuracy"] <= 1.0


def test_a_misspelt_plugin_module_is_one_clear_error():
    env = _env()
    env["SPLITPRIV_PLUGINS"] = "toy_shfit"
    out = subprocess.run([sys.executable, "-m", "splitpriv.cli", "train", "--help"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode != 0 and "plugin module 'toy_shfit'" in out.stderr
