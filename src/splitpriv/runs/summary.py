"""What a finished run folder says about itself in a few lines: utility next to its baseline, what the customer
holds, and the privacy its attack records measured (``privacy.json`` from ``splitpriv attack --run DIR --attack all
--json``, ``labels-attack.json`` from ``--attack label``). ``python -m splitpriv.runs.summary DIR`` prints them; the
main job (``scripts/main.sh``) ends with it. Reads files only: every figure comes from the run's own records."""

from __future__ import annotations

import json
import sys
from pathlib import Path

PRIVACY_FILE = "privacy.json"
LABELS_FILE = "labels-attack.json"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def summary_lines(run_dir: str | Path) -> list[str]:
    """The summary of ``run_dir`` (see the module docstring); a line per measured aspect, the first one headline."""
    run = Path(run_dir)
    m = json.loads((run / "metrics.json").read_text())
    cfg = json.loads((run / "run.json").read_text())
    privacy, labels = _read(run / PRIVACY_FILE), _read(run / LABELS_FILE)
    head = f"main job: accuracy {m['accuracy']:.4f}"
    if m.get("baseline_accuracy") is not None:
        head += f" vs centralized {m['baseline_accuracy']:.4f} ({100 * (m['baseline_accuracy'] - m['accuracy']):+.1f} points lost)"
    if privacy:
        head += (f"; empirical privacy {_pct(privacy['empirical_privacy'])} of tokens (strongest attack: "
                 f"{privacy['strongest_attack']})")
    lines = [head]
    lines.append(f"  data: {m['n_train']} training sentences of {m['dataset']}, {cfg['train']['epochs']} epoch(s), "
                 f"{m.get('warm_start_steps', 0)} warm-start steps at home; accuracy on {m['n_eval']} "
                 f"{cfg['eval_split']} sentences")
    d = m.get("disclosure")
    if d:
        lines.append(f"  the customer holds {d['n_bottom_layers'] + d['n_tail_layers']} of {d['n_layers']} blocks and "
                     f"the embeddings: {_pct(d['shipped_share'])} of the vendor's weights")
    lines += _privacy_lines(privacy) + _label_lines(labels, cfg)
    return lines


def _privacy_lines(p: dict | None) -> list[str]:
    if p is None:
        return ["  privacy: not measured (no privacy.json: run `splitpriv attack --run DIR --attack all --json`)"]
    per = ", ".join(f"{name} {_pct(r['success'])}" for name, r in p["results"].items() if r.get("set_floor") is None)
    out = [f"  token attacks on {p['n_texts']} {p['split']} sentences (share of tokens recovered): {per}; "
           f"most frequent token everywhere {_pct(p['chance_recovery'])}"]
    if p.get("content_privacy") is not None:
        out.append(f"  content words (alphabetic, >= 3 letters, not stop words) kept private: {_pct(p['content_privacy'])}")
    if p.get("set_recovery") is not None:
        out.append(f"  set-level attack names {_pct(p['set_recovery'])} of a sentence's content words correctly "
                   f"(public-frequency guess {_pct(p['set_floor'])})")
    by_reason: dict[str, list[str]] = {}
    for name, why in (p.get("skipped") or {}).items():
        by_reason.setdefault(why, []).append(name)
    if by_reason:
        out.append("  not applicable here: " + "; ".join(f"{', '.join(n)} ({why})" for why, n in by_reason.items()))
    used = p.get("customer_train_limit")
    out.append(f"  the attacker trained on public text: WikiText-2 from the {p.get('public_text', '?')}"
               + (f", and the {p['dataset']} training rows outside the customer's {used}" if used else ""))
    return out


def _label_lines(labels: dict | None, cfg: dict) -> list[str]:
    if labels is None:
        return []
    eps = cfg["privacy"].get("label_dp_epsilon")
    how = f"{cfg['head']}-held head, " + (f"label DP eps = {eps}" if eps else "no label DP")
    floor, n = labels.get("floor_accuracy", labels.get("majority_accuracy", 0.5)), max(labels.get("n_samples", 1), 1)
    # exposed: above the label floor by more than 3 binomial standard errors of a rate at the floor
    verdict = "exposed" if labels["success"] > floor + 3 * (floor * (1 - floor) / n) ** 0.5 else "not shown exposed"
    return [f"  labels: {verdict} to the vendor: the label attack reads {_pct(labels['success'])} of the customer's "
            f"training labels from the returned gradients ({how}; best guess without the gradients {_pct(floor)})"]


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m splitpriv.runs.summary RUN_DIR")
    print("\n".join(summary_lines(args[0])))


if __name__ == "__main__":
    main()
