"""Extension points: a mechanism and an attack, each one file outside the source tree (tests/plugins/), show up in
the command line and the experiment grid with no other edit; the layers import one way; modules stay small."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "splitpriv"
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
    return out.stdout


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


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _under(names: set[str], *prefixes: str) -> set[str]:
    return {n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes)}


@pytest.mark.parametrize("layer, forbidden", [
    ("roles", ("splitpriv.attacks", "splitpriv.run", "splitpriv.cli", "splitpriv.experiments", "splitpriv.service",
               "splitpriv.simulation", "fastapi", "httpx", "uvicorn")),
    ("privacy", ("splitpriv.roles", "splitpriv.attacks", "splitpriv.run", "splitpriv.cli", "splitpriv.experiments",
                 "splitpriv.service", "splitpriv.transport")),
    ("models", ("splitpriv.roles", "splitpriv.attacks", "splitpriv.run", "splitpriv.cli", "splitpriv.service")),
    ("tuning", ("splitpriv.roles", "splitpriv.attacks", "splitpriv.run", "splitpriv.cli", "splitpriv.service")),
])
def test_dependencies_run_one_way(layer, forbidden):
    bad = {str(p.relative_to(SRC)): sorted(_under(_imports(p), *forbidden)) for p in (SRC / layer).rglob("*.py")}
    assert not {k: v for k, v in bad.items() if v}


def test_attacks_see_the_wire_not_the_parties():
    """Only the evaluator (which plays the customer) reaches the simulation harness; no attack imports a role."""
    for path in (SRC / "attacks").glob("*.py"):
        names = _imports(path)
        assert not _under(names, "splitpriv.roles", "splitpriv.transport.inprocess"), path.name
        if path.name != "evaluation.py":
            assert not _under(names, "splitpriv.simulation"), path.name


def test_nothing_imports_the_top_layers():
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        if rel.parts[0] in ("cli", "experiments"):
            continue
        assert not _under(_imports(path), "splitpriv.cli", "splitpriv.experiments"), str(rel)


def test_modules_stay_small():
    sizes = {str(p.relative_to(SRC)): len(p.read_text().splitlines()) for p in SRC.rglob("*.py")}
    assert not {k: v for k, v in sizes.items() if v > 420}
