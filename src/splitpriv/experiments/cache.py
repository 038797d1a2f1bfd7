"""Where the experiment grid keeps what it computed: JSON records and caches keyed by a hash of everything that
determines them (:func:`config_key`), written atomically so that concurrent runs can share them; and the trained
bottoms of privatizer points, outside ``results/`` (they are weights)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

# RunConfig fields added after records were first written, with their default. At the default they do not change
# what a run computes, so they are left out of its key: existing records and caches stay valid.
_NEUTRAL_DEFAULTS = {"denoise": "none", "robust_top": None, "task": "sequence-classification", "tail_layers": 0,
                     "eval_before": False, "vendor_pretrain": None}


def config_key(config) -> dict:
    """What determines a run of ``config`` (a RunConfig), without the fields left at a neutral default."""
    key = {**config.to_dict(), "privacy": config.privacy.legacy_layout()}
    key["train"] = {k: v for k, v in key["train"].items() if (k, v) not in (("privatizer_lr", None),
                                                                          ("privatizer_warm_start", 0),
                                                                          ("warm_start_blocks", False))}
    return {k: v for k, v in key.items() if not (k in _NEUTRAL_DEFAULTS and v == _NEUTRAL_DEFAULTS[k])}


def digest(obj) -> str:
    """16 hex digits of the SHA-256 of ``obj`` as canonical JSON: the name of a record or cache file."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


CACHE_DIRS = ("baselines", "utility", "attacks", "local_only")


def trained_bottom_dir(config) -> Path:
    """Where a privatizer point keeps its customer's final bottom (privatizer included) for the attacks:
    ``$SPLITPRIV_CACHE/bottoms/<utility key>`` (weights stay out of ``results/``)."""
    import os

    root = Path(os.environ.get("SPLITPRIV_CACHE", Path.home() / ".cache" / "splitpriv"))
    return root / "bottoms" / digest(config_key(config))


def write_json(path: Path, obj) -> None:
    import os
    import secrets

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(3)}.tmp")  # concurrent runs write caches
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)


def cached(path: Path | None, compute, force: bool = False, complete=lambda value: True):
    """``compute()``, stored as JSON at ``path``; read back instead when it is there, ``complete(stored)`` holds
    and not ``force``."""
    if path is not None and path.is_file() and not force:
        stored = json.loads(path.read_text())
        if complete(stored):
            return stored
    value = compute()
    if path is not None:
        write_json(path, value)
    return value
