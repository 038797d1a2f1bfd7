"""An experiment's independent points as Ray tasks (``splitpriv experiment --ray auto|ADDRESS|local``).

Each point is one task running :func:`~splitpriv.experiments.grid.run_one`, exactly what the sequential loop runs,
on one CPU with one torch thread: records, caches and keys are the same, so a grid run on Ray and one run
sequentially write the same records (``tests/experiments/test_grid_ray.py``), and either resumes the other. Tasks write the
shared caches (``runs/baselines``, ``runs/attacks``) with unique temporary names and atomic renames; two tasks that
need one baseline at once both compute it and the second rename wins with equal content. The driver writes every
returned record too, so a cluster whose workers do not share this results directory still leaves them here.
"""

from __future__ import annotations

import json
from pathlib import Path


def run_points(exp, points: list[dict], runs_dir: Path, *, run_one, write_json, quick: bool, force: bool,
               address: str = "auto"):
    """Submit every point, then yield their records in the points' order as they finish. ``run_one`` runs one
    point (the grid's own, passed in so that this module does not import the grid that imports it) and
    ``write_json`` stores a record the workers did not leave here. ``address``: "local" starts a Ray instance on
    this machine; anything else is passed to ``ray.init`` ("auto": the running cluster)."""
    import ray

    from splitpriv.service.ray_serve import connect, worker_env

    connect(address)
    task = ray.remote(num_cpus=1, max_retries=1, runtime_env={"env_vars": worker_env(1)})(_run_point)
    runs_dir = Path(runs_dir).resolve()
    refs = [task.remote(run_one, exp, point, str(runs_dir), quick, force) for point in points]
    for ref in refs:
        record = ray.get(ref)
        path = runs_dir / exp.name / f"{record['run_id']}.json"
        if not path.is_file():
            write_json(path, record)
        yield record


def _run_point(run_one, exp, point: dict, runs_dir: str, quick: bool, force: bool) -> dict:
    import torch

    torch.set_num_threads(1)
    record = run_one(exp, point, Path(runs_dir), quick=quick, progress=False, force=force)
    return json.loads(json.dumps(record, default=str))


__all__ = ["run_points"]
