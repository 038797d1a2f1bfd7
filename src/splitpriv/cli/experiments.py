"""``splitpriv experiment``: the experiment grids and their report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from splitpriv.cli.app import app, clean_errors, quiet_libraries



@app.command()
@clean_errors
def experiment(
    configs: list[Path] = typer.Argument(None, help="experiment configs (default: every experiments/configs/*.json)"),
    quick: bool = typer.Option(False, "--quick", help="the small variant of each grid (minutes, not hours)"),
    results: Path = typer.Option(Path("results"), help="where run records, figures and REPORT.md go"),
    report_only: bool = typer.Option(False, "--report-only", help="only aggregate existing records"),
    force: bool = typer.Option(False, "--force", help="re-run points whose record exists"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    ray: Optional[str] = typer.Option(None, "--ray", help="run each grid's points as Ray tasks, one CPU each: 'auto' "
                                      "(the running cluster), its ADDRESS, or 'local' (a Ray instance on this machine); "
                                      "same records as a sequential run (pip install 'splitpriv[ray]')"),
):
    """Run experiment grids (resumable: finished points are skipped), then write plots and REPORT.md."""
    from splitpriv.experiments.grid import run_experiment
    from splitpriv.experiments.report import write_report

    quiet_libraries()
    if not configs:
        configs = sorted(Path("experiments/configs").glob("*.json"))
        if not configs:
            raise FileNotFoundError("no configs given and none found in experiments/configs/")
    if not report_only:
        for path in configs:
            run_experiment(path, results_dir=results, quick=quick, progress=progress, force=force, log=typer.echo,
                           ray_address=ray)
    commentary = None if quick else Path("experiments/commentary.md")  # it discusses the full grid's numbers
    typer.echo(f"report: {write_report(results, quick=quick, commentary=commentary)}")



@app.command()
@clean_errors
def frontier(
    experiments: list[str] = typer.Argument(..., help="experiment names whose records make the frontier "
                                            "(e.g. frontier eta_sweep)"),
    results: Path = typer.Option(Path("results"), help="where the run records are; frontier.json goes here"),
    quick: bool = typer.Option(False, "--quick", help="the quick grids' records (runs-quick/)"),
):
    """Write results/frontier.json: one point per setting (mean over seeds), a paired bootstrap test of its
    accuracy loss, and the most private point within 1 point."""
    from splitpriv.experiments.frontier import write_frontier

    path = write_frontier(results, experiments, quick=quick)
    import json

    best = json.loads(path.read_text())["best"]
    typer.echo(f"frontier: {path}")
    if best:
        typer.echo(f"best: {best['experiment']} {best['setting']}: accuracy {best['accuracy']:.4f} vs "
                   f"{best['baseline']:.4f} ({best['loss_pts']:+.2f} pts, 95% CI {best['loss_ci95_pts']}), "
                   f"privacy {best['privacy']:.3f} (strongest: {best['strongest_attack']})")
