"""The frontier's measured utility for a setting, read from ``results/frontier.json`` when it holds it.

The file (the frontier experiments') is ``{"points": [...], "best": {...}}``; a point names its setting in ``setting``
and in ``train_args`` (the ``splitpriv train`` arguments that reproduce it). A point matches when its depth, its
mechanism and every mechanism parameter, and its privatizer are the audited setting's.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

DEPTH_KEYS = ("n_bottom_layers", "bottom_layers", "k")
UTILITY_KEYS = ("experiment", "accuracy", "baseline", "loss_pts", "privacy", "strongest_attack", "seeds",
                "set_recovery", "set_floor", "label_attack", "disclosure", "customer_blocks", "total_blocks",
                "customer_compute_share", "local_only_accuracy", "vendor_gain_pts", "headroom_pts")


def _args(train_args) -> dict:
    """``--bottom-layers 2 --eta 10`` (a string or a list) as ``{"bottom_layers": "2", "eta": "10"}``."""
    if isinstance(train_args, dict):
        return dict(train_args)
    words = shlex.split(train_args) if isinstance(train_args, str) else [str(w) for w in train_args or ()]
    out, key = {}, None
    for word in words:
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
            key = name.replace("-", "_")
            out[key] = value if eq else True
            key = None if eq else key
        elif key is not None:
            out[key], key = word, None
    return out


def _flat(point: dict) -> dict:
    """A point's setting as one flat dict (``train_args`` first, ``setting`` over it)."""
    flat = _args(point.get("train_args"))
    for source in (point.get("setting") or {}, (point.get("setting") or {}).get("privacy") or {}):
        for key, value in source.items():
            if key == "mechanism" and isinstance(value, dict):
                flat.update(value)
                flat["mechanism"] = value.get("name")
            elif not isinstance(value, dict):
                flat[key] = value
    return flat


def _same(a, b) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-6)
    except (TypeError, ValueError):
        return str(a).strip().lower() == str(b).strip().lower()


def matches(point: dict, n_bottom_layers: int, mechanism: dict, privatizer=None) -> bool:
    """Whether ``point`` was measured in this setting."""
    flat = _flat(point)
    depth = next((flat[k] for k in DEPTH_KEYS if k in flat), 0)
    if not _same(depth, n_bottom_layers) or not _same(flat.get("mechanism", "none"), mechanism.get("name")):
        return False
    if any(k not in flat or not _same(flat[k], v) for k, v in mechanism.items() if k != "name"):
        return False
    return _privatizer(flat.get("privatizer")) == _privatizer(privatizer)


def _privatizer(spec):
    """A privatizer spec or config in canonical form (None for none; as given when it does not validate)."""
    from splitpriv.privacy.privatizer import privatizer_config

    try:
        return privatizer_config(spec)
    except (ValueError, TypeError, LookupError):
        return spec


def frontier_utility(path, n_bottom_layers: int, mechanism: dict, privatizer=None, *, explain: bool = False):
    """The matching point's utility figures, or None (``explain``: a dict with a ``note`` saying why none)."""
    p = Path(path)
    if not p.is_file():
        return {"note": f"{p} does not exist yet (the frontier experiments write it)", "path": str(p)} \
            if explain else None
    try:
        points = json.loads(p.read_text(encoding="utf-8")).get("points") or []
    except (json.JSONDecodeError, AttributeError) as exc:
        return {"note": f"{p} is not a frontier file ({exc})", "path": str(p)} if explain else None
    for point in points:
        if isinstance(point, dict) and matches(point, n_bottom_layers, mechanism, privatizer):
            return {"path": str(p), **{k: point.get(k) for k in UTILITY_KEYS if k in point}}
    return {"note": f"{p} has no point for this setting", "path": str(p)} if explain else None
