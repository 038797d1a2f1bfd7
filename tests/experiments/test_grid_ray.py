"""`splitpriv experiment --ray`: a two-point grid whose points run as Ray tasks on a local instance writes the same
records as the sequential grid."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("ray", reason="needs the ray extra (pip install '.[ray]')")

from splitpriv.experiments.grid import run_experiment  # noqa: E402

TIMING = {"wall_time_s", "git_commit", "versions", "train_time_s", "eval_time_s", "time_s"}


def _diff(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{path}.{k}")]
    return [] if a == b else [f"{path}: {str(a)[:80]} != {str(b)[:80]}"]


def _same(record: dict) -> dict:
    """A record without what differs between two identical runs (timings, throughputs, the commit)."""
    if isinstance(record, dict):
        return {k: _same(v) for k, v in record.items() if k not in TIMING and not k.endswith(("_time_s", "_per_s"))}
    if isinstance(record, list):
        return [_same(v) for v in record]
    return record


@pytest.mark.slow
def test_the_grid_on_ray_writes_the_sequential_records(tmp_path, data_dir):
    import ray

    config = tmp_path / "two.json"
    config.write_text(json.dumps({
        "name": "two", "base": {"dataset": "sst2", "train_limit": 32, "eval_limit": 16, "bottom_layers": 1,
                                "privacy": {"mechanism": "dchi"}, "train": {"batch_size": 16, "noise_seed": 0}},
        "grid": {"privacy.eta": [5, 20]}, "seeds": [0], "attacks": ["nn"], "attack_limit": 8}))
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as a Ray task runs (experiments.parallel): float sums depend on the thread count
    try:
        sequential = run_experiment(config, results_dir=tmp_path / "seq", progress=False, log=lambda _: None)
    finally:
        torch.set_num_threads(before)
    logs = []
    try:
        on_ray = run_experiment(config, results_dir=tmp_path / "ray", progress=False, log=logs.append,
                                ray_address="local")
    finally:
        ray.shutdown()
    assert len(logs) == 2
    for mine, theirs in zip(on_ray, sequential, strict=True):
        assert not _diff(_same(mine), _same(theirs))
    files = sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray").rglob("*.json"))
    assert files == sorted(p.relative_to(tmp_path / "seq") for p in (tmp_path / "seq").rglob("*.json"))
    assert not list((tmp_path / "ray").rglob("*.tmp"))
    for f in files:
        if f.parts[1] == "two":
            assert _same(json.loads((tmp_path / "ray" / f).read_text())) == \
                _same(json.loads((tmp_path / "seq" / f).read_text()))
