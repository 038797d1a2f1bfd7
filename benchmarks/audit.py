"""Wall time of ``splitpriv audit`` on 500 sentences at k = 0 and k = 2, on 2 threads.

The customer's file is 500 SST-2 dev sentences with their labels (written to a temporary CSV); the setting is d_chi
η = 10 at k = 0 and k = 2, every inversion attack that applies with its default options (``--quick``: the cheap
options of tests/test_audit.py), the privacy curve, and label leakage on 64 rows. Reported per depth: the total,
the attacks' own seconds, the curve's and the label run's share.

    python benchmarks/audit.py [--quick] [--n 500] [--depths 0,2]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (environment first)
from common import load_dev, machine, print_table, quiet, write_result

QUICK = {"n_public": 64, "learned_epochs": 1, "arch": "mlp", "batch_size": 8, "steps": 20, "top_k": 64,
         "n_prior": 16, "adaptive_epochs": 1, "adaptive_width": 64, "adaptive_layers": 1}


def _csv(folder: Path, n: int) -> Path:
    texts, labels = load_dev(n)
    path = folder / "customer.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(zip(texts, labels))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--depths", default="0,2")
    ap.add_argument("--quick", action="store_true", help="cheap attack options (as in the tests)")
    a = ap.parse_args()
    quiet()
    import torch

    from splitpriv.attacks.registry import ATTACKS
    from splitpriv.audit import AuditConfig, write_audit
    from splitpriv.models import load_model

    torch.set_num_threads(2)
    declared = {o for n in ATTACKS.names() for o in ATTACKS.get(n).option_names()}
    options = {k: v for k, v in QUICK.items() if k in declared} if a.quick else {}
    loaded = load_model()
    where = machine()
    rows, runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        data = _csv(Path(tmp), a.n)
        for k in (int(d) for d in a.depths.split(",")):
            config = AuditConfig(file=str(data), label_column="label", n_bottom_layers=k,
                                 mechanism={"name": "dchi", "eta": 10.0}, limit=a.n, attack_options=options,
                                 progress=False)
            t0 = time.perf_counter()
            audit = write_audit(config, Path(tmp) / f"out-k{k}", loaded)
            total = time.perf_counter() - t0
            attacks = {n: r["seconds"] for n, r in audit["results"].items()}
            runs.append({"k": k, "seconds": total, "attack_seconds": attacks, "attacks": audit["attacks"],
                         "empirical_privacy": audit["empirical_privacy"],
                         "strongest_attack": audit["strongest_attack"]})
            rows.append([k, total, sum(attacks.values()), audit["strongest_attack"], audit["empirical_privacy"]])
            print(f"k={k}: {total:.0f} s", flush=True)
            write_result("audit" + ("-quick" if a.quick else ""), {  # after each depth: a stop keeps what ran
                "n": a.n, "quick": a.quick, "attack_options": options, "runs": runs, "machine": where})
    print_table(rows, ["k", "total s", "attacks s", "strongest", "privacy"])


if __name__ == "__main__":
    main()
