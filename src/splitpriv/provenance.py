"""Where a result came from: the library versions and the git commit it was computed with."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path


def versions() -> dict:
    import peft
    import torch
    import transformers

    import splitpriv

    return {"splitpriv": splitpriv.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "python": platform.python_version()}


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def git_commit() -> str | None:
    return _git("rev-parse", "HEAD") or None


def git_dirty() -> bool | None:
    """Whether tracked files other than results differ from :func:`git_commit` (the result then came from code no
    commit holds); None outside a git checkout."""
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                  ":(top,exclude)benchmarks/results", ":(top,exclude)results")
    return None if status is None else bool(status)


def run_record(config, losses: list[float]) -> dict:
    """What every run's ``metrics.json`` says about how it was made: mode, data, seed, training losses, the full
    config and the provenance above."""
    return {
        "mode": "centralized" if config.centralized else "split",
        "dataset": config.dataset,
        "seed": config.train.seed,
        "final_loss": sum(losses[-10:]) / len(losses[-10:]),
        "steps": len(losses),
        "losses": losses,
        "config": config.to_dict(),
        "versions": versions(),
        "git_commit": git_commit(),
    }
