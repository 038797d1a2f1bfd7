"""splitpriv audit: the vendor's attacks on the customer's own file, as audit.json, report.html and report.md."""

import csv
import json
import os
from html import escape
from pathlib import Path

import pytest
from typer.testing import CliRunner

POSITIVE = [
    "a wonderful film with sharp writing and a generous heart",
    "the cast is wonderful and the music lifts every quiet scene",
    "wonderful pacing keeps this clever mystery moving until dawn",
    "her wonderful performance carries the story through its darker turns",
    "a wonderful surprise from a director who trusts his audience",
    "funny , tender and wonderful from the opening credits onward",
    "the wonderful photography makes the desert look like another planet",
    "a wonderful family adventure that children and parents will share",
]
NEGATIVE = [
    "a dreadful script wastes a talented cast on tired jokes",
    "the plot is dreadful and the editing leaves holes everywhere",
    "dreadful dialogue sinks what might have been a modest thriller",
    "his dreadful accent distracts from every single courtroom scene",
    "a dreadful sequel that nobody asked for and nobody will remember",
    "slow , loud and dreadful despite the expensive special effects",
    "the dreadful ending betrays the patient viewers who stayed awake",
    "a dreadful mess of borrowed ideas and cheap sentimental music",
]
ROWS = [(t, "pos", "mf"[i % 2]) for i, t in enumerate(POSITIVE)] + [
    (t, "neg", "fm"[i % 2]) for i, t in enumerate(NEGATIVE)]
SETTING = ["-k", "0", "--mechanism", "dchi", "--eta", "10", "--limit", "16", "--seed", "0"]
ATTACKS = ("floor", "nn", "map", "learned")
CHEAP = {"n_public": 64, "learned_epochs": 1, "arch": "mlp", "batch_size": 8}


FRONTIER_POINT = {"experiment": "toy", "setting": {"n_bottom_layers": 0}, "accuracy": 0.61, "baseline": 0.85,
                  "train_args": "--method lora --bottom-layers 0 --mechanism dchi --eta 10"}


def _write_csv(path: Path, rows, header=("text", "label", "gender")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _cheap_flags() -> list[str]:
    from splitpriv.attacks.registry import ATTACKS as REGISTRY

    declared = {o for n in REGISTRY.names() for o in REGISTRY.get(n).option_names()}
    flags = []
    for key, value in CHEAP.items():
        if key in declared:
            flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


def _invoke(args):
    from splitpriv.cli import app

    return CliRunner().invoke(app, ["audit", *args])


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    (root / "in").mkdir()
    data = _write_csv(root / "in" / "mine.csv", ROWS)
    (root / "in" / "frontier.json").write_text(json.dumps({"points": [FRONTIER_POINT], "best": FRONTIER_POINT}))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        result = _invoke(["--file", str(data), "--label-column", "label", "--attribute-column", "gender", *SETTING,
                          "--attacks", ",".join(ATTACKS), "--label-limit", "12", "--sample", "4", "--no-progress",
                          "--out", "out", "--frontier", "in/frontier.json", *_cheap_flags()])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    return root, json.loads((root / "out" / "audit.json").read_text())


def test_audit_end_to_end(audited):
    _, audit = audited
    for key in ("empirical_privacy", "strongest_attack", "floor", "attacks"):
        assert key in audit
    assert set(audit["attacks"]) <= set(ATTACKS) and "nn" in audit["attacks"] and "floor" in audit["attacks"]
    assert audit["empirical_privacy"] == pytest.approx(1 - max(audit["attacks"].values()))
    assert audit["attacks"][audit["strongest_attack"]] == max(audit["attacks"].values())
    assert audit["floor"] == audit["attacks"]["floor"]
    assert "of every 10 words of your texts" in audit["verdict"]
    assert {"token_recovery", "content_recovery", "task_recovery"} <= set(audit["figures"])
    assert {"wonderful", "dreadful"} <= set(audit["task_words"])
    curve = audit["curve"]
    assert curve["parameter"] == "eta" and [p["value"] for p in curve["points"]] == [5.0, 7.5, 10.0, 15.0, 20.0]
    chosen = next(p for p in curve["points"] if p["factor"] == 1.0)
    assert chosen["attacks"] == {n: audit["attacks"][n] for n in chosen["attacks"]}
    assert chosen["utility"]["accuracy"] == 0.61 and audit["frontier"]["experiment"] == "toy"
    assert all(p["utility"] is None for p in curve["points"] if p["factor"] != 1.0)
    assert audit["labels"]["head"] == "vendor" and 0.0 <= audit["labels"]["success"] <= 1.0
    assert audit["attribute"]["attribute"] == "gender"
    sample = audit["sample"]["sentences"]
    assert len(sample) == 4 and all(t["guess"] for s in sample for t in s["tokens"])


def test_audit_agrees_with_run_attack(audited, tmp_path, monkeypatch, minilm, data_dir):
    """The same texts as a data folder's sst2/dev.tsv: run_attack gives every attack the same success."""
    from splitpriv.attacks.runner import run_attack

    _, audit = audited
    (tmp_path / "sst2").mkdir()
    with open(tmp_path / "sst2" / "dev.tsv", "w", encoding="utf-8") as f:
        f.write("sentence\tlabel\n" + "".join(f"{t}\t{int(y == 'pos')}\n" for t, y, _ in ROWS))
    (tmp_path / "wikitext2").symlink_to(data_dir / "wikitext2")
    monkeypatch.setenv("SPLITPRIV_DATA_DIR", str(tmp_path))
    for name in ("floor", "nn", "map"):
        result = run_attack(name, dataset="sst2", split="dev", n_bottom_layers=0, mechanism={"name": "dchi", "eta": 10},
                            limit=16, seed=0, model=minilm, progress=False)
        assert result["success"] == pytest.approx(audit["attacks"][name], abs=1e-12), name


def test_report_holds_the_highlighted_sample_and_plots(audited):
    root, audit = audited
    page = (root / "out" / "report.html").read_text()
    assert page.count('<img alt="') >= 2 and '<img alt="recovery per attack" src="data:image/png;base64,' in page
    assert 'class="tok hit"' in page and 'class="tok miss"' in page
    assert escape(audit["verdict"]) in page
    markdown = (root / "out" / "report.md").read_text()
    assert audit["verdict"] in markdown and "## Your sentences as the vendor would read them" in markdown


def test_nothing_written_outside_out(audited):
    root, _ = audited
    written = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert [p for p in written if not p.startswith("out/")] == ["in/frontier.json", "in/mine.csv"]


def test_frontier_points_match_on_depth_mechanism_and_parameters(tmp_path):
    from splitpriv.audit.frontier import frontier_utility

    path = tmp_path / "frontier.json"
    assert "does not exist" in frontier_utility(path, 0, {"name": "dchi", "eta": 10.0}, explain=True)["note"]
    other = {**FRONTIER_POINT, "accuracy": 0.7, "train_args": ["--bottom-layers", "2", "--mechanism", "dchi",
                                                                "--eta", "10"], "setting": {}}
    path.write_text(json.dumps({"points": [other, FRONTIER_POINT]}))
    assert frontier_utility(path, 0, {"name": "dchi", "eta": 10.0})["accuracy"] == 0.61
    assert frontier_utility(path, 2, {"name": "dchi", "eta": 10.0})["accuracy"] == 0.7
    assert frontier_utility(path, 0, {"name": "dchi", "eta": 5.0}) is None
    assert frontier_utility(path, 0, {"name": "dchi", "eta": 10.0}, privatizer={"name": "bottleneck"}) is None


def test_user_text_is_escaped(tmp_path):
    from splitpriv.audit.report import _sample_html

    html = _sample_html({"sample": {"sentences": [{"tokens": [
        {"token": "<script>", "guess": "&", "recovered": False}]}]}})
    assert "<script>" not in html and "&lt;script&gt;" in html and "&amp;" in html


@pytest.mark.parametrize("case", ["missing column", "header only", "zero bytes"])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, case):
    path = tmp_path / "mine.csv"
    if case == "missing column":
        _write_csv(path, ROWS[:4], header=("sentence", "label", "gender"))
    elif case == "header only":
        _write_csv(path, [])
    else:
        path.write_text("")
    result = _invoke(["--file", str(path), *SETTING, "--out", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1
    assert ("'text'" in result.output) if case == "missing column" else ("empty file" in result.output)
    assert not (tmp_path / "out").exists()
