"""Re-run chosen grid points from scratch into a scratch results folder and compare them with the committed
records: the refactor check of the extension-point issue (every committed number still reproduces).

    python scripts/spot_check.py eta_sweep:privacy.eta=10 cti:privacy.eta=10,privacy.cti=true depth:bottom_layers=2
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from splitpriv.experiments.cache import config_key, digest
from splitpriv.experiments.grid import load_experiment, run_config, run_one
from splitpriv.experiments.privacy import attack_specs_of

ROOT = Path(__file__).resolve().parents[1]


def parse(arg: str):
    name, _, assignments = arg.partition(":")
    want = {}
    for item in filter(None, assignments.split(",")):
        key, _, value = item.partition("=")
        want[key] = json.loads(value)
    return name, want


def main(args: list[str]) -> int:
    scratch = Path(tempfile.mkdtemp(prefix="spot-check-"))
    worst = 0.0
    for arg in args:
        name, want = parse(arg)
        exp = load_experiment(ROOT / "experiments" / "configs" / f"{name}.json")
        point = next(p for p in exp.runs() if all(p["grid"].get(k) == v for k, v in want.items()) and p["seed"] == 0)
        config = run_config(point["config"])
        key = digest({"config": config_key(config), "attacks": attack_specs_of(exp.attacks, config),
                      "attack_limit": exp.attack_limit})
        old = json.loads((ROOT / "results" / "runs" / exp.name / f"{key}.json").read_text())
        new = run_one(exp, point, scratch, quick=False, progress=False)
        rows = [("accuracy", old.get("utility", {}).get("accuracy"), new.get("utility", {}).get("accuracy")),
                ("baseline", old.get("utility", {}).get("baseline_accuracy"),
                 new.get("utility", {}).get("baseline_accuracy"))]
        for attack, res in old.get("privacy", {}).get("attacks", {}).items():
            rows.append((attack, res["success"], new["privacy"]["attacks"][attack]["success"]))
        for what, a, b in rows:
            delta = abs(a - b) if a is not None and b is not None else float("nan")
            worst = max(worst, delta) if delta == delta else worst
            print(f"{name} {point['grid']} {what}: committed {a} re-run {b} |delta| {delta:.2e}", flush=True)
    print(f"largest |delta| {worst:.2e}")
    return 0 if worst <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
