"""Aggregate run records into plots and ``REPORT.md``: mean ± std over seeds per grid point, the utility–privacy
frontier, and our numbers beside the SAP paper's headline figures."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

# The SAP paper's headline figures (Shen et al., arXiv 2312.15603, RoBERTa-Large) and PrivTune's, for comparison.
PAPER_POINTS = [
    ("SAP FP, d_chi η=50", 6.17, 38.85),
    ("SAP FP, η=50 + CTI", 3.67, 38.29),
    ("SAP SST, 6 blocks", 1.0, 62.0),
    ("PrivTune", 3.33, 90.0),
]
GOAL = {"max_accuracy_loss_points": 1.0, "min_privacy_percent": 90.0, "dataset": "sst2"}


def load_records(runs_dir: str | Path) -> list[dict]:
    runs_dir = Path(runs_dir)
    from splitpriv.experiments.cache import CACHE_DIRS

    return [json.loads(p.read_text()) for p in sorted(runs_dir.glob("*/*.json")) if p.parent.name not in CACHE_DIRS]


def _stats(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and v == v]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(records: list[dict]) -> dict[str, list[dict]]:
    """Per experiment, one row per grid point: means and standard deviations over seeds."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["experiment"], json.dumps(r["grid"], sort_keys=True))].append(r)
    out: dict[str, list[dict]] = defaultdict(list)
    for (exp, grid), rs in sorted(groups.items()):
        row = {"grid": json.loads(grid), "n_seeds": len(rs), "quick": rs[0].get("quick", False),
               "config": rs[0]["config"]}
        for key in ("accuracy", "macro_f1", "accuracy_loss", "baseline_accuracy", "train_samples_per_s"):
            row[key], row[key + "_std"] = _stats([r.get("utility", {}).get(key) for r in rs])
        row["empirical_privacy"], row["empirical_privacy_std"] = _stats(
            [r.get("privacy", {}).get("empirical_privacy") for r in rs])
        attacks = defaultdict(list)
        for r in rs:
            for name, res in r.get("privacy", {}).get("attacks", {}).items():
                attacks[name].append(res.get("success"))
                for extra in ("content_recovery", "contributing_recovery", "advantage", "auc", "linking_accuracy"):
                    if extra in res:
                        attacks[f"{name}:{extra}"].append(res[extra])
        row["attacks"] = {name: _stats(v)[0] for name, v in attacks.items()}
        strongest = [r.get("privacy", {}).get("strongest_attack") for r in rs]
        row["strongest_attack"] = max(set(strongest), key=strongest.count) if any(strongest) else None
        out[exp].append(row)
    return dict(out)


def _fmt(mean: float, std: float, pct: bool = True) -> str:
    if mean != mean:
        return "–"
    scale = 100 if pct else 1
    return f"{scale * mean:.1f} ± {scale * std:.1f}" if std == std and std > 0 else f"{scale * mean:.1f}"


def _label(grid: dict) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in grid.items()) or "(single point)"


def frontier_point(rows: list[dict]) -> dict | None:
    """The most private point within the goal's utility budget, else the point closest to the goal."""
    rows = [r for r in rows if r["empirical_privacy"] == r["empirical_privacy"] and r["accuracy_loss"] == r["accuracy_loss"]]
    if not rows:
        return None
    within = [r for r in rows if 100 * r["accuracy_loss"] <= GOAL["max_accuracy_loss_points"]]
    if within:
        return max(within, key=lambda r: r["empirical_privacy"])
    return max(rows, key=lambda r: r["empirical_privacy"] - r["accuracy_loss"])


def pareto_front(rows: list[dict]) -> list[dict]:
    """The points no other point beats on both axes (lower accuracy loss and higher privacy), by loss; where
    points tie on both, the first (in experiment order) stands for them."""
    rows = [r for r in rows if r["empirical_privacy"] == r["empirical_privacy"] and r["accuracy_loss"] == r["accuracy_loss"]]
    front = []
    for r in sorted(rows, key=lambda r: (r["accuracy_loss"], -r["empirical_privacy"])):
        if not front or r["empirical_privacy"] > front[-1]["empirical_privacy"]:
            front.append(r)
    return front


def plot_frontier(agg: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 5))
    for exp, rows in agg.items():
        pts = [(100 * r["accuracy_loss"], 100 * r["empirical_privacy"]) for r in rows
               if r["accuracy_loss"] == r["accuracy_loss"] and r["empirical_privacy"] == r["empirical_privacy"]]
        if pts and "privatizer" in rows[0]["config"].get("privacy", {}):  # learned privatizers: stand out
            ax.scatter(*zip(*pts), label=exp + " (learned privatizer)", marker="D", s=90, color="crimson",
                       edgecolor="black", zorder=5)
        elif pts:
            ax.scatter(*zip(*pts), label=exp, alpha=0.8)
    for name, loss, priv in PAPER_POINTS:
        ax.scatter([loss], [priv], marker="*", s=140, color="black")
        ax.annotate(name, (loss, priv), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.axvspan(-100, GOAL["max_accuracy_loss_points"], ymin=0, ymax=1, alpha=0.05, color="green")
    ax.axhline(GOAL["min_privacy_percent"], ls="--", color="green", lw=0.8, label="goal: ≥90% privacy, ≤1 pt loss")
    ax.set_xlim(left=-2)
    ax.set_xlabel("accuracy loss vs centralized baseline (points)")
    ax.set_ylabel("empirical privacy = 1 − strongest attack (%)")
    ax.set_title("Utility–privacy frontier (MiniLM; stars: papers, RoBERTa-Large)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_versus(rows: list[dict], key: str, path: Path, title: str, series_key: str | None = None) -> None:
    """Accuracy and privacy against one grid key (η or k), one line per value of ``series_key``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if key in r["grid"]:
            series[str(r["grid"].get(series_key)) if series_key else ""].append(r)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, rs in sorted(series.items()):
        finite = [r for r in rs if r["grid"][key] is not None]
        finite.sort(key=lambda r: r["grid"][key])
        xs = [r["grid"][key] for r in finite]
        label = f"{series_key.split('.')[-1]}={name}" if series_key else None
        for ax, metric in zip(axes, ("accuracy", "empirical_privacy")):
            ys = [100 * r[metric] for r in finite]
            err = [100 * r[metric + "_std"] for r in finite]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
            none = [r for r in rs if r["grid"][key] is None]
            if none and none[0][metric] == none[0][metric]:
                ax.axhline(100 * none[0][metric], ls=":", lw=0.8, color=ax.lines[-1].get_color())
    axes[0].set_ylabel("accuracy (%)")
    axes[1].set_ylabel("empirical privacy (%)")
    for ax in axes:
        ax.set_xlabel(key.split(".")[-1])
        ax.grid(alpha=0.3)
        if series_key:
            ax.legend(fontsize=7)
    fig.suptitle(title + " (dotted: no noise)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results_dir: str | Path = "results", *, quick: bool = False, commentary: str | Path | None = None) -> Path:
    results_dir = Path(results_dir)
    runs_dir = results_dir / ("runs-quick" if quick else "runs")
    records = load_records(runs_dir)
    if not records:
        raise FileNotFoundError(f"no run records under {runs_dir}: run `splitpriv experiment CONFIG` first")
    agg = aggregate(records)
    figures = results_dir / ("figures-quick" if quick else "figures")
    figures.mkdir(parents=True, exist_ok=True)
    plot_frontier(agg, figures / "frontier.png")
    plots = {"frontier": "frontier.png"}
    for exp, rows in agg.items():
        for key, series in (("privacy.eta", "privacy.cti"), ("bottom_layers", "privacy.eta")):
            if any(key in r["grid"] for r in rows):
                name = f"{exp}_{key.split('.')[-1]}.png"
                series_key = series if any(series in r["grid"] for r in rows) else (
                    "dataset" if any("dataset" in r["grid"] for r in rows) else None)
                plot_versus(rows, key, figures / name, f"{exp}: accuracy and privacy vs {key.split('.')[-1]}",
                            series_key)
                plots[exp + ":" + key] = name

    wall = sum(r.get("wall_time_s", 0) for r in records)
    lines = [f"# splitpriv results{' (quick grid)' if quick else ''}", "",
             "Generated by `splitpriv experiment` (or `--report-only`) from the run records in "
             f"`{runs_dir.as_posix()}/` ({len(records)} runs, {wall / 3600:.2f} h of compute on this machine). "
             "Utility: accuracy loss against the centralized non-private baseline of the same method, trainable "
             "weights, data and seed. Privacy: 1 − the success of the strongest inversion attack run on the setting "
             "(token recovery over real tokens). Model: all-MiniLM-L6-v2 (d = 384) unless stated; training sets "
             "subsampled as stated in each experiment's config.", ""]
    all_rows = [dict(r, experiment=e) for e, rows in agg.items() for r in rows]
    goal_rows = [r for r in all_rows if r["config"].get("dataset") in {GOAL["dataset"], GOAL["dataset"] + "-sample"}]
    from splitpriv.experiments.frontier import frontier_section, headline

    best = frontier_point(goal_rows)
    lines += ["## Headline", "", f"![frontier]({figures.name}/frontier.png)", ""]
    capped = headline(results_dir, min_privacy_percent=GOAL["min_privacy_percent"],
                      max_loss_points=GOAL["max_accuracy_loss_points"], quick=quick)
    if capped is not None:
        lines += capped
    elif best:
        within = 100 * best["accuracy_loss"] <= GOAL["max_accuracy_loss_points"]
        lines.append(
            "Best frontier point ("
            + ("the most private within the goal's loss budget" if within else "none is within the goal's loss "
               "budget; the closest to the goal") + f"): **{best['experiment']}: {_label(best['grid'])}**, empirical privacy "
            f"{_fmt(best['empirical_privacy'], best['empirical_privacy_std'])}% at "
            f"{_fmt(best['accuracy_loss'], best['accuracy_loss_std'])} points accuracy loss "
            f"(strongest attack: {best['strongest_attack']}). Goal: ≥ {GOAL['min_privacy_percent']:.0f}% at "
            f"≤ {GOAL['max_accuracy_loss_points']:.0f} point: "
            + ("**met**." if 100 * best["empirical_privacy"] >= GOAL["min_privacy_percent"]
               and 100 * best["accuracy_loss"] <= GOAL["max_accuracy_loss_points"] else "**not met**."))
        lines.append("")
    lines += frontier_section(results_dir, quick=quick)
    front = pareto_front(goal_rows)
    if front:
        lines += [f"The measured utility–privacy frontier on the goal's dataset ({GOAL['dataset']}; no other point has "
                  "both lower loss and higher privacy):", "",
                  "| experiment: setting | accuracy loss (pts) | empirical privacy % | strongest attack |",
                  "|---|---|---|---|"]
        lines += [f"| {r['experiment']}: {_label(r['grid'])} | {_fmt(r['accuracy_loss'], r['accuracy_loss_std'])} | "
                  f"{_fmt(r['empirical_privacy'], r['empirical_privacy_std'])} | {r['strongest_attack']} |"
                  for r in front]
        lines.append("")
    lines += ["| paper setting (RoBERTa-Large) | utility loss | empirical privacy |", "|---|---|---|"]
    lines += [f"| {n} | {loss:.2f} pts | {priv:.2f}% |" for n, loss, priv in PAPER_POINTS]
    lines.append("")
    if commentary and Path(commentary).is_file():
        lines += [Path(commentary).read_text().strip(), ""]
    for exp, rows in agg.items():
        lines += [f"## {exp}", ""]
        for key, name in plots.items():
            if key.startswith(exp + ":"):
                lines += [f"![{exp}]({figures.name}/{name})", ""]
        attack_names = sorted({a for r in rows for a in r["attacks"]})
        header = ["setting", "seeds", "accuracy %", "baseline %", "loss (pts)", "privacy %", "strongest"] + attack_names
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in rows:
            cells = [_label(r["grid"]), str(r["n_seeds"]), _fmt(r["accuracy"], r["accuracy_std"]),
                     _fmt(r["baseline_accuracy"], r["baseline_accuracy_std"]),
                     _fmt(r["accuracy_loss"], r["accuracy_loss_std"]),
                     _fmt(r["empirical_privacy"], r["empirical_privacy_std"]), str(r["strongest_attack"] or "–")]
            cells += [f"{100 * r['attacks'][a]:.1f}" if a in r["attacks"] and r["attacks"][a] == r["attacks"][a]
                      else "–" for a in attack_names]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    report = results_dir / ("REPORT-quick.md" if quick else "REPORT.md")
    report.write_text("\n".join(lines) + "\n")
    return report
